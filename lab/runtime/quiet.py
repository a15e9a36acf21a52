"""Quiet by default: the known-harmless warnings and Lightning's chatter hidden, a progress bar over the run.

Each filter names one message (a regex), so anything new still shows. ``python -m lab run ... --verbose`` (or
``BITLAB_VERBOSE=1``, which the processes of a multi-device run inherit) shows everything.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from typing import Any

from pytorch_lightning.callbacks import TQDMProgressBar

from lab.core.numfmt import fmt_duration
from lab.runtime.progress import bar_width, interactive

LINE_EVERY_S = 30.0  # a training line this often when the output is a file or a pipe

# Python warnings that say nothing about this project's runs.
HARMLESS_WARNINGS = (
    # Lightning 2.x calls a torch pytree API that torch has deprecated: Lightning's to fix, nothing ours
    r".*isinstance\(treespec, LeafSpec\)",
    # the generator's frozen tokenizer is in eval mode on purpose (GeneratorModule.train keeps it there)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # the data are decoded once into tensors in memory: loader workers would only add start-up time
    r".*does not have many workers which may be a bottleneck",
    # a resumed run writes its checkpoints into its own directory again (a new run never reuses one: lab/stages/run.py)
    r"Checkpoint directory .* exists and is not empty",
    # our EpochSampler resumes mid-epoch exactly, which Lightning cannot see (lab/data/sampler.py)
    r".*resuming from a checkpoint that ended before the epoch ended",
)

# Lightning's info lines (its rank_zero logger) that repeat on every run.
CHATTER = (
    r"💡 Tip: ",                                     # advertising for Lightning's cloud logger
    r"(GPU|TPU|HPU|IPU|MPS) available: ",            # the device is in config.yaml and metrics.json
    r"`Trainer\(limit_\w+_batches=\d+\)` was configured",  # the smoke preset's own setting
    r"`Trainer.fit` stopped: `max_steps=\d+` reached",  # the normal end of every run
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
    r"Initializing distributed: GLOBAL_RANK",         # the DDP banner: the layout line already says how many processes
    r"-+\s*distributed_backend=",
)
_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
            "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def verbose() -> bool:
    return os.environ.get("BITLAB_VERBOSE", "").lower() not in ("", "0", "false", "no")


class _DropChatter(logging.Filter):
    pattern = re.compile("|".join(f"(?:{p})" for p in CHATTER))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(str(record.getMessage()).lstrip())


_FILTER = _DropChatter()


def install() -> None:
    """Hide the messages above (idempotent; nothing when verbose)."""
    if verbose():
        return
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LOGGERS:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)


def _short(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps towards ``max_steps`` over the whole run (a resumed run starts
    at its checkpoint's step, of the real total) instead of batches per epoch; no ``v_num`` (the logger's
    version, always "tb" here)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _by_steps(self, trainer: Any) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def init_train_tqdm(self) -> Any:
        trainer = self.trainer
        if not self._by_steps(trainer):
            return super().init_train_tqdm()
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        # a terminal gets a bar of its width (100 columns where a pty does not say); a file or a pipe gets a line
        # every LINE_EVERY_S seconds instead (on_train_batch_end), never a stream of carriage returns
        self._lines = not interactive()
        self._t0, self._last, self._step0 = time.perf_counter(), time.perf_counter(), trainer.global_step
        return Tqdm(desc="Training", total=trainer.max_steps, initial=trainer.global_step,
                    position=2 * self.process_position, disable=self.is_disabled or self._lines, leave=True,
                    ncols=bar_width(), file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def _line(self, trainer: Any, pl_module: Any) -> None:
        now, n = time.perf_counter(), trainer.global_step
        if self.is_disabled or (now - self._last < LINE_EVERY_S and n < trainer.max_steps):
            return
        self._last = now
        rate = (n - self._step0) / max(now - self._t0, 1e-9)
        left = f", about {fmt_duration((trainer.max_steps - n) / rate)} left" if rate > 0 and n < trainer.max_steps else ""
        shown = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if "loss" in k}
        print(f"  training: step {n:,}/{trainer.max_steps:,} ({100 * n / trainer.max_steps:.0f} %), "
              f"{rate:.2f} steps/s{left}" + "".join(f", {k} {_short(v)}" for k, v in shown.items()), flush=True)

    def init_validation_tqdm(self) -> Any:
        if getattr(self, "_lines", not interactive()):  # a file or a pipe: the periodic training line says enough
            from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

            return Tqdm(disable=True)
        return super().init_validation_tqdm()

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if getattr(self, "_lines", False):
            return self._line(trainer, pl_module)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
