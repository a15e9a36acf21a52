"""The results of a sweep: ``results.csv`` (one row per run), ``results.md`` / ``report.md`` (mean +- std over
seeds, the computed verdicts against the baseline, the floor and ceiling, the command, the wall time, the machine)
and the plots. ``python -m lab report NAME`` rebuilds them. The report's sections are lab/sweeps/report_sections.py."""
from __future__ import annotations

import csv
import os
import platform
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from lab.core.registry import ConfigError, to_dict
from lab.sweeps.plan import DEFAULT_METRICS, FAILED, FIXED_COLUMNS, Job, plan
from lab.config import header_comment, load_experiment
from lab.core.numfmt import as_number, fmt_duration
from lab.runtime.files import process_rank, read_data, runs_root
from lab.config.runs import check_not_stale
from lab.runtime.files import ROOT
from lab.sweeps.plots import make_plots
from lab.sweeps.records import (RecordError, check_records, hardware, publish_jobs, read_metrics, reused_from,
                                results_dir)
from lab.sweeps.report_sections import (correlations_section, floor_ceiling_table, hardware_section, markdown_table,
                                        samples_section, verdicts_section)
from lab.sweeps.timing import time_text, times_by_machine
from lab.sweeps.verdicts import parse_baseline

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


def collect(suite: DictConfig, jobs: Sequence[Job], results: Path | None = None) -> list[dict]:
    """One row per run: from its local run directory when it has finished there, else from its published record
    under ``results`` (``source`` says which, ``hardware`` what it ran on). A metrics.json that cannot be read is
    a row of status ``malformed`` naming the file, never counted as finished."""
    rows = []
    sweep_dir = runs_root(suite["runs_dir"]) / suite["name"]
    recorded = check_records(list(jobs), results)  # only records of these settings (another preset's: not rows)
    for i, job in enumerate(jobs):
        row: dict[str, Any] = {"suite": suite["name"], "point": job.point.label, "seed": job.seed,
                               "run_dir": str(job.run_dir.relative_to(sweep_dir))}
        row.update(job.point.values)
        source = job.run_dir if (job.run_dir / "metrics.json").is_file() else recorded.get(i)
        if source is not None:
            try:
                metrics = read_metrics(source / "metrics.json")
            except RecordError as e:
                row.update(status="malformed", error=str(e))
            else:
                row["status"] = "done"
                row["source"] = "local" if source == job.run_dir else "published"
                if source != job.run_dir:
                    row["run_dir"] = _relative(source)
                    if origin := reused_from(source):
                        row["reused_from"] = origin
                row["hardware"] = hardware(metrics)
                row.update(flatten_metrics(metrics))
                value = row.get("gfid", row.get("rfid"))
                if isinstance(value, float) and value != value:  # NaN: the point failed, not a seed dropped
                    row.update(status="failed_nan", error=f"{source / 'metrics.json'} records a NaN "
                               f"{'gfid' if 'gfid' in row else 'rfid'}")
        elif (job.run_dir / FAILED).is_file():
            info = read_data(job.run_dir / FAILED)
            row["status"] = info.get("status", "failed")
            row["error"] = info.get("error", "")
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


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


def _evaluation_share(done: Sequence[Mapping], wall: float) -> str:
    """The evaluation's share of the summed run wall time, when the runs recorded ``eval_time_s``."""
    ev = [as_number(r.get("eval_time_s")) for r in done]
    if not ev or any(x is None for x in ev) or wall <= 0:
        return ""
    total = sum(ev)
    return f"; the runs' evaluation (FID/KID, floor and ceiling) took {fmt_duration(total)} of it ({100 * total / wall:.0f} %)"



def report_overrides(name: str, overrides: Sequence[str] = ()) -> list[str]:
    """The overrides a suite's report is written with. A ``seeds=`` override picks which seeds one invocation trains
    (to pair runs within a sitting, or to add seeds); it does not make the suite smaller: the report covers the
    suite's own seeds and the override's together, and its command rebuilds that whole report."""
    keep = [o for o in overrides if str(o).split("=", 1)[0].strip().lstrip("+~") != "seeds"]
    if len(keep) == len(overrides):
        return list(overrides)
    def seeds_of(cfg: DictConfig) -> set[int]:
        return {int(s) for s in (to_dict(cfg["seeds"]) or [cfg["seed"]])}

    own = seeds_of(load_experiment(name, keep, validate=False))
    seeds = sorted(own | seeds_of(load_experiment(name, list(overrides), validate=False)))
    return keep if set(seeds) == own else keep + [f"seeds=[{','.join(map(str, seeds))}]"]


