"""Sweeps: a grid of runs from one YAML, trained, evaluated, tabled and plotted.

An experiment YAML with a ``sweep:`` node is a suite::

    sweep:
      head.name: [index, bitwise]              # a dotted config key -> the values it takes
      cases:                                   # optional: rows of keys that change together (zipped, not crossed)
        - {label: bsq16, quantizer: {name: bsq, bits: 16}}
        - {label: vq16, quantizer: {name: vq, codebook_size: 65536}, correction: {name: none}}
    seeds: [0, 1]

The grid is the product of the axes in YAML order, times ``seeds``. Each point is one ordinary run of the
experiment with the point merged in after the YAML and its preset (before the command line), written to
``runs/<NAME>/<point label>/s<seed>/``. Generator runs share their tokenizer through the tokenizer cache
(``runs/_tokenizers/<hash of its config and data>``), so each distinct tokenizer is trained once; the
tokenizer's seed is ``tokenizer_train.seed``, not the generator's.

Re-running a sweep skips runs with a ``metrics.json``, resumes runs with a ``checkpoints/last.ckpt`` and moves a
run directory with neither aside (nothing is deleted). Two invocations of one sweep at once (e.g. one per
core with ``OMP_NUM_THREADS=1``) share its runs: each run is claimed by its run lock (``.s<seed>.lock``,
lab/runlock.py). A finished run whose ``config.yaml`` differs from its point's config now is an error, never
reported as this sweep's. At the end it writes ``runs/<NAME>/results.csv`` (one
row per run), ``results.md`` (mean +- std over seeds; verdicts against ``report.baseline``, ``lab/verdicts.py``) and ``plots/*.png`` (``report.plots`` of the YAML);
``python -m lab report NAME [--out DIR]`` rebuilds them from the runs without training.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, open_dict

from lab.config import load_experiment, to_dict
from lab.registry import ConfigError
from lab.runlock import holder, unlock
from lab.safety import check_component

CASES = "cases"
# Columns every row has, before the swept values and the metrics.
FIXED_COLUMNS = ("suite", "point", "seed", "run_dir", "status")
# Headline metrics for results.md when the YAML names none (those present are shown).
DEFAULT_METRICS = ("psnr", "lpips", "rfid", "rkid", "bit_entropy", "codebook_usage", "val_loss", "bit_accuracy",
                   "gfid", "kid", "gfid_normalized", "params", "head_params", "flops_per_step", "wall_time_s", "peak_memory_mb")


# ------------------------------------------------------------------------------------------------ grid
@dataclass
class Point:
    label: str                       # directory name of the point, e.g. "head-index_size-s"
    values: dict[str, Any]           # column -> value (dotted keys, and "case" for a cases axis)
    layer: dict = field(default_factory=dict)  # nested overrides merged into the experiment


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = copy.deepcopy(value)


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return "-".join(_short(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return "x".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-") or "default"


def _axis_name(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def expand(sweep: Mapping | None) -> list[Point]:
    """The grid points of ``sweep`` (product of the axes, in order). ``None`` or ``{}`` is a single point."""
    if not sweep:
        return [Point("default", {})]
    axes: list[list[tuple[str, dict[str, Any], dict]]] = []  # per axis: (label part, column values, layer)
    for key, values in sweep.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep.{key} must be a non-empty list of values, got {values!r}.")
        options = []
        if key == CASES:
            for i, case in enumerate(values):
                if not isinstance(case, Mapping):
                    raise ConfigError(f"sweep.cases[{i}] must be a mapping of config keys, got {case!r}.")
                case = dict(case)
                label = str(case.pop("label", "") or "-".join(f"{_axis_name(k)}-{_short(v)}" for k, v in case.items()))
                layer: dict = {}
                for k, v in case.items():
                    set_dotted(layer, k, v)
                if _slug(label).strip("."):
                    check_component(_slug(label), f"sweep.cases[{i}].label")
                else:  # "." or "..": the point's runs would land in (and share) a parent directory
                    raise ConfigError(f"sweep.cases[{i}].label={label!r} is not a valid directory name: a label "
                                      "names the point's directory, so it needs a letter or digit (and is never '.' or '..').")
                options.append((_slug(label), {"case": label}, layer))
        else:
            for v in values:
                layer = {}
                set_dotted(layer, key, v)
                options.append((_slug(f"{_axis_name(key)}-{_short(v)}"), {key: _short(v) if isinstance(v, Mapping) else v}, layer))
        axes.append(options)
    points = []
    for combo in itertools.product(*axes):
        layer: dict = {}
        values: dict[str, Any] = {}
        for _, vals, lay in combo:
            layer = _merge_layers(layer, lay)
            values.update(vals)
        points.append(Point("_".join(part for part, _, _ in combo), values, layer))
    labels = [p.label for p in points]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"sweep points share a label ({', '.join(dupes)}): give the cases distinct `label:`s.")
    return points


def _merge_layers(a: dict, b: Mapping) -> dict:
    from lab.config import merge

    return merge(a, b)


@dataclass
class Job:
    point: Point
    seed: int
    cfg: DictConfig

    @property
    def run_dir(self) -> Path:
        from lab.run import runs_root

        return runs_root(self.cfg) / self.cfg["name"] / str(self.cfg["run_id"])


def plan(name: str, overrides: Sequence[str] = ()) -> tuple[DictConfig, list[Job]]:
    """The suite's own config and one fully validated config per (point, seed): bad keys, and a baseline that is
    not in the grid, fail before training."""
    suite = load_experiment(name, overrides)
    if not suite.get("sweep"):
        raise ConfigError(f"{name} has no `sweep:`; run it with `python -m lab run {name}`.")
    sweep = to_dict(suite["sweep"])
    seeds = list(to_dict(suite["seeds"]) or [suite["seed"]])
    if not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}.")
    points = expand(sweep)
    from lab.verdicts import check_report_node, parse_baseline

    report = to_dict(suite["report"]) or {}
    check_report_node(report)
    parse_baseline(report.get("baseline"), [p.values for p in points], where=f"report.baseline of {name}")
    jobs = []
    for point in points:
        for seed in seeds:
            try:
                cfg = load_experiment(name, overrides, layer=point.layer, layer_source=f"the sweep point {point.label}")
            except ConfigError as e:
                raise ConfigError(f"sweep point {point.label}: {e}") from None
            with open_dict(cfg):
                cfg["name"] = f"{suite['name']}/{point.label}"
                cfg["seed"] = int(seed)
                cfg["run_id"] = f"s{seed}"
                cfg["resume"] = False
                cfg["sweep"] = None
                cfg["seeds"] = None
            jobs.append(Job(point, int(seed), cfg))
    return suite, jobs


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_sweep(name: str, overrides: Sequence[str] = ()) -> Path:
    """Train and evaluate every run of the suite that is not finished; then write the results. -> sweep dir."""
    from lab.run import run_experiment, runs_root
    from lab.sweep_report import machine, write_report

    from lab.runlock import check_not_stale

    suite, jobs = plan(name, overrides)
    check_not_stale(jobs)  # before anything is written: no earlier run of other settings passes for this sweep's
    sweep_dir = runs_root(suite) / suite["name"]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "suite": suite["name"], "overrides": list(overrides), "preset": suite["preset"],
        "command": " ".join(["python -m lab run", suite["name"], *overrides]),
        "runs": [{"point": j.point.label, "values": j.point.values, "seed": j.seed,
                  "run_dir": str(j.run_dir.relative_to(sweep_dir))} for j in jobs],
    }
    if (sweep_dir / "sweep.json").is_file():  # keep the record of earlier invocations
        manifest["invocations"] = json.loads((sweep_dir / "sweep.json").read_text()).get("invocations", [])
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str))
    todo = [j for j in jobs if not (j.run_dir / "metrics.json").is_file() and not (j.run_dir / FAILED).is_file()]
    failed = [j for j in jobs if (j.run_dir / FAILED).is_file()]
    if failed:
        print(f"[sweep {suite['name']}] skipping {len(failed)} runs that failed before (delete their {FAILED} to retry): "
              + ", ".join(f"{j.point.label}/s{j.seed}" for j in failed))
    print(f"[sweep {suite['name']}] {len(jobs)} runs ({len(expand(to_dict(suite['sweep'])))} points x "
          f"{len(jobs) // max(1, len(expand(to_dict(suite['sweep']))))} seeds), {len(jobs) - len(todo)} already finished")
    t_start, done_times = time.time(), []
    for i, job in enumerate(todo):
        cfg = job.cfg
        claim = _claim(job.run_dir)
        if claim is None or (job.run_dir / "metrics.json").is_file():
            if claim is not None:
                unlock(job.run_dir)
            print(f"[sweep {suite['name']}] run {job.point.label} seed {job.seed}: "
                  + ("finished meanwhile by another invocation" if claim is not None else
                     f"being trained by another invocation ({holder(job.run_dir)}); skipped here"), flush=True)
            continue
        try:
            if (job.run_dir / "checkpoints" / "last.ckpt").is_file():
                with open_dict(cfg):
                    cfg["resume"] = True
                how = "resuming"
            else:
                if job.run_dir.exists():  # started but never checkpointed: keep it aside, start afresh
                    aside = job.run_dir.with_name(f"{job.run_dir.name}.incomplete-{datetime.now():%Y%m%d-%H%M%S}")
                    job.run_dir.rename(aside)
                how = "starting"
            eta = ""
            if done_times:
                eta = f", about {_fmt_time(sum(done_times) / len(done_times) * (len(todo) - i))} left"
            print(f"[sweep {suite['name']}] run {jobs.index(job) + 1}/{len(jobs)} ({i + 1}/{len(todo)} to do): "
                  f"{how} {job.point.label} seed {job.seed}; elapsed {_fmt_time(time.time() - t_start)}{eta}", flush=True)
            t0 = time.time()
            try:
                run_experiment(cfg)
            except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
                if not _recordable(e):
                    raise
                record_failure(job.run_dir, e)
                print(f"[sweep {suite['name']}] run {job.point.label} seed {job.seed} FAILED and is recorded as such: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                continue
            done_times.append(time.time() - t0)
        finally:
            unlock(job.run_dir)
    n_done = sum((j.run_dir / "metrics.json").is_file() for j in jobs)
    print(f"[sweep {suite['name']}] {n_done} of {len(jobs)} runs finished; this invocation took {_fmt_time(time.time() - t_start)}")
    manifest.setdefault("invocations", [])
    old = json.loads((sweep_dir / "sweep.json").read_text()).get("invocations", [])
    manifest["invocations"] = old + [{"started": datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
                                      "wall_s": round(time.time() - t_start, 1), "runs_trained": len(done_times),
                                      "machine": machine()}]
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str))
    write_report(name, overrides, out=sweep_dir)
    print(results_tables(sweep_dir / "results.md"))
    return sweep_dir


def results_tables(md_path: Path) -> str:
    """The markdown tables of a sweep's results.md (what a sweep prints at its end), blocks separated by a line."""
    blocks, current = [], []
    for line in (md_path.read_text().splitlines() if md_path.is_file() else []):
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return "\n\n".join(blocks)


