"""One run of one experiment: ``stage: tokenizer`` or ``stage: generator``, under the run's lock.

Every run writes ``runs/<NAME>/<run-id>/`` with ``config.yaml`` (resolved), ``metrics.json``,
``checkpoints/`` (last + best) and TensorBoard events, and never writes into another run's directory.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lab.runtime.runlock import released_after
from lab.stages.generator import run_generator
from lab.stages.preflight import check_run
from lab.stages.tokenizer import run_tokenizer


def run_experiment(cfg: DictConfig) -> tuple[Path, dict]:
    """Train and evaluate one run of ``cfg``; return (run directory, final metrics). Every check that needs no
    training (lab/stages/preflight.py) comes first, before the data, a model or any file."""
    check_run(cfg)
    with released_after():  # the run's lock (lab/runtime/runlock.py) is held until here
        if cfg["stage"] == "generator":
            return run_generator(cfg)
        return run_tokenizer(cfg)
