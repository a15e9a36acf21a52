"""Published run records: what a finished run of a suite leaves in ``results/<suite>/runs/<point>/s<seed>/`` so that
the suite survives the machine it ran on.

A record holds what the report and the findings read (``config.yaml``, ``metrics.json``, the run's small images),
never a checkpoint. Records are written atomically (a temp directory renamed into place) and never replaced by a
different record without ``force``. ``lab run`` counts a point as finished when its local run or its record holds
it *with the same settings*: a record made with other settings is an error naming the key, never a silent reuse.

Settings are compared as the user asked for them, not as a machine resolved them: ``trainer.precision: auto``
becomes bf16-mixed on an AVX512-BF16 CPU and 32-true on an AVX2 one, and ``trainer.devices: auto`` one process per
core; a record keeps both (``resolved:`` says what they became), and the report names the hardware of every run,
flagging a contrast whose runs ran on different hardware.

The generator suites' tokenizer travels too (``publish_tokenizer`` / ``published_tokenizer``): weights only, its
config and metrics, and a SHA-256 that is checked before the weights are loaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from lab.core.registry import ConfigError, to_dict
from lab.runtime.files import ROOT, read_data
from lab.runtime.published import TOKENIZER_FILE, sha256_of
from lab.config.runs import config_differences

RESULTS = ROOT / "results"  # the published results; $BITLAB_RESULTS overrides it (tests, a second checkout)
# what a record copies from its run (the images only when small; checkpoints never)
RECORD_FILES = ("config.yaml", "metrics.json")
RECORD_IMAGES = ("samples.png", "reconstructions.png", "progressive.png")
MAX_IMAGE_BYTES = 2_000_000


def results_root() -> Path:
    return Path(os.environ.get("BITLAB_RESULTS") or RESULTS)


def results_dir(suite_name: str, root: Path | None = None) -> Path:
    """Where a suite publishes: ``results/<last part of its name>`` (``ablations/order`` -> ``results/order``)."""
    return Path(root or results_root()) / str(suite_name).rstrip("/").split("/")[-1]


def record_dir(results: Path, point_label: str, seed: int) -> Path:
    return Path(results) / "runs" / point_label / f"s{seed}"


# ------------------------------------------------------------------------------------------------ reading
class RecordError(ConfigError):
    """A record (or a run's file) that is malformed: names the file and what is wrong."""


def read_yaml(path: Path) -> dict:
    """A record's config.yaml as plain data (lab.runtime.files.read_data: a tag or malformed YAML is one paragraph
    naming the file, as a RecordError)."""
    try:
        return read_data(Path(path))
    except ConfigError as e:
        raise RecordError(str(e)) from None


def read_metrics(path: Path) -> dict:
    """A record's metrics.json as a mapping, or a RecordError naming the file."""
    try:
        return read_data(Path(path))
    except ConfigError as e:
        raise RecordError(str(e)) from None


def hardware(metrics: Mapping[str, Any]) -> str:
    """The hardware and precision a run recorded, in a few words (``AMD EPYC ... · bf16-mixed · 2 process(es)``)."""
    parts = [str(metrics.get("gpu") or metrics.get("cpu") or "unknown machine")]
    if metrics.get("precision"):
        parts.append(str(metrics["precision"]))
    if metrics.get("devices") not in (None, ""):
        parts.append(f"{metrics['devices']} process(es)")
    return " · ".join(parts)


def hardware_kind(metrics: Mapping[str, Any]) -> str:
    """What must match for two runs to be paired without a flag: the machine model and the numerics."""
    return f"{metrics.get('gpu') or metrics.get('cpu') or '?'} | {metrics.get('precision') or '?'}"


# ------------------------------------------------------------------------------------------------ matching
def requested(cfg: Mapping[str, Any]) -> dict:
    """A run's config as the user asked for it: the ``auto`` settings a machine resolved (precision, process
    count, per-process batch) put back to what was requested, and ``resolved:`` dropped. Two machines of
    different kinds thus agree on the settings of the same point."""
    d = json.loads(json.dumps(dict(cfg), default=str))
    res = d.pop("resolved", None) or {}
    trainer, loader = d.get("trainer") or {}, d.get("loader") or {}
    if "precision_requested" in res:
        trainer["precision"] = res["precision_requested"]
    if "devices_requested" in res:
        trainer["devices"] = res["devices_requested"]
    if "devices" in trainer:
        trainer["devices"] = str(trainer["devices"])
    if loader.get("global_batch_size") not in (None, "None"):
        loader.pop("batch_size", None)  # derived: global / processes
    return d


def _comparable(record_cfg: Mapping[str, Any], job_cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """Both configs as ``requested``, less what never decides a setting (the suite's path, a resolved strategy)."""
    a, b = requested(record_cfg), requested(job_cfg)
    auto_devices = any("devices_requested" in (c.get("resolved") or {}) for c in (record_cfg, job_cfg))
    for d in (a, b):
        d.pop("name", None)  # the suite's path: a record may be read under another checkout's suite folder
        if auto_devices:
            d.get("trainer", {}).pop("strategy", None)  # chosen with the process count
    return a, b


def record_differences(record_cfg: Mapping[str, Any], job_cfg: Mapping[str, Any]) -> list[str]:
    """``key: record -> now`` for the settings where a record and a job differ (hardware resolutions aside; a
    constructor default written out in one and left out in the other is no difference: lab.config.with_defaults)."""
    a, b = _comparable(record_cfg, job_cfg)
    diffs = config_differences(a, b)
    if any(_one_sided(d) for d in diffs):  # (only then: the constructors' defaults import the model code)
        from lab.config import with_defaults

        diffs = config_differences(with_defaults(a), with_defaults(b))
    return diffs


def _one_sided(diff: str) -> bool:
    """A ``config_differences`` line for a key that one config leaves out."""
    return diff.split(": ", 1)[-1].startswith("'<unset>' ->") or diff.endswith("-> '<unset>'")


def _differ_where_both_set(record_cfg: Mapping[str, Any], job_cfg: Mapping[str, Any]) -> bool:
    """Whether a record and a job differ in a key both write out: then no default makes them one setting (the cheap
    test before ``record_differences``, which may import the constructors to fill in defaults)."""
    return any(not _one_sided(d) for d in config_differences(*_comparable(record_cfg, job_cfg)))


def find_record(results: Path | None, point_label: str, seed: int) -> Path | None:
    """The record directory of a point/seed when it holds a metrics.json, else None."""
    if results is None:
        return None
    d = record_dir(results, point_label, seed)
    return d if (d / "metrics.json").is_file() else None


def check_records(jobs: list, results: Path | None) -> dict:
    """{job index: record dir} for the jobs a published record finishes; a record of the same preset made with other
    settings is a ConfigError naming the record and the keys (before anything is trained or written). A record of
    another preset belongs to another scale of the suite: neither counted nor an error."""
    out, stale = {}, []
    for i, job in enumerate(jobs):
        rec = find_record(results, job.point.label, job.seed)
        if rec is None:
            continue
        rec_cfg, job_cfg = read_yaml(rec / "config.yaml"), _plain_cfg(job.cfg)
        if str(rec_cfg.get("preset")) != str(job_cfg.get("preset")):
            continue  # another scale's record (a published cpu run beside a smoke check): not this run, not stale
        diffs = record_differences(rec_cfg, job_cfg)
        if diffs:
            more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
            stale.append(f"{rec} ({'; '.join(diffs[:4])}{more})")
        else:
            out[i] = rec
    if stale:
        raise ConfigError(
            f"{len(stale)} published record(s) of this suite were made with other settings than its points have now: "
            f"{'; '.join(stale[:3])}{'; ...' if len(stale) > 3 else ''}. They are never reused silently. Run with the "
            "settings they were made with, or move the records aside (they belong to the settings they name).")
    return out


def find_twins(jobs: list, results: Path, skip: set[int]) -> dict[int, Path]:
    """{job index: record dir} for the jobs (outside ``skip``) whose run another suite has already published with
    the same settings: a record under a sibling of ``results`` (``results/<other suite>/runs/<point>/s<seed>/``) of
    the same preset and seed whose config differs from the job's in nothing but the suite's name, as
    ``record_differences`` compares them (the same test that decides whether a record finishes a job). Two suites
    that share a point (vocab_vs_model's BSQ-2^16 column and model_scaling's xs and s) thus train it once."""
    results = Path(results)
    todo = {i: j for i, j in enumerate(jobs) if i not in skip}
    if not todo or not results.parent.is_dir():
        return {}
    candidates: dict[int, list[Path]] = {}
    for rec in sorted(results.parent.glob("*/runs/*/s*/metrics.json")):
        rec = rec.parent
        seed = re.fullmatch(r"s([0-9]{1,9})", rec.name)
        if seed and rec.parent.parent.parent.resolve() != results.resolve():
            candidates.setdefault(int(seed.group(1)), []).append(rec)
    out, configs = {}, {}
    for i, job in todo.items():
        job_cfg = _plain_cfg(job.cfg)
        suite = str(job_cfg.get("name", "")).rsplit("/", 1)[0]
        for rec in candidates.get(int(job.seed), []):
            try:
                rec_cfg = configs[rec] if rec in configs else configs.setdefault(rec, read_yaml(rec / "config.yaml"))
                read_metrics(rec / "metrics.json")
            except RecordError:
                continue  # a malformed record of another suite: that suite's report names it
            if str(rec_cfg.get("name", "")).rsplit("/", 1)[0] == suite:
                continue  # this suite's own record published elsewhere (another folder, a rerun on other hardware)
            if str(rec_cfg.get("preset")) != str(job_cfg.get("preset")) or _differ_where_both_set(rec_cfg, job_cfg):
                continue  # another scale, or another setting of a key both write out
            if not record_differences(rec_cfg, job_cfg):
                out[i] = rec
                break
    return out


def adopt_record(src: Path, results: Path, point_label: str, seed: int) -> Path:
    """Copy another suite's record of the same settings (``find_twins``) into this suite's results as its own record,
    atomically, with ``source.json`` naming where it came from; the tokenizer it used comes along when that suite
    published it. Never replaces a record. -> the new record dir."""
    src, dest = Path(src), record_dir(results, point_label, seed)
    if (dest / "metrics.json").is_file():
        if _same_record(dest, src):
            return dest  # adopted meanwhile by another invocation
        raise ConfigError(f"{dest} already holds a record of {point_label} seed {seed}; it is not replaced by {src}.")
    try:  # the tokenizer first: a record in place means a finished job, its tokenizer included
        key = Path(str(read_metrics(src / "metrics.json").get("tokenizer") or "")).parent.name
    except RecordError:
        key = ""
    theirs, ours = src.parents[2] / "tokenizer" / key, Path(results) / "tokenizer" / key
    if key and (theirs / "tokenizer.json").is_file() and not (ours / "tokenizer.json").is_file():
        _copy_into_place(lambda tmp: shutil.copytree(theirs, tmp), ours, lambda: (ours / "tokenizer.json").is_file())
    try:
        origin = read_data(src / "source.json") if (src / "source.json").is_file() else {}
    except ConfigError:
        origin = {}
    source = {"reused_from": _display(src), **({"run_dir": str(origin["run_dir"])} if origin.get("run_dir") else {})}

    def fill(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for f in (*RECORD_FILES, *RECORD_IMAGES):
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        (tmp / "source.json").write_text(json.dumps(source, indent=2))

    _copy_into_place(fill, dest, lambda: (dest / "metrics.json").is_file())
    return dest


def _copy_into_place(fill, dest: Path, done) -> None:
    """Fill a temp folder beside ``dest`` and rename it into place; when another process put a finished one there
    first (``done()``), keep theirs. A folder at ``dest`` that is not finished (a half-written copy) is replaced."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        fill(tmp)
        if dest.exists() and not done():
            shutil.rmtree(dest, ignore_errors=True)
        if not done():
            tmp.rename(dest)
    except OSError:
        if not done():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

def reused_from(record: Path) -> str:
    """Where a record was adopted from (``adopt_record``), or ''."""
    f = Path(record) / "source.json"
    try:
        return str(read_data(f).get("reused_from") or "") if f.is_file() else ""
    except ConfigError:
        return ""


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _plain_cfg(cfg: Any) -> dict:

    return to_dict(cfg) if not isinstance(cfg, dict) else cfg


# ------------------------------------------------------------------------------------------------ writing
def _files_of(run_dir: Path) -> list[Path]:
    files = [run_dir / f for f in RECORD_FILES]
    files += [run_dir / f for f in RECORD_IMAGES if (run_dir / f).is_file() and (run_dir / f).stat().st_size <= MAX_IMAGE_BYTES]
    return files


def _same_record(a: Path, b: Path) -> bool:
    """Two records are the same when their metrics and configs hold the same data (timing keys included)."""
    try:
        return (read_metrics(a / "metrics.json") == read_metrics(b / "metrics.json")
                and read_yaml(a / "config.yaml") == read_yaml(b / "config.yaml"))
    except RecordError:
        return False


def publish_run(run_dir: Path, results: Path, point_label: str, seed: int, force: bool = False) -> Path | None:
    """Copy a finished run's record into ``results/.../runs/<point>/s<seed>/`` atomically. An existing record is
    left alone when it is the same, and replaced by a different one only with ``force`` (ConfigError otherwise).
    -> the record dir (None when the run has not finished)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        return None
    read_metrics(run_dir / "metrics.json")
    read_yaml(run_dir / "config.yaml")
    dest = record_dir(results, point_label, seed)
    if (dest / "metrics.json").is_file():
        if _same_record(dest, run_dir):
            return dest
        if not force:
            raise ConfigError(
                f"{dest} already holds a different record of {point_label} seed {seed} than {run_dir}: a published "
                "record is never replaced silently. Pass --force to replace it (or publish to another folder).")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in _files_of(run_dir):
        shutil.copy2(f, tmp / f.name)
    (tmp / "source.json").write_text(json.dumps({"run_dir": str(run_dir.resolve())}, indent=2))
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)
    return dest


def publish_jobs(jobs: list, results: Path, force: bool = False) -> int:
    """Publish every finished local run of ``jobs``; -> how many records now hold a run of these jobs."""
    n = 0
    for job in jobs:
        if publish_run(job.run_dir, results, job.point.label, job.seed, force=force):
            n += 1
            publish_tokenizer_of(job.run_dir, results)
    return n


# ------------------------------------------------------------------------------------------------ tokenizer
def publish_tokenizer_of(run_dir: Path, results: Path) -> Path | None:
    """The cached tokenizer a generator run used (``tokenizer.txt``), published once per suite under
    ``results/<suite>/tokenizer/<cache key>/``: its weights only (no optimizer state), config, metrics and the
    weights' SHA-256. -> that folder (None for a run without a cached tokenizer)."""
    ref = Path(run_dir) / "tokenizer.txt"
    if not ref.is_file():
        return None
    tdir = Path(ref.read_text().strip())
    key = tdir.parent.name
    if tdir.parent.parent.name != "_tokenizers" or not (tdir / "metrics.json").is_file():
        return None  # a tokenizer_from= the user gave: theirs to publish
    dest = Path(results) / "tokenizer" / key
    if (dest / "tokenizer.json").is_file():
        return dest
    ckpt = next((tdir / "checkpoints" / n for n in ("best.ckpt", "last.ckpt") if (tdir / "checkpoints" / n).is_file()), None)
    if ckpt is None:
        return None
    import torch  # noqa: PLC0415 - only when a tokenizer is published

    full = torch.load(ckpt, map_location="cpu", weights_only=True)
    slim = {k: full[k] for k in ("state_dict", "hyper_parameters", "pytorch-lightning_version") if k in full}
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(slim, tmp / TOKENIZER_FILE)
    for f in ("config.yaml", "metrics.json"):
        shutil.copy2(tdir / f, tmp / f)
    for f in RECORD_IMAGES:
        if (tdir / f).is_file() and (tdir / f).stat().st_size <= MAX_IMAGE_BYTES:
            shutil.copy2(tdir / f, tmp / f)
    (tmp / "tokenizer.json").write_text(json.dumps(
        {"cache_key": key, "file": TOKENIZER_FILE, "sha256": sha256_of(tmp / TOKENIZER_FILE),
         "bytes": (tmp / TOKENIZER_FILE).stat().st_size}, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