def write_report(name: str, overrides: Sequence[str] = (), out: Path | None = None,
                 results: Path | None = None) -> Path:
    """results.csv, results.md (report.md when ``out`` is outside the runs) and plots/ for a suite's runs, local and
    published (``results``: the records' folder; default ``out`` when it is outside the runs, else the suite's
    results folder). Finished local runs are published into ``out`` when it is a results folder."""
    overrides = report_overrides(name, overrides)
    suite, jobs = plan(name, overrides)
    sweep_dir = runs_root(suite["runs_dir"]) / suite["name"]
    out = Path(out) if out is not None else sweep_dir
    if results is None:
        results = out if out != sweep_dir else results_dir(suite["name"])
    out.mkdir(parents=True, exist_ok=True)
    if out != sweep_dir and process_rank() == 0:
        publish_jobs(jobs, out)
    rows = collect(suite, jobs, results)
    axes = columns_of([j.point.values for j in jobs], [])
    write_csv(rows, out / "results.csv", list(FIXED_COLUMNS) + axes)
    report = to_dict(suite["report"]) or {}
    metrics = list(report.get("metrics") or DEFAULT_METRICS)

    plots = make_plots(rows, jobs, report.get("plots") or [], out / "plots")
    done = [r for r in rows if r.get("status") == "done"]
    wall = sum(as_number(r.get("wall_time_s")) or 0.0 for r in done)
    manifest = {}
    if (sweep_dir / "sweep.json").is_file():
        manifest = read_data(sweep_dir / "sweep.json")

    header = header_comment(name)
    md = [f"# {suite['name']}", ""]
    if header:
        md += ["> " + line for line in header] + [""]
    md += [
        f"Command: `{' '.join(['python -m lab run', suite['name'], *overrides])}`",
        f"(`make experiment NAME={suite['name']}`{' ' + ' '.join(overrides) if overrides else ''}). Preset `{suite['preset']}`.",
        "",
        f"Runs: {len(done)} of {len(rows)} finished; summed run wall time {fmt_duration(wall)} "
        f"(the tokenizers trained for them are not included){_evaluation_share(done, wall)}"
        + (f"; the sweep command's wall time, tokenizers included: {fmt_duration(sum(i['wall_s'] for i in manifest['invocations']))}"
           f" over {len(manifest['invocations'])} invocation(s){_overlap(manifest['invocations'])}" if manifest.get("invocations") else "")
        + f"; machine: {_machines(manifest, done)}.",
        "",
        f"Time per run, measured: {time_text(times_by_machine(done)) or 'no finished run'} (the first run on a "
        "machine also computes the evaluation's reference features; a run that shared its cores is slower).",
        "",
        *_fid_reference(done),
        "Mean ± sample sd over seeds (`seeds`: the finished runs of each case; a cell says `(n seeds)` where fewer "
        "of them have the metric, and `(1 seed)` where there is no sd):",
        "",
        markdown_table(rows, axes, metrics),
        "",
    ]
    base_sel = parse_baseline(report.get("baseline"), [{a: r.get(a, "") for a in axes} for r in rows])
    for section in (verdicts_section(suite, rows, axes), hardware_section(rows, axes, base_sel), floor_ceiling_table(rows, axes),
                    correlations_section(rows, report.get("plots") or [], _head_name(suite))):
        if section:
            md += [section.rstrip("\n"), ""]
    for p in plots:
        md += [f"![{p.stem}](plots/{p.name})", ""]
    md += samples_section(jobs, out, results)
    md += ["Every run: `results.csv` (one row per run, every final metric). Rebuild this report with "
           f"`python -m lab report {suite['name']}`.", ""]
    (out / ("results.md" if out == sweep_dir else "report.md")).write_text("\n".join(md))
    print(f"[sweep {suite['name']}] results: {out / 'results.csv'}, {out / ('results.md' if out == sweep_dir else 'report.md')}, {len(plots)} plots")
    return out


