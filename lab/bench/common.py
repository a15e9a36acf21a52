"""What every ``make bench`` part shares: its settings, wall-clock and peak-memory measurement, ratios measured
side by side, progress lines, and the tables its rows print as."""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

LFQ_MEM_FACTOR = 7.0  # measured peak / (tokens * 2^bits * 4 bytes) of one LFQ step: 7.0-7.2 at 8-14 bits
VQ_MEM_FACTOR = 4.0  # the same for VectorQuantize's training step (dense tokens x codebook distances and one-hot)
INDEX_HEAD_MEM_FACTOR = 3.5  # peak / logits bytes of an index-head step: measured 3.0 (logits, log-softmax, grad)
MAX_BUILT_INDEX_PARAMS = 50_000_000


@dataclass
class Settings:
    quick: bool = False
    device: str = "cpu"
    mem_budget_gb: float = 8.0
    repeats: int = 5
    max_seconds: float = 10.0  # stop repeating a case once its timed runs have taken this long (>= 1 run)

    @property
    def budget_bytes(self) -> float:
        return self.mem_budget_gb * 2**30


# ------------------------------------------------------------------------------------------ measuring
def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], s: Settings, warmup: bool = True) -> tuple[float, int]:
    """Median wall-clock milliseconds of ``fn`` over up to ``s.repeats`` runs, and how many ran."""
    if warmup:
        fn()
    times: list[float] = []
    while len(times) < s.repeats and (not times or sum(times) < s.max_seconds):
        _sync(s.device)
        t0 = time.perf_counter()
        fn()
        _sync(s.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, len(times)


@contextlib.contextmanager
def quiet_stderr():
    """Kineto logs every profiler start/stop (and a warning about blocks allocated before it started) to the
    C-level stderr; silence fd 2 while the profiler runs. Python exceptions still propagate normally."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak tensor memory that ``fn`` allocates: the maximum over the call of (bytes allocated - bytes freed)
    since it started, so memory held before the call (weights, inputs) is not counted.

    CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before. CPU: ``torch.profiler`` with
    ``profile_memory=True`` records one ``[memory]`` event per allocation (+bytes) and per free (-bytes) from
    the CPU allocator itself, so every tensor counts, autograd's saved tensors and temporaries included; the
    running sum of the events in time order is the live tensor memory and its maximum is the peak. (Process
    RSS would also count the allocator's cached pages and everything else in the process.) Frees of blocks
    allocated before the call are not reported, so they cannot push the running sum below the call's own
    allocations."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg


def measure(fn: Callable[[], object], s: Settings, estimate_bytes: float = 0.0) -> dict:
    """{ms, n, peak_mb, status} for one case: skipped when the estimate exceeds the budget (on Linux a CPU
    allocation past RAM invokes the kernel's OOM killer instead of raising), "oom" when it raises anyway.
    The profiled run that measures memory doubles as the warm-up of the timed runs."""
    if estimate_bytes > s.budget_bytes:
        gb = estimate_bytes / 2**30
        return dict(ms=None, n=0, peak_mb=None, status=f"skipped: estimated {gb:.3g} GiB > budget {s.mem_budget_gb:g}")
    try:
        peak = peak_bytes(fn, s.device)
        ms, n = time_ms(fn, s, warmup=False)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        return dict(ms=None, n=0, peak_mb=None, status="oom")
    finally:
        if torch.device(s.device).type == "cuda":
            torch.cuda.empty_cache()
    return dict(ms=ms, n=n, peak_mb=peak / 2**20, status="ok")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{msg}")
        sys.stderr.flush()


def fmt_cell(v, kind: str) -> str:
    """One table cell by its column format (s str, i int, h human count, b bytes, f float, x ratio)."""
    if v is None or v == "":
        return ""
    if kind == "s":
        return str(v)
    if kind == "i":
        return f"{int(v)}"
    if kind in ("h", "b") and v >= 1e15:
        return f"{v:.3g}" + ("" if kind == "h" else " B")
    if kind in ("h", "b"):
        units = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)) if kind == "h" else \
                (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
        for unit, div in units:
            if v >= div:
                return f"{v / div:.3g}{unit if kind == 'h' else ' ' + unit}"
        return f"{v:.0f}" + ("" if kind == "h" else " B")
    if kind == "x":
        return f"{v:.3g}x" if v < 1e3 else f"{v:.0f}x" if v < 1e6 else f"{v:.2e}x"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def format_table(rows: list[dict], columns: list[tuple[str, str, str]], markdown: bool = False) -> str:
    """Plain aligned text (or a markdown table); numbers right-aligned."""
    head = [h for _, h, _ in columns]
    body = [[fmt_cell(r.get(k), kind) for k, _, kind in columns] for r in rows]
    right = [kind != "s" for _, _, kind in columns]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    w = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(n) if r else c.ljust(n) for c, n, r in zip(cells, w, right)).rstrip()
    return "\n".join([line(head), "  ".join("-" * n for n in w)] + [line(c) for c in body])
