"""What a run's config says about the run as a whole: its name and directory name, whether a resume continues the
same run, whether a sweep's existing runs were made with its points' configs now, and what the loggers record of it
(``RunInfo``). These read the whole config; the runtime helpers below them (lab/runtime/naming.py, runlock.py,
tracking.py) take the plain values handed to them here. ``config_differences`` is what a resume and a sweep's
records compare: every key of two recorded configs that changes a result (``RESUME_IGNORED`` aside).

``check_resume`` compares the command's resolved config with the run's ``config.yaml`` and refuses any difference
that changes the result, except the keys named on purpose in ``resume_allow`` (recorded in the run's
``resumes.json``); a finished run is resumed only to extend it (``resume_allow: [trainer.max_steps]`` and more
steps), and its earlier ``metrics.json`` is kept beside the new one.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from lab.core.registry import ConfigError, save_config, to_dict
from lab.config.migrate import upgrade_renamed
from lab.core.settings import loss_tag
from lab.runtime.files import data_file_error, process_rank, read_data
from lab.runtime.naming import MAX_NAME, NAME_KEYS, dotted_get, slug
from lab.runtime.safety import SAFE_COMPONENT
from lab.runtime.tracking import RunInfo, CONFIG_KEYS


CONFIG_FIX = ("It is the run's record of its configuration: restore it (resumes.json keeps the previous one of a "
              "resumed run), or move the run aside and start a new one.")


def read_config(path: Path) -> dict:
    """A run's recorded config.yaml, with the keys renamed since it was written under their new names. A file that
    is not a plain YAML mapping (a ``!!python`` tag, truncated) is one ConfigError paragraph naming it."""
    read_data(path, fix=CONFIG_FIX)  # the safe loader's verdict first: nothing of a tagged file is built
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # (OmegaConf's own number syntax)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve, ...
        raise data_file_error(path, e, CONFIG_FIX) from None
    return upgrade_renamed(data, str(path), note=False)


def checkpoint_config(checkpoint: Any, path: Path, stage: str) -> dict:
    """The config a bitlab checkpoint of ``stage`` was trained with (its ``hyper_parameters.cfg``), the keys renamed
    since 0.1 under their new names: with ``load_experiment``, the one place old names come in."""
    hp = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    cfg = hp.get("cfg") if isinstance(hp, Mapping) else None
    if not isinstance(cfg, Mapping) or cfg.get("stage") != stage:
        raise ConfigError(f"{path} is not a bitlab {stage} checkpoint (no {stage} config in its hyper_parameters).")
    return upgrade_renamed(cfg, note=False)


def default_run_name(name: str, experiment: Mapping, cfg: Mapping) -> str:
    """The experiment's own name, then each of ``NAME_KEYS`` whose value in ``cfg`` differs from the experiment's
    (``experiment``: base.yaml, the experiment's YAML and the preset, before the sweep point and the command
    line). ``quickstart`` on your own images: ``quickstart-imagefolder``."""
    parts = [slug(str(name).rsplit("/", 1)[-1]) or "run"]
    for key, shown, stages in NAME_KEYS:
        value = dotted_get(cfg, key)
        if cfg.get("stage") in stages and value is not None and value != dotted_get(experiment, key):
            parts.append(slug(shown.format(value)))
    out = "-".join(p for p in parts if p)[:MAX_NAME].rstrip("-.")
    return out if SAFE_COMPONENT.match(out) else "run"


def run_name(cfg: Any) -> str:
    """The run's name: ``run_name`` as the config holds it (load_experiment fills in the default), else the
    experiment's own name (a config recorded before names existed)."""
    given = cfg.get("run_name") if hasattr(cfg, "get") else None
    return str(given) if given else (slug(str(cfg["name"]).rsplit("/", 1)[-1]) or "run")


def run_tags(cfg: Any) -> list[str]:
    tags = cfg.get("tags") if hasattr(cfg, "get") else None
    return [] if tags is None or isinstance(tags, str) else [str(t) for t in tags]  # (a list or an OmegaConf ListConfig)


def new_run_id(cfg: Any, now: datetime | None = None) -> str:
    """A new run's directory name: ``<run name>-<YYYYmmdd-HHMMSS>-s<seed>``."""
    return f"{run_name(cfg)}-{(now or datetime.now()):%Y%m%d-%H%M%S}-s{cfg['seed']}"


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
    """Every run of a sweep (``lab.sweeps.plan.Job``) that exists must have been made with its point's config now: a
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
    from lab.config.typed import loader_settings, placement
    from lab.runtime.machine import resolve_settings  # noqa: PLC0415 - imports torch; `lab status` does not need it

    plain = to_dict(cfg)
    try:
        r = resolve_settings(placement(plain["trainer"]), loader_settings(plain["loader"]), plain.get("resolved"),
                             str(plain["stage"]), verbose=False)
    except Exception:  # noqa: BLE001 - compare what there is; the run itself reports a layout problem
        return plain
    return {**plain, "trainer": {**plain["trainer"], **r.trainer}, "loader": {**plain["loader"], **r.loader},
            "resolved": r.record}


def run_info(cfg: Any) -> RunInfo:
    """What the loggers record of the run (lab/runtime/tracking.py): built once from its config by the stage."""
    c = cfg if isinstance(cfg, dict) else to_dict(cfg)
    loggers = c.get("logger", ["tensorboard"])
    loggers = [loggers] if isinstance(loggers, str) else list(loggers or [])
    cached = None
    if str(c["name"]).startswith("_tokenizers/"):
        cached = f"data={dotted_get(c, 'data.name')} quantizer={dotted_get(c, 'quantizer.name')}"
    head = dotted_get(c, "head.name")
    return RunInfo(experiment=str(c["name"]), name=run_name(c), seed=c.get("seed"), stage=str(c.get("stage")),
                   tags=tuple(run_tags(c)), loggers=tuple(loggers), cached_tokenizer=cached,
                   loss_kind=loss_tag(head) if c.get("stage") == "generator" and head else None,
                   settings={k: dotted_get(c, k) for k in CONFIG_KEYS})


# ------------------------------------------------------------------------------------------ comparing two configs
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