def _head_name(suite: DictConfig) -> str | None:
    """The head of a generator suite's runs (the loss kind of its validation loss); None for a tokenizer suite."""
    if str(suite.get("stage")) != "generator" or not suite.get("head"):
        return None
    return str(suite["head"].get("name") or "") or None


def _fid_reference(done: Sequence[Mapping]) -> list[str]:
    refs = list(dict.fromkeys(str(r["fid_reference"]) for r in done if r.get("fid_reference") not in (None, "")))
    return [f"FID/KID reference: {'; '.join(refs)}.", ""] if refs else []


def _overlap(invocations: list[dict]) -> str:
    """When invocations ran at the same time (sharing the grid), the elapsed time from the first start to the last end."""
    spans = [(datetime.fromisoformat(i["started"]).timestamp(), i["wall_s"]) for i in invocations if "started" in i]
    if len(spans) < 2:
        return ""
    elapsed = max(t + w for t, w in spans) - min(t for t, _ in spans)
    total = sum(w for _, w in spans)
    return f" (some ran side by side: {fmt_duration(elapsed)} from the first start to the last end)" if elapsed < total - 1 else ""


def _machines(manifest: dict, done: Sequence[Mapping]) -> str:
    """The machines the sweep's invocations recorded, else those its finished runs recorded (a report may be
    rebuilt elsewhere), else this one."""
    invocations = manifest.get("invocations", [])
    seen = list(dict.fromkeys(i["machine"] for i in invocations if "machine" in i))
    if not seen:
        runs = Counter(str(r.get("gpu") or r.get("cpu")) for r in done if r.get("gpu") or r.get("cpu"))
        if runs:
            return "; ".join(f"{m} ({n} run{'s' * (n > 1)})" for m, n in runs.most_common()) + " (as the runs recorded)"
        return machine(threads=False) + " (where this report was built: the runs did not record theirs)"
    missing = sum("machine" not in i for i in invocations)
    return "; ".join(seen) + (f" ({missing} earlier invocation(s) did not record theirs)" if missing else "")


def machine(threads: bool = True) -> str:
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
    n = f", {torch.get_num_threads()} torch thread(s)" if threads else ""
    return (f"{os.cpu_count()} CPU cores ({cpu}){gpu}{n}, torch {torch.__version__}, "
            f"Python {sys.version.split()[0]}")


def check_report(name: str, overrides: Any = (), out: str | Path | None = None, force: bool = False,
                 results: str | Path | None = None) -> None:
    """Before ``python -m lab report``: the suite has runs (a suite that never ran is an error, not an empty
    table), and a report in ``out`` with more finished runs than this one would have is not replaced by it
    unless ``force`` (a published table is never overwritten by less)."""
    overrides = report_overrides(name, list(overrides))
    suite, jobs = plan(name, overrides)
    sweep_dir = runs_root(suite["runs_dir"]) / suite["name"]
    command = " ".join(["python -m lab run", suite["name"], *overrides])
    results = Path(results) if results is not None else (Path(out) if out is not None else results_dir(suite["name"]))
    recorded = check_records(jobs, results)
    if not any(j.run_dir.exists() for j in jobs) and not recorded:
        raise ConfigError(
            f"Nothing to report for {suite['name']}: none of its {len(jobs)} runs exists under {sweep_dir} (with "
            f"overrides {list(overrides) or 'none'}). Run the suite first (`{command}`), or pass the overrides "
            "it ran with (e.g. preset=smoke)."
        )
    check_not_stale(jobs)
    if out is None or force:
        return
    old_csv = Path(out) / "results.csv"
    if not old_csv.is_file():
        return
    with open(old_csv, newline="") as fh:
        old_done = sum(row.get("status") == "done" for row in csv.DictReader(fh))
    new_done = sum((j.run_dir / "metrics.json").is_file() or i in recorded for i, j in enumerate(jobs))
    if new_done < old_done:
        raise ConfigError(
            f"Refusing to overwrite the report in {out}: it has {old_done} finished runs, and the runs under "
            f"{sweep_dir} give only {new_done} of {len(jobs)}. A published result is never replaced by less; rerun "
            f"or finish the suite (`{command}`), or pass --force to replace it anyway."
        )
