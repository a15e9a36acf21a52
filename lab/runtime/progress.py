"""What a run is doing, at every moment: one line per phase and a progress count with an ETA.

In a terminal the count is a tqdm bar sized to the terminal (a fixed width when the size is unknown, as in a pty
that ``script`` or a CI runner gives); when the output is a file or a pipe (``nohup``, CI) it is a line every
``every`` seconds, so a log shows progress without carriage-return noise. Rank 0 alone prints.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from lab.core.numfmt import fmt_duration
from lab.runtime.files import process_rank


def interactive() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def bar_width() -> int:
    """The terminal's width, or 100 where the terminal does not say (a pty of size 0 x 0)."""
    cols = shutil.get_terminal_size((0, 0)).columns
    return cols if cols >= 40 else 100


def phase(text: str) -> None:
    """One line saying what starts now (rank 0)."""
    if process_rank() == 0:
        print(text, flush=True)


class Progress:
    """``with Progress("Inception features of 5,000 images", 5000) as p: ... p.update(256)``: prints the phase,
    then a bar (terminal) or a line every ``every`` seconds (file / pipe) with the rate and the time left, and a
    last line with the time it took."""

    def __init__(self, what: str, total: int, unit: str = "images", every: float = 30.0, quiet_below: float = 0.0):
        self.what, self.total, self.unit, self.every = what, max(int(total), 0), unit, every
        self.done, self.t0, self.last = 0, time.perf_counter(), time.perf_counter()
        self.show = process_rank() == 0
        self.bar: Any = None
        if self.show:
            print(f"{what}: {self.total:,} {unit} ...", flush=True)
            if interactive():
                from tqdm import tqdm  # noqa: PLC0415 - only where a terminal shows it

                self.bar = tqdm(total=self.total, unit=f" {unit}", ncols=bar_width(), file=sys.stdout, leave=False,
                                desc=f"  {what[:40]}", smoothing=0.1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(ok=exc[0] is None)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(int(n))
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            print("  " + self.line(now), flush=True)

    def line(self, now: float | None = None) -> str:
        el = (now or time.perf_counter()) - self.t0
        rate = self.done / el if el > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        pct = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f} %), {rate:.1f} {self.unit}/s"
                + (f", about {fmt_duration(left)} left" if left is not None else ""))

    def close(self, ok: bool = True) -> None:
        if not self.show:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if ok:
            print(f"  {self.what}: done in {fmt_duration(time.perf_counter() - self.t0)}", flush=True)
        self.show = False
