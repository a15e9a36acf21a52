"""One lock per run, and the checks that a resume continues the same run.

A run is locked by an advisory ``flock`` on ``<run dir>.lock`` beside it (``runs/NAME/.<run-id>.lock``), held by
rank 0 from the moment the run directory is chosen until the run ends (``run_experiment``) or its process dies:
the OS releases a ``flock`` with its process, so a lock is never stale and a reused PID is never mistaken for
its holder. The same lock is a sweep's claim on one of its runs (lab/sweeps/sweep.py), so a ``resume=true`` and a sweep,
or two of either, never train one run at once. The file records who holds it (PID, process start time, host,
command) for the message of whoever is refused.

``check_resume`` compares the command's resolved config with the run's ``config.yaml`` and refuses any
difference that changes the result, except the keys named on purpose in ``resume_allow`` (recorded in the run's
``resumes.json``); a finished run is resumed only to extend it (``resume_allow: [trainer.max_steps]`` and more
steps), and its earlier ``metrics.json`` is kept beside the new one.
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
from typing import Any, Iterator, Mapping

from omegaconf import OmegaConf

from lab.core.registry import ConfigError
from lab.core.registry import save_config, to_dict, upgrade_renamed
from lab.runtime.files import data_file_error, process_rank, read_data

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


# ------------------------------------------------------------------------------------------------ resume
# Keys that may differ between a run and its resume without changing the result.
# ("resolved" records the machine and why `auto` settings took their values: the values themselves are compared.)
# (run_name and tags are bookkeeping: a resume may rename or retag a run, and a sweep's runs are never stale for them.)
RESUME_IGNORED = ("resume", "run_id", "runs_dir", "resume_allow", "compile", "checkpoint_every_n_steps", "presets",
                  "sweep", "seeds", "report", "publish", "loader.num_workers", "trainer.enable_progress_bar", "resolved",
                  "run_name", "tags")


# Keys added to base.yaml after runs were recorded, with the default they were added with: a recorded config
# that lacks one ran with that default (the key did not exist yet), so it is no difference. A key whose default
# changes behaviour for old runs must not be listed here.
ADDED_KEYS: dict[str, Any] = {}


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key: str, extra: tuple[str, ...] = ()) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_IGNORED + tuple(extra))


def config_differences(old: Mapping, new: Mapping, allow: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every key that differs between two resolved configs (ignored and allowed keys aside)."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if _ignored(key, allow):
            continue
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if key in ADDED_KEYS and "<unset>" in (va, vb) and ADDED_KEYS[key] in (va, vb):
            continue
        if va != vb and not (isinstance(va, (int, float)) and isinstance(vb, (int, float)) and float(va) == float(vb)):
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out


def read_config(path: Path) -> dict:
    """A run's recorded config.yaml, with the keys renamed since it was written under their new names. A file that
    is not a plain YAML mapping (a ``!!python`` tag, truncated) is one ConfigError paragraph naming it."""
    read_data(path, fix=CONFIG_FIX)  # the safe loader's verdict first: nothing of a tagged file is built
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # (OmegaConf's own number syntax)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve, ...
        raise data_file_error(path, e, CONFIG_FIX) from None
    return upgrade_renamed(data, str(path), note=False)


CONFIG_FIX = ("It is the run's record of its configuration: restore it (resumes.json keeps the previous one of a "
              "resumed run), or move the run aside and start a new one.")


def check_resume(cfg: Any, run_dir: Path) -> None:
    """Refuse a resume of ``run_dir`` by a command whose config changes the result (see the module docstring).
    Reads only (config.yaml, resumes.json, whether metrics.json exists): ``record_resume`` makes the changes once
    every check of the resume has passed, so a refused resume leaves the run as it was."""
    new = to_dict(cfg)
    if str(new.get("name", "")).startswith("_tokenizers/"):
        return  # a tokenizer cache entry: its directory name is the hash of everything that defines it
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"resume=true but {cfg_path} does not exist, so the resume cannot be checked against the "
                          "run's configuration. Start a new run instead.")
    old = read_config(cfg_path)
    allow = tuple(str(k) for k in (new.get("resume_allow") or []))
    diffs = config_differences(old, new, allow)
    if diffs:
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        raise ConfigError(
            f"resume=true of {run_dir} with a different configuration: {'; '.join(diffs[:8])}{more}. A resume "
            "continues the same run: use the run's own config.yaml (drop these overrides), or start a new run. "
            "To change a key on purpose (e.g. more steps for a run that stopped early), name it in "
            "resume_allow (e.g. resume_allow=[trainer.max_steps]); the change is recorded in the run."
        )
    changed = config_differences(old, new)
    finished = (run_dir / "metrics.json").is_file()
    old_steps, new_steps = flatten(old).get("trainer.max_steps"), flatten(new).get("trainer.max_steps")
    if finished and not ("trainer.max_steps" in allow and isinstance(old_steps, int)
                     and isinstance(new_steps, int) and new_steps > old_steps):
        raise ConfigError(
            f"resume=true of {run_dir}, which has finished (its metrics.json exists; trainer.max_steps={old_steps}): "
            "there is nothing to resume, and its results are kept. To train it further on purpose, give more steps "
            f"and allow it: trainer.max_steps=N (> {old_steps}) resume_allow=[trainer.max_steps]."
        )
    if changed and (run_dir / "resumes.json").is_file():
        read_data(run_dir / "resumes.json", expect=list)  # appended to by record_resume: readable before anything


def record_resume(cfg: Any, run_dir: Path) -> None:
    """After ``check_resume`` and the checkpoint's check: allowed changes are recorded in ``resumes.json`` and
    ``config.yaml`` is brought up to date (the old one is kept in ``resumes.json``); a finished run's
    ``metrics.json`` is kept as ``metrics.<steps>-steps.json``. Rank 0 only."""
    new = to_dict(cfg)
    if process_rank() > 0 or str(new.get("name", "")).startswith("_tokenizers/"):
        return
    cfg_path = run_dir / "config.yaml"
    old = read_config(cfg_path)
    changed = config_differences(old, new)
    if not changed:
        return
    allow = tuple(str(k) for k in (new.get("resume_allow") or []))
    finished = (run_dir / "metrics.json").is_file()
    old_steps = flatten(old).get("trainer.max_steps")
    if finished:  # kept, never overwritten by the extended run's
        (run_dir / "metrics.json").rename(run_dir / f"metrics.{old_steps}-steps.json")
    log_path = run_dir / "resumes.json"
    log = read_data(log_path, expect=list) if log_path.is_file() else []
    log.append({"time": datetime.now().isoformat(timespec="seconds"), "allowed": list(allow), "changed": changed,
                "previous_config": old, "previous_metrics": f"metrics.{old_steps}-steps.json" if finished else None})
    log_path.write_text(json.dumps(log, indent=2, default=str))

    save_config(cfg, cfg_path)
    print(f"resuming {run_dir} with allowed changes: {'; '.join(changed)} (recorded in {log_path})", flush=True)



def check_not_stale(jobs: list) -> None:
    """Every run of a sweep (``lab.sweeps.sweep.Job``) that exists must have been made with its point's config now: a
    finished run of other settings (another ``trainer.max_steps``, learning rate ...) is never skipped as done or
    tabled as this sweep's. ConfigError naming the runs and the differing keys."""
    stale = []
    for job in jobs:
        path = job.run_dir / "config.yaml"
        if not path.is_file():
            continue
        diffs = config_differences(read_config(path), _plain(job.cfg))
        if diffs:
            more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
            stale.append(f"{job.run_dir} ({'; '.join(diffs[:4])}{more})")
    if stale:
        more = f"; and {len(stale) - 3} more runs" if len(stale) > 3 else ""
        raise ConfigError(
            f"{len(stale)} existing run(s) of this sweep were made with another configuration than its points have "
            f"now: {'; '.join(stale[:3])}{more}. They would be reported as this sweep's results. Pass the overrides "
            "they ran with, or give these settings their own runs_dir=... (or move the old runs aside)."
        )


def _plain(cfg: Any) -> dict:
    """The job's config as its run would record it: ``auto`` settings resolved (lab/runtime/machine.py) on a copy."""
    from lab.runtime.machine import resolve_settings  # noqa: PLC0415 - imports torch; `lab status` does not need it

    plain = to_dict(cfg)
    try:
        r = resolve_settings(plain["trainer"], plain["loader"], plain.get("resolved"), str(plain["stage"]), verbose=False)
    except Exception:  # noqa: BLE001 - compare what there is; the run itself reports a layout problem
        return plain
    return {**plain, "trainer": {**plain["trainer"], **r.trainer}, "loader": {**plain["loader"], **r.loader},
            "resolved": r.record}
