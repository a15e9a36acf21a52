"""SIGTERM and SIGINT: a checkpoint at the current step, a clean exit, and the command that resumes.

SIGTERM is what clusters and containers send before they stop a job. During training (``trainer.fit``) the
``Interruption`` callback (lab/runtime/interruption.py: it imports Lightning, this module stays light for the
command line) replaces Lightning's SIGTERM handler by one that only notes the signal; at the end of
each batch the ranks agree (one all-reduce) whether any was signalled, and Lightning's loop then stops every rank
after that same batch, and ``on_exception`` writes ``checkpoints/last.ckpt`` at that step. (Lightning's own handler also
runs a collective inside the signal handler, which left a multi-process run waiting forever.) Outside training
``install`` turns SIGTERM into ``Terminated``. SIGINT (Ctrl-C) during training does the same (a second Ctrl-C
stops at once, keeping the last periodic checkpoint). ``python -m lab`` then
prints which run stopped where and the command that resumes it, and exits 143 (SIGTERM) or 130 (SIGINT).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Sequence

# What stopped, for the message of lab/__main__.py: signal name, run directory, step of the checkpoint.
STOPPED: dict[str, Any] = {}
# The run whose training ended normally (run directory, step): a signal after it stops the final evaluation only.
TRAINED: dict[str, Any] = {}
IN_FIT = [False]


class Terminated(SystemExit):
    """SIGTERM outside training (data preparation, final evaluation): stop now, nothing half-written is kept."""


def _outside_fit(signum: int, frame: Any) -> None:
    if IN_FIT[0]:
        return  # training: the Interruption callback's handler has it
    STOPPED.setdefault("signal", "SIGTERM")
    raise Terminated(143)


def install() -> None:
    """SIGTERM raises ``Terminated`` (a clean unwind: locks released, temp files not renamed into place)."""
    signal.signal(signal.SIGTERM, _outside_fit)


def resume_hint(command: str, overrides: list[str], is_sweep: bool, options: Sequence[str] = ()) -> str:
    """The message for an interrupted ``python -m lab run`` (built from its arguments and ``STOPPED``).

    ``options``: the command's own options a sweep resumes with (``--publish``, ``--shard I/K``, ``--force``; an ad
    hoc ``--sweep`` is in ``overrides`` as ``sweep={...}``): a suite resumed without its ``--publish`` would train
    runs the published records already hold."""
    import shlex

    sig = STOPPED.get("signal", "SIGINT")
    run_dir, step = STOPPED.get("run_dir"), STOPPED.get("step")
    keep = [o for o in overrides if not o.split("=", 1)[0] in ("resume", "run_id")]
    where = f" {run_dir} stopped at step {step}, checkpoint saved;" if run_dir is not None and step is not None else ""
    if run_dir is not None and step is None and STOPPED.get("kept"):
        where, step = f" {run_dir} stopped mid-step; its last periodic checkpoint is kept;", "last"
    if is_sweep:
        cmd = " ".join(["python -m lab run", command, *map(shlex.quote, overrides), *map(shlex.quote, options)])
        return f"interrupted ({sig});{where} resume with resume=true: rerun `{cmd}` (a sweep resumes its unfinished runs)."
    trained = TRAINED.get("run_dir")
    if run_dir is None and trained is not None and (Path(trained) / "checkpoints" / "last.ckpt").is_file():
        cmd = " ".join(["python -m lab run", command, *map(shlex.quote, keep), f"run_id={Path(trained).name}",
                        "resume=true"])
        return (f"interrupted ({sig}) after training, during the final evaluation: {trained} trained to step "
                f"{TRAINED.get('step')} and its checkpoints are kept; only the evaluation (metrics.json) was lost. "
                f"Evaluate it with `{cmd}`.")
    if run_dir is None or step is None:
        return f"interrupted ({sig}) before a checkpoint was written; resume with resume=true once one exists, or start again."
    cmd = " ".join(["python -m lab run", command, *map(shlex.quote, keep), f"run_id={Path(run_dir).name}", "resume=true"])
    return f"interrupted ({sig});{where} resume with resume=true: `{cmd}`."