def _claim(run_dir: Path) -> Path | None:
    """Claim a run for this process: the run's own lock (lab/runlock.py, a ``flock`` on ``.s<seed>.lock`` beside
    it, which the OS releases with its process: a dead or PID-reused holder never blocks it). Two invocations of
    one sweep thus share the work instead of training the same run twice. -> the lock file; None: claimed."""
    from lab.run import process_rank
    from lab.runlock import lock_path, try_lock

    if process_rank() > 0:  # the other ranks of a multi-process run follow rank 0's claim
        return lock_path(run_dir)
    return lock_path(run_dir) if try_lock(run_dir) else None


FAILED = "failed.json"


def _recordable(e: BaseException) -> bool:
    """Failures that belong to the grid point (out of memory, a diverging loss), not to the code or the input."""
    import torch

    from lab.modules import NonFiniteLossError

    if isinstance(e, (NonFiniteLossError, MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())


def record_failure(run_dir: Path, e: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = "out_of_memory" if not type(e).__name__.startswith("NonFinite") else "non_finite_loss"
    (run_dir / FAILED).write_text(json.dumps({"status": kind, "error": f"{type(e).__name__}: {e}"[:2000]}, indent=2))



def incomplete(name: str, overrides: Sequence[str] = ()) -> list[str]:
    """The runs of a suite without a metrics.json, as ``point/s<seed> (status)``."""
    _, jobs = plan(name, overrides)
    out = []
    for j in jobs:
        if not (j.run_dir / "metrics.json").is_file():
            status = "failed" if (j.run_dir / FAILED).is_file() else "missing"
            out.append(f"{j.point.label}/s{j.seed} ({status})")
    return out
