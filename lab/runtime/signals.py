"""SIGTERM and SIGINT: a checkpoint at the current step, a clean exit, and the command that resumes.

SIGTERM is what clusters and containers send before they stop a job. During training (``trainer.fit``) the
``Interruption`` callback replaces Lightning's SIGTERM handler by one that only notes the signal; at the end of
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
from typing import Any

# What stopped, for the message of lab/__main__.py: signal name, run directory, step of the checkpoint.
STOPPED: dict[str, Any] = {}
# The run whose training ended normally (run directory, step): a signal after it stops the final evaluation only.
TRAINED: dict[str, Any] = {}
_IN_FIT = [False]


class Terminated(SystemExit):
    """SIGTERM outside training (data preparation, final evaluation): stop now, nothing half-written is kept."""


def _outside_fit(signum: int, frame: Any) -> None:
    if _IN_FIT[0]:
        return  # training: the Interruption callback's handler has it
    STOPPED.setdefault("signal", "SIGTERM")
    raise Terminated(143)


def install() -> None:
    """SIGTERM raises ``Terminated`` (a clean unwind: locks released, temp files not renamed into place)."""
    signal.signal(signal.SIGTERM, _outside_fit)


def Interruption(run_dir: Path):  # noqa: N802 - a callback class, built on first use (pytorch_lightning is heavy)
    """Checkpoint at the current step on SIGTERM / SIGINT; see the module docstring."""
    import pytorch_lightning as pl

    class _Interruption(pl.Callback):
        """Checkpoint at the current step on SIGTERM / SIGINT; see the module docstring."""

        def __init__(self, run_dir: Path):
            self.run_dir = Path(run_dir)

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            _IN_FIT[0] = True
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
            _IN_FIT[0] = False
            TRAINED.update(run_dir=self.run_dir, step=int(trainer.global_step))

        def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            _IN_FIT[0] = False
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

    return _Interruption(run_dir)


def resume_hint(command: str, overrides: list[str], is_sweep: bool) -> str:
    """The message for an interrupted ``python -m lab run`` (built from its arguments and ``STOPPED``)."""
    import shlex

    sig = STOPPED.get("signal", "SIGINT")
    run_dir, step = STOPPED.get("run_dir"), STOPPED.get("step")
    keep = [o for o in overrides if not o.split("=", 1)[0] in ("resume", "run_id")]
    where = f" {run_dir} stopped at step {step}, checkpoint saved;" if run_dir is not None and step is not None else ""
    if run_dir is not None and step is None and STOPPED.get("kept"):
        where, step = f" {run_dir} stopped mid-step; its last periodic checkpoint is kept;", "last"
    if is_sweep:
        cmd = " ".join(["python -m lab run", command, *map(shlex.quote, overrides)])
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
