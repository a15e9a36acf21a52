"""One lock per run.

A run is locked by an advisory ``flock`` on ``<run dir>.lock`` beside it (``runs/NAME/.<run-id>.lock``), held by
rank 0 from the moment the run directory is chosen until the run ends (``run_experiment``) or its process dies:
the OS releases a ``flock`` with its process, so a lock is never stale and a reused PID is never mistaken for
its holder. The same lock is a sweep's claim on one of its runs (lab/sweeps/sweep.py), so a ``resume=true`` and a sweep,
or two of either, never train one run at once. The file records who holds it (PID, process start time, host,
command) for the message of whoever is refused.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from lab.core.registry import ConfigError
from lab.runtime.files import process_rank

_HELD: dict[Path, int] = {}  # lock file -> open descriptor holding its flock, in this process


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc), which tells a reused PID from its first owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def holder(run_dir: Path) -> str:
    """Who holds (or last held) the run's lock, in words."""
    try:
        info = json.loads(lock_path(run_dir).read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"process {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command', '')[:200]})")


def try_lock(run_dir: Path) -> bool:
    """Take the run's lock without waiting: True if this process holds it now (or already did)."""
    path = lock_path(run_dir)
    if path in _HELD:
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    info = {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[path] = fd
    return True


def lock_run(run_dir: Path) -> None:
    """Take the run's lock or refuse (ConfigError naming the holder). Rank 0 only: other ranks follow it."""
    if process_rank() > 0:
        return
    if not try_lock(run_dir):
        raise ConfigError(
            f"The run {run_dir} is in use by {holder(run_dir)}: one run is trained by one process at a time. "
            "Wait for it to finish (or stop it), then resume with resume=true."
        )


def unlock(run_dir_or_lock: Path) -> None:
    path = Path(run_dir_or_lock)
    path = path if path.name.endswith(".lock") and path.name.startswith(".") else lock_path(path)
    fd = _HELD.pop(path, None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)  # (the file stays: deleting a lock file others may have open would let two hold "it")


@contextmanager
def released_after() -> Iterator[None]:
    """Run locks taken inside the block are released when it ends (normally or not); those held before stay."""
    before = set(_HELD)
    try:
        yield
    finally:
        for path in set(_HELD) - before:
            unlock(path)
