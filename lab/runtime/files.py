"""Where files go and how they are written: the repository root, the runs folder, the cache folder, writes that
are atomic (temp file + rename), and an advisory lock for work that two processes must not do twice.

Every module that writes a result, a cache entry or a checkpoint goes through ``atomic_write``: readers never
see a partial file, and a process killed mid-write leaves the previous file intact. Every file read back as data
(a run's config.yaml, metrics.json ...) goes through ``read_data``: a damaged one is one paragraph naming it.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from lab.core.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]  # the repository (experiments/, runs/, results/, .cache/)


def cache_root() -> Path:
    """``$BITLAB_CACHE`` or ``<repo root>/.cache``: datasets, Inception statistics, the machine probe."""
    root = os.environ.get("BITLAB_CACHE")
    return Path(root) if root else ROOT / ".cache"


def runs_root(runs_dir: str | Path) -> Path:
    """A config's ``runs_dir``, relative paths taken from the repository root."""
    root = Path(runs_dir)
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


# ------------------------------------------------------------------------------------------------ files read as data
DATA_FIX = "Restore it from a copy, or move the run aside; bitlab does not guess at a damaged file."


def data_file_error(path: Path, error: BaseException, fix: str = DATA_FIX) -> Exception:
    """The one paragraph for a JSON or YAML file that cannot be read as plain data: which file, what is wrong
    (a tag that would build a Python object, a syntax error and where, a truncated file), and ``fix``."""
    import yaml  # noqa: PLC0415 - yaml only for the commands that read files

    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    tag = getattr(error, "problem", "") or ""
    if isinstance(error, yaml.constructor.ConstructorError) and "tag" in tag:
        problem = (f"it holds a YAML tag{where} ({tag.split('tag', 1)[1].strip()}) that would build a Python object; "
                   "bitlab's files hold plain data only (mappings, lists, numbers, strings), so nothing of it was "
                   "used or run")
    elif isinstance(error, yaml.YAMLError):
        problem = f"malformed YAML{where} ({tag or str(error).splitlines()[0]}): truncated or edited by hand"
    elif isinstance(error, json.JSONDecodeError):
        problem = (f"malformed JSON at line {error.lineno}, column {error.colno} ({error.msg}): truncated or "
                   "edited by hand")
    elif isinstance(error, UnicodeDecodeError):
        problem = "it is not text (binary or corrupt)"
    elif isinstance(error, FileNotFoundError):
        problem = "it does not exist"
    elif isinstance(error, OSError):
        problem = f"it cannot be read ({error.strerror or error})"
    else:
        problem = str(error)
    return ConfigError(f"Cannot use {path}: {problem}. {fix}".rstrip())


def read_data(path: Path, *, expect: type | tuple[type, ...] = dict, fix: str = DATA_FIX) -> Any:
    """The plain data of a ``.json`` file, or of YAML (any other suffix, safe loader: a ``!!python`` tag is
    refused, never built), checked to be of type ``expect``. Every problem is one ConfigError paragraph naming
    the file (``data_file_error``): the one reader of run files (config.yaml, metrics.json, failed.json,
    resumes.json, sweep.json) for every command."""
    import yaml  # noqa: PLC0415 - yaml and json only for the commands that read files

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise data_file_error(path, e, fix) from None
    if data is None and path.suffix != ".json" and expect is dict:
        data = {}
    if not isinstance(data, expect):
        want = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        got = {"list": "a list", "dict": "a mapping", "str": "a string", "int": "a number", "float": "a number",
               "bool": "true/false", "NoneType": "nothing (empty)"}.get(type(data).__name__, type(data).__name__)
        want = {"dict": "a mapping of keys", "list": "a list"}.get(want, want)
        raise data_file_error(path, ValueError(f"it holds {got}, not {want}"), fix)
    return data
