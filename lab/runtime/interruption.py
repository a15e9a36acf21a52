"""The ``Interruption`` callback: SIGTERM / SIGINT during ``trainer.fit`` checkpoint at the current step and stop
cleanly; lab/runtime/signals.py (kept free of Lightning, which the command line must not import) describes the
whole protocol and holds the state it shares with ``python -m lab``."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lab.runtime.signals import IN_FIT, STOPPED, TRAINED, Terminated


class Interruption(pl.Callback):
    """Checkpoint at the current step on SIGTERM / SIGINT; see the module docstring."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        IN_FIT[0] = True
        TRAINED.clear()
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or not hasattr(connector, "received_sigterm"):
            return

        self._pending, self._signal = False, None
        self._world = int(trainer.world_size)

        def flag(signum: int, frame: Any) -> None:  # no collective in a signal handler
            if self._pending and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once (no checkpoint of a half-done step)
            self._pending, self._signal = True, signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("\ninterrupt: stopping after this batch with a checkpoint (Ctrl-C again to stop at once)", flush=True)
            if self._world == 1:
                connector.received_sigterm = True  # one process: stop after this batch (or validation batch)

        try:  # (Lightning's teardown restores the handlers it found)
            signal.signal(signal.SIGTERM, flag)
            signal.signal(signal.SIGINT, flag)  # a KeyboardInterrupt mid-step would leave a half-updated state
        except ValueError:  # not the main thread
            pass

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Several processes: every rank learns here, at the end of the same batch, whether any was signalled, and
        Lightning's loop then stops them all after it. (Lightning's own flag is checked per rank, so a signal to
        rank 0 alone stopped rank 0 while the others waited for it in the next step's all-reduce, forever.)"""
        if getattr(self, "_world", 1) > 1:
            if trainer.strategy.reduce_boolean_decision(bool(self._pending), all=False):
                trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        IN_FIT[0] = False
        TRAINED.update(run_dir=self.run_dir, step=int(trainer.global_step))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        IN_FIT[0] = False
        ckpt = self.run_dir / "checkpoints" / "last.ckpt"
        if isinstance(exception, KeyboardInterrupt):  # stopped at once, mid-step: keep the last clean checkpoint
            STOPPED.update(signal="SIGINT", run_dir=self.run_dir, step=None, kept=ckpt.is_file())
            return
        if not isinstance(exception, (SIGTERMException, Terminated)):
            return
        kind = getattr(self, "_signal", None) or "SIGTERM"
        step = int(trainer.global_step)
        if step > 0 and not trainer.sanity_checking:
            trainer.save_checkpoint(ckpt, weights_only=False)  # (atomic: AtomicCheckpointIO) every rank takes part; rank 0 writes
        elif not ckpt.is_file():
            step = None
        STOPPED.update(signal=kind, run_dir=self.run_dir, step=step)
