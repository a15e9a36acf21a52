"""bitlab: image-tokenizer ablations after Infinity (bitwise tokens) and VAR (next-scale prediction).

The package follows the data's way (README, "The code"). Its layers, bottom to top (``LAYERS`` of
tests/test_layering.py, which checks this line):

core < runtime < data quantizers metrics < models < generation evaluation < train < config < stages < sweeps bench < cli explore __main__ lab

Until the 0.2 release the flat module paths of 0.1 (``lab.run``, ``lab.heads``, ...) still import:
each is an alias of the module's new home (the same module object), listed in ``MOVED``. The path is kept, not
the module's 0.1 contents: a function that has moved since is imported from its new home (``lab.config.runs``'
run names and resume checks, ``lab.config.checks``' range checks, ``lab.evaluation.label_noise``, ...).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

MOVED = {
    "bench_machine": "lab.bench.machine", "bench_training": "lab.bench.training", "cli_bench": "lab.cli.bench",
    "cli_compare": "lab.cli.compare", "cli_info": "lab.cli.info", "cli_noise": "lab.cli.noise",
    "cli_sample": "lab.cli.sample", "codes": "lab.quantizers.codes", "correction": "lab.generation.correction",
    "emoji": "lab.data.emoji", "evaluate": "lab.evaluation.tokenizer", "fid_protocol": "lab.metrics.fid_protocol",
    "findings": "lab.sweeps.findings", "findings_table": "lab.sweeps.findings_table",
    "generator": "lab.train.generator", "generator_run": "lab.stages.generator", "heads": "lab.models.heads",
    "machine": "lab.runtime.machine", "modules": "lab.train.modules", "noise": "lab.sweeps.noise",
    "numfmt": "lab.core.numfmt", "optim": "lab.train.optim", "quiet": "lab.runtime.quiet",
    "registry": "lab.core.registry", "run": "lab.stages.run", "runlock": "lab.runtime.runlock",
    "safety": "lab.runtime.safety", "sample_grid": "lab.cli.sample_grid", "sampling": "lab.generation.sampling",
    "signals": "lab.runtime.signals", "stats": "lab.core.stats", "sweep": "lab.sweeps.sweep",
    "sweep_plots": "lab.sweeps.plots", "sweep_report": "lab.sweeps.report", "text": "lab.models.text",
    "tokenizer": "lab.models.tokenizer", "tracking": "lab.runtime.tracking", "transformer": "lab.models.transformer",
    "verdicts": "lab.sweeps.verdicts",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import lab.run`` -> the module ``lab.stages.run`` itself (so a monkeypatch through either name is seen by
    both), registered under both names."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head == "lab" and rest in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name.partition(".")[2]])
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._own_spec  # importlib stamped the alias's spec on it: give the module its own back


sys.meta_path.append(_MovedModules())
