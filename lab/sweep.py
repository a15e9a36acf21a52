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
run directory with neither aside (nothing is deleted). At the end it writes ``runs/<NAME>/results.csv`` (one
row per run), ``results.md`` (mean +- std over seeds) and ``plots/*.png`` (``report.plots`` of the YAML);
``python -m lab report NAME [--out DIR]`` rebuilds them from the runs without training.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, open_dict

from lab.config import load_experiment, to_dict
from lab.registry import ConfigError

CASES = "cases"
# Columns every row has, before the swept values and the metrics.
FIXED_COLUMNS = ("suite", "point", "seed", "run_dir", "status")
# Headline metrics for results.md when the YAML names none (those present are shown).
DEFAULT_METRICS = ("psnr", "lpips", "rfid", "bit_entropy", "codebook_usage", "val_loss", "bit_accuracy", "gfid",
                   "params", "head_params", "flops_per_step", "wall_time_s", "peak_memory_mb")


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
    """The suite's own config and one fully validated config per (point, seed): bad keys fail before training."""
    suite = load_experiment(name, overrides)
    if not suite.get("sweep"):
        raise ConfigError(f"{name} has no `sweep:`; run it with `python -m lab run {name}`.")
    sweep = to_dict(suite["sweep"])
    seeds = list(to_dict(suite["seeds"]) or [suite["seed"]])
    if not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}.")
    jobs = []
    for point in expand(sweep):
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

    suite, jobs = plan(name, overrides)
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
    print(f"[sweep {suite['name']}] all {len(jobs)} runs finished in {_fmt_time(time.time() - t_start)}")
    manifest.setdefault("invocations", [])
    old = json.loads((sweep_dir / "sweep.json").read_text()).get("invocations", [])
    manifest["invocations"] = old + [{"started": datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
                                      "wall_s": round(time.time() - t_start, 1), "runs_trained": len(done_times),
                                      "machine": machine()}]
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str))
    write_report(name, overrides, out=sweep_dir)
    return sweep_dir


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


# --------------------------------------------------------------------------------------------- results
def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json -> flat scalars: per_scale lists become ``per_scale.<key>.<scale>``; nested dicts join keys."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k == "per_scale" and isinstance(v, Mapping):
            scales = v.get("scale", [])
            for key, vals in v.items():
                if key != "scale" and isinstance(vals, list):
                    for s, x in zip(scales, vals):
                        out[f"per_scale.{key}.{s}"] = x
        elif isinstance(v, Mapping):
            for kk, vv in flatten_metrics(v).items():
                out[f"{k}.{kk}"] = vv
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
    return out


def collect(suite: DictConfig, jobs: Sequence[Job]) -> list[dict]:
    rows = []
    from lab.run import runs_root

    sweep_dir = runs_root(suite) / suite["name"]
    for job in jobs:
        row: dict[str, Any] = {"suite": suite["name"], "point": job.point.label, "seed": job.seed,
                               "run_dir": str(job.run_dir.relative_to(sweep_dir))}
        row.update(job.point.values)
        mpath = job.run_dir / "metrics.json"
        if mpath.is_file():
            row["status"] = "done"
            row.update(flatten_metrics(json.loads(mpath.read_text())))
        elif (job.run_dir / FAILED).is_file():
            info = json.loads((job.run_dir / FAILED).read_text())
            row["status"] = info.get("status", "failed")
            row["error"] = info.get("error", "")
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def columns_of(rows: Sequence[Mapping], first: Sequence[str]) -> list[str]:
    cols = list(first)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_csv(rows: Sequence[Mapping], path: Path, first: Sequence[str]) -> list[str]:
    cols = columns_of(rows, first)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    return cols


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mean_std(values: Iterable[Any]) -> tuple[float, float, int] | None:
    xs = [x for x in (_num(v) for v in values) if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd, len(xs)


def _fmt(m: float, sd: float, n: int) -> str:
    def one(x: float) -> str:
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3g}"
        return f"{x:.4g}" if abs(x) < 100 else f"{x:.1f}"

    return one(m) + (f" ± {one(sd)}" if n > 1 else "")


def group_rows(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r["point"], []).append(r)
    return groups


def markdown_table(rows: Sequence[Mapping], axes: Sequence[str], metrics: Sequence[str]) -> str:
    done = [r for r in rows if r.get("status") == "done"]
    metrics = [m for m in metrics if any(_num(r.get(m)) is not None for r in done)]
    head = list(axes) + ["seeds"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group_all in group_rows(rows).items():
        group = [r for r in group_all if r.get("status") == "done"]
        cells = [str(group_all[0].get(a, "")) for a in axes] + [str(len(group))]
        if not group:  # every seed failed or has not run: say which
            statuses = sorted({str(r.get("status")) for r in group_all})
            cells += [", ".join(statuses).replace("_", " ")] + [""] * (len(metrics) - 1)
        else:
            for m in metrics:
                ms = mean_std(r.get(m) for r in group)
                cells.append(_fmt(*ms) if ms else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(name: str, overrides: Sequence[str] = (), out: Path | None = None) -> Path:
    """results.csv, results.md (report.md when ``out`` is outside the runs) and plots/ for a suite's runs."""
    from lab.run import runs_root

    suite, jobs = plan(name, overrides)
    sweep_dir = runs_root(suite) / suite["name"]
    out = Path(out) if out is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(suite, jobs)
    axes = columns_of([j.point.values for j in jobs], [])
    write_csv(rows, out / "results.csv", list(FIXED_COLUMNS) + axes)
    report = to_dict(suite["report"]) or {}
    metrics = list(report.get("metrics") or DEFAULT_METRICS)
    from lab.sweep_plots import make_plots

    plots = make_plots(rows, jobs, report.get("plots") or [], out / "plots")
    done = [r for r in rows if r.get("status") == "done"]
    wall = sum(_num(r.get("wall_time_s")) or 0.0 for r in done)
    manifest = {}
    if (sweep_dir / "sweep.json").is_file():
        manifest = json.loads((sweep_dir / "sweep.json").read_text())
    header = _header_comment(name)
    md = [f"# {suite['name']}", ""]
    if header:
        md += ["> " + line for line in header] + [""]
    md += [
        f"Command: `{manifest.get('command') or ' '.join(['python -m lab run', suite['name'], *overrides])}`",
        f"(`make experiment NAME={suite['name']}`{' ' + ' '.join(overrides) if overrides else ''}). Preset `{suite['preset']}`.",
        "",
        f"Runs: {len(done)} of {len(rows)} finished; summed run wall time {_fmt_time(wall)} "
        f"(the tokenizers trained for them are not included)"
        + (f"; the sweep command's wall time, tokenizers included: {_fmt_time(sum(i['wall_s'] for i in manifest['invocations']))}"
           f" over {len(manifest['invocations'])} invocation(s)" if manifest.get("invocations") else "")
        + f"; machine: {_machines(manifest)}.",
        "",
        "Mean ± sample std over seeds:",
        "",
        markdown_table(rows, axes, metrics),
        "",
    ]
    for p in plots:
        md += [f"![{p.stem}](plots/{p.name})", ""]
    md += ["Every run: `results.csv` (one row per run, every final metric). Rebuild this report with "
           f"`python -m lab report {suite['name']}`.", ""]
    (out / ("results.md" if out == sweep_dir else "report.md")).write_text("\n".join(md))
    print(f"[sweep {suite['name']}] results: {out / 'results.csv'}, {out / ('results.md' if out == sweep_dir else 'report.md')}, {len(plots)} plots")
    return out


def _machines(manifest: dict) -> str:
    """The machines the sweep's invocations recorded (a report may be rebuilt elsewhere), else this one."""
    invocations = manifest.get("invocations", [])
    seen = list(dict.fromkeys(i["machine"] for i in invocations if "machine" in i))
    if not seen:
        return machine()
    missing = sum("machine" not in i for i in invocations)
    return "; ".join(seen) + (f" ({missing} earlier invocation(s) did not record theirs)" if missing else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return (f"{os.cpu_count()} CPU cores ({cpu}){gpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
            f"Python {sys.version.split()[0]}")


def _header_comment(name: str) -> list[str]:
    from lab.config import EXPERIMENTS

    lines = []
    for line in (EXPERIMENTS / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines
