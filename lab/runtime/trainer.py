"""The pieces of a Lightning Trainer that every stage shares, independent of any config: atomic checkpoints, a
step timer, the CPU's load and its threads. ``lab/stages/common.py`` assembles them from a config."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lab.runtime.files import atomic_write, process_rank


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed over the old one: a run killed while saving
    (SIGKILL, power loss) keeps its previous checkpoint intact instead of a truncated one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


class StepTimer(pl.Callback):
    """Wall time of each training batch (forward, backward, optimiser; validation and checkpoints excluded),
    synchronised with the GPU when there is one: the throughput figure of metrics.json."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0
        # The run's time before this process (a resumed run): saved in every checkpoint as this callback's state,
        # so a run stopped and resumed, in one sitting or the next, records its whole time, not its last part.
        self._started = time.time()
        self._before_s: float | None = 0.0
        self._resumed = False   # a checkpoint was loaded (Lightning calls on_load_checkpoint on every resume)
        self._restored = False  # ... and it carried this callback's state

    def state_dict(self) -> dict:
        # Unknown (NaN) once any part of the run is unknown: a run resumed from a checkpoint without the time, then
        # stopped and resumed again, stays partial instead of passing its last two parts off as the whole.
        unknown = self._before_s is None or (self._resumed and not self._restored)
        before = float("nan") if unknown else self._before_s
        return {"elapsed_s": before + time.time() - self._started}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._resumed = True

    def load_state_dict(self, state_dict: dict) -> None:
        self._before_s = float(state_dict.get("elapsed_s", float("nan")))
        if self._before_s != self._before_s:
            self._before_s = None
        self._restored = True

    def time_before(self, resumed: bool) -> float | None:
        """Seconds this run spent in earlier processes (0 for a fresh run); None for a run resumed from a checkpoint
        that did not record them (written before they were saved, or by a run that itself lacked them)."""
        if not resumed:
            return 0.0
        return self._before_s if self._restored else None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._t0)

    def summary(self, batch_size: int, world_size: int = 1) -> dict:
        """Median step time after the first 10% of steps (warm-up), and images/s over every process."""
        t = sorted(self.times[len(self.times) // 10:]) or [float("nan")]
        med = t[len(t) // 2]
        return {"train_step_ms": 1e3 * med, "train_images_per_s": batch_size * world_size / med}


def timer_of(trainer: pl.Trainer) -> StepTimer | None:
    return next((c for c in trainer.callbacks if isinstance(c, StepTimer)), None)


def cpu_load() -> float:
    """1-minute load average divided by the core count (this run's own threads included): ~1 or more means
    the cores were busy, and a training job sharing them with another torch job can run several times slower."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):  # no load average on this platform
        return float("nan")


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of every core, all ticks of every core, this process's own CPU ticks, every thread) from /proc."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = f[0] + f[1] + f[2] + sum(f[5:8])  # user nice system irq softirq steal (not idle, iowait; guest is in user)
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, sum(f[:8]), int(own[11]) + int(own[12])  # utime, stime


def cpu_busy(window_s: float = 0.5) -> tuple[float, float]:
    """(cores busy, cores busy with *other* processes) over the next ``window_s`` seconds, each 0 .. the core
    count; (nan, nan) without /proc. The second is what a run about to start would share the CPU with; the load
    average cannot say it, as it still counts what this very process did a moment ago (a suite's previous run, a
    generator run's tokenizer stage)."""
    try:
        b0, a0, o0 = _cpu_ticks()
        time.sleep(window_s)
        b1, a1, o1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")
    elapsed = (a1 - a0) / (os.cpu_count() or 1)  # ticks of one core in the window
    if elapsed <= 0:
        return float("nan"), float("nan")
    return (b1 - b0) / elapsed, max(0.0, (b1 - b0) - (o1 - o0)) / elapsed


def others_cpu_busy(window_s: float = 0.5) -> float:
    """Cores kept busy by other processes over the next ``window_s`` seconds (``cpu_busy``'s second value)."""
    return cpu_busy(window_s)[1]


_CPU_NOTE_SHOWN = [False]


def warn_if_cpu_busy(accelerator: str) -> None:
    """A note when other processes keep the CPU busy before a CPU run: once per command (a generator run builds two
    Trainers), and by rank 0 alone (the other ranks of a multi-process run would each repeat it)."""
    if _CPU_NOTE_SHOWN[0] or process_rank() > 0 or str(accelerator) != "cpu":
        return
    cores = os.cpu_count() or 1
    busy = others_cpu_busy()
    what = f"other processes keep {busy:.1f} of its {cores} cores busy"
    if busy != busy:  # no /proc: the 1-minute load average (this process's own recent work included)
        busy = cpu_load() * cores
        what = f"1-minute load {busy:.1f} on {cores} cores"
    if busy > 0.5 * cores:  # (a nan load compares False)
        _CPU_NOTE_SHOWN[0] = True
        print(f"note: the CPU is already busy ({what}). Two torch jobs "
              "that each use every core slow each other down several-fold; run one at a time, or give each "
              "OMP_NUM_THREADS=1. Timings of this run will not be comparable to an idle machine's.", flush=True)


def share_cpu_threads(accelerator: str, devices: Any) -> int | None:
    """Several training processes on one CPU (``accelerator: cpu``, ``devices: N``): each takes 1/N of the
    cores for its torch threads, unless OMP_NUM_THREADS says otherwise. Every process would otherwise start
    one thread per core, and N processes oversubscribing the cores run several times slower. Returns the
    thread count set (None: unchanged)."""
    if str(accelerator) != "cpu" or not isinstance(devices, int) or devices < 2:
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n = max(1, (os.cpu_count() or 1) // devices)
    torch.set_num_threads(n)
    return n
