"""Where files go and how they are written: the repository root, the runs folder, the cache folder, writes that
are atomic (temp file + rename), and an advisory lock for work that two processes must not do twice.

Every module that writes a result, a cache entry or a checkpoint goes through ``atomic_write``: readers never
see a partial file, and a process killed mid-write leaves the previous file intact.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]  # the repository (experiments/, runs/, results/, .cache/)


def cache_root() -> Path:
    """``$BITLAB_CACHE`` or ``<repo root>/.cache``: datasets, Inception statistics, the machine probe."""
    root = os.environ.get("BITLAB_CACHE")
    return Path(root) if root else ROOT / ".cache"


def runs_root(cfg: Any) -> Path:
    """``runs_dir`` of a config, relative paths taken from the repository root."""
    root = Path(cfg["runs_dir"])
    return root if root.is_absolute() else ROOT / root


def process_rank() -> int:
    """This process's rank under a multi-process launch (Lightning DDP sets LOCAL_RANK / RANK in children)."""
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a file named for this process, then rename it over ``path``: readers never see a partial
    file, a run killed while saving keeps the previous one, and ranks of a multi-process run that write the same
    cache entry do not trip over each other's temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # noqa: PLC0415 - torch only for the callers that save tensors

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def exclusive(lock_path: Path, waiting: str = ""):
    """Hold an advisory lock (``flock``) on ``lock_path`` for the block, in rank 0 only (the other ranks of a
    multi-process run follow rank 0). Two sweep invocations that need the same uncached tokenizer thus train it
    once: the second waits, then finds it finished. The OS releases the lock when its process dies."""
    if process_rank() > 0:
        yield
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
