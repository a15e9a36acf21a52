"""The sections of a sweep's report (``lab.sweeps.report``): the table of mean ± sd over seeds, the computed
verdicts against the baseline, where the runs ran (hardware and precision), the floor and ceiling, the correlations
with their bootstrap intervals, and a sample grid per case."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from lab.core.numfmt import as_number, decimals_for, fmt_mean_sd
from lab.core.registry import to_dict
from lab.core.stats import HIGHER, LOWER, NEUTRAL, bootstrap_correlation, direction, mean_std
from lab.sweeps.findings_data import LOSS_KINDS
from lab.sweeps.plan import Job
from lab.sweeps.records import check_records, hardware_kind
from lab.sweeps.verdicts import DEFAULT_VERDICT_METRICS, baseline_of, comparisons, markdown, parse_baseline


def group_rows(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r["point"], []).append(r)
    return groups


TIMES = ("wall_time_s", "train_time_s")


def _value(row: Mapping, metric: str) -> Any:
    """A row's value of ``metric``; none for the times of a run resumed without its earlier parts' time
    (``time_partial``): its last part is not a run's time, so the cell's mean leaves it out and says so in its count."""
    if metric in TIMES and str(row.get("time_partial")).lower() in ("true", "1"):
        return None
    return row.get(metric)


def markdown_table(rows: Sequence[Mapping], axes: Sequence[str], metrics: Sequence[str]) -> str:
    """Mean ± sd over seeds per grid point; one number of decimals per column (``lab/core/numfmt.py``)."""
    done = [r for r in rows if r.get("status") == "done"]
    metrics = [m for m in metrics if any(as_number(r.get(m)) is not None for r in done)]
    head = list(axes) + ["seeds"] + (list(metrics) or ["status"])  # status: where no run has finished
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = group_rows(rows)
    stats = {(label, m): mean_std(_value(r, m) for r in g if r.get("status") == "done") for label, g in groups.items() for m in metrics}
    decimals = {m: decimals_for([ms[0] for (_, mm), ms in stats.items() if mm == m and ms]) for m in metrics}
    for label, group_all in groups.items():
        group = [r for r in group_all if r.get("status") == "done"]
        cells = [str(group_all[0].get(a, "")) for a in axes] + [str(len(group))]
        if not group:  # every seed failed or has not run: say which
            statuses = sorted({str(r.get("status")) for r in group_all})
            cells += [", ".join(statuses).replace("_", " ")] + [""] * (len(metrics) - 1)
        elif not metrics:
            cells.append("done")
        else:
            for m in metrics:
                ms = stats[(label, m)]
                cells.append(fmt_mean_sd(ms[0], ms[1], ms[2], decimals[m], n_expected=len(group)) if ms else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FLOOR_CEILING = ("gfid", "gfid_floor", "gfid_ceiling", "gfid_normalized", "kid", "kid_floor", "kid_ceiling", "kid_normalized")


def floor_ceiling_table(rows: Sequence[Mapping], axes: Sequence[str]) -> str:
    """Where each case sits between real images (the floor: held-out real images of the same N against the same
    reference) and noise (the ceiling: uniformly random codes through the same tokenizer): normalized =
    (FID - floor) / (ceiling - floor). Empty when the runs did not record a floor and ceiling."""
    done = [r for r in rows if r.get("status") == "done"]
    if not any(as_number(r.get("gfid_floor")) is not None or as_number(r.get("gfid_ceiling")) is not None for r in done):
        return ""
    return "\n".join([
        "## Floor and ceiling", "",
        "Floor: held-out real images of the same N scored against the same reference; ceiling: uniformly random "
        "codes decoded by the same tokenizer, same N; normalized = (score - floor) / (ceiling - floor): 0 is real, 1 "
        "is noise. Mean ± sd over seeds:", "",
        markdown_table(rows, axes, FLOOR_CEILING), ""])


def verdict_metrics(report: Mapping[str, Any], stage: str, rows: Sequence[Mapping]) -> list[str]:
    """``report.verdict_metrics``, else the stage's defaults that the results have."""
    named = list(report.get("verdict_metrics") or [])
    if named:
        return named
    done = [r for r in rows if r.get("status") == "done"]
    return [m for m in DEFAULT_VERDICT_METRICS.get(stage, ()) if any(as_number(r.get(m)) is not None for r in done)]


def verdicts_section(suite: DictConfig, rows: Sequence[Mapping], axes: Sequence[str]) -> str:
    """The "Verdicts" section: every case against ``report.baseline`` (nothing when the suite names none)."""
    report = to_dict(suite["report"]) or {}
    baseline = parse_baseline(report.get("baseline"), [{a: r.get(a, "") for a in axes} for r in rows])
    if baseline is None:
        return ""
    metrics = verdict_metrics(report, str(suite["stage"]), rows)
    results = comparisons(rows, axes, baseline, metrics, report.get("directions") or {})
    if not results:
        return "## Verdicts\n\nNone: no finished run has " + " or ".join(metrics or ["a verdict metric"]) + ".\n"
    text = markdown(results, baseline)
    unfinished = [r for r in rows if r.get("status") != "done"]
    if unfinished:  # say so above the table: a verdict from part of the grid is not the suite's verdict
        note = (f"**Incomplete: {len(unfinished)} of {len(rows)} runs have not finished** ("
                + ", ".join(f"{r['point']}/s{r['seed']} {str(r.get('status')).replace('_', ' ')}" for r in unfinished[:8])
                + (", ..." if len(unfinished) > 8 else "") + "): the verdicts use the finished seed pairs only.\n\n")
        text = text.replace("## Verdicts\n\n", "## Verdicts\n\n" + note, 1)
    return text


def correlations_section(rows: Sequence[Mapping], specs: Sequence[Mapping], head: str | None = None) -> str:
    """Pearson r with a 95 % percentile bootstrap interval (the runs resampled within each sweep point: over seeds)
    for each ``scatter`` plot of the report, per loss kind: runs of a bitwise head (bit BCE) and of an index head (index cross-entropy) are never pooled, as
    their losses are on different scales (grouped by the ``head.name`` column where the suite sweeps the head,
    else every run has the suite's ``head``). States the sign convention of r."""
    done = [r for r in rows if r.get("status") == "done"]
    kinds: dict[str, list[Mapping]] = {}
    for r in done:
        h = str(r.get("head.name") or head or "")
        kinds.setdefault(LOSS_KINDS.get(h, f"{h} head" if h else "all runs"), []).append(r)
    side = {HIGHER: "higher is better", LOWER: "lower is better"}
    lines: list[str] = []
    signs: list[str] = []
    for spec in specs:
        if spec.get("kind") != "scatter":
            continue
        x, y = spec.get("x"), spec.get("y")
        for kind, group in kinds.items():
            pts = [(as_number(r.get(x)), as_number(r.get(y)), r.get("point")) for r in group]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            c = bootstrap_correlation([p[0] for p in pts], [p[1] for p in pts], groups=[p[2] for p in pts])
            if c.r is None:
                lines.append(f"- {kind}: r({x}, {y}) undefined over {c.n} runs (fewer than 3, or one of them constant).")
            else:
                ci = f" [{c.ci[0]:.2f}, {c.ci[1]:.2f}]" if c.ci else ""
                how = (f"95 % percentile bootstrap of the runs within each sweep point, {c.n_boot:,} resamples"
                       if c.ci else "one run per sweep point: no interval over seeds")
                lines.append(f"- {kind}: Pearson r({x}, {y}) = {c.r:.2f}{ci} over {c.n} runs ({how}).")
        dx, dy = direction(x), direction(y)
        if NEUTRAL not in (dx, dy):
            good = ">" if dx * dy > 0 else "<"
            signs.append(f"- Sign convention ({x}: {side[dx]}; {y}: {side[dy]}): r {good} 0 means a better {x} goes "
                         f"with a better {y}" + (
                             f". Infinity Fig.10's r ≈ -0.98 is the validation loss against metrics where higher is "
                             f"better: the same direction is r {good} 0 here." if "loss" in str(x) else "."))
    return "\n".join(["## Correlations", "", *lines, *dict.fromkeys(signs), ""]) if lines else ""


def hardware_section(rows: Sequence[Mapping], axes: Sequence[str], baseline: Mapping | None) -> str:
    """Where every run came from (local or published) and what it ran on; a contrast whose runs ran on different
    hardware or precision is flagged, since seed pairs across machines are not the same experiment repeated."""
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return ""
    kinds: dict[str, int] = {}
    for r in done:
        kinds[str(r.get("hardware"))] = kinds.get(str(r.get("hardware")), 0) + 1
    src = {s: sum(r.get("source") == s for r in done) for s in ("local", "published")}
    lines = ["## Where the runs ran", "",
             f"{src['local']} run(s) from this machine's runs/, {src['published']} from published records"
             + (f" ({reused} of them another suite's records of the same settings, taken as they are: "
                "`reused_from` in `results.csv`)" if (reused := sum(bool(r.get("reused_from")) for r in done)) else "")
             + " (`results.csv` has each run's `source` and `hardware`):", ""]
    lines += [f"- {k}: {n} run(s)" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])]
    if len(kinds) > 1 and baseline:
        groups = group_rows(done)  # each case against the baseline point the verdicts pair it with
        flagged, blocked = [], []
        for point, base in baseline_of(done, axes, baseline).items():
            if len({hardware_kind(r) for r in groups[point] + groups[base]}) < 2:
                continue
            theirs = {str(r.get("seed")): hardware_kind(r) for r in groups[base]}
            matched = all(theirs.get(str(r.get("seed")), hardware_kind(r)) == hardware_kind(r) for r in groups[point])
            (blocked if matched else flagged).append(point)
        if flagged:
            lines += ["", f"**Mixed hardware**: the contrasts of {', '.join(flagged)} against the baseline pair runs "
                      "made on different hardware or precision; read their verdicts with that in mind, or rerun "
                      "them on one kind of machine."]
        if blocked:
            lines += ["", f"Hardware differs across seeds but not within a seed pair for {', '.join(blocked)}: each "
                      "seed's run and its baseline ran on one kind of machine, so a machine's offset common to both "
                      "cancels in the paired difference; a machine that changed the effect itself would not."]
    return "\n".join(lines) + "\n"


def samples_section(jobs: Sequence[Job], out: Path, results: Path | None) -> list[str]:
    """A sample (or reconstruction) grid per case: the lowest seed's, from its run or its published record, linked
    relative to the report (a report in results/ links the records' copies)."""
    lines, seen = [], set()
    recorded = check_records(list(jobs), results)
    index = {id(j): i for i, j in enumerate(jobs)}
    for job in sorted(jobs, key=lambda j: j.seed):
        if job.point.label in seen:
            continue
        for folder in (job.run_dir, recorded.get(index[id(job)])):
            grid = next((folder / n for n in ("samples.png", "reconstructions.png") if folder and (folder / n).is_file()), None)
            if grid is None:
                continue
            try:
                rel = os.path.relpath(grid, out)
            except ValueError:
                continue
            if rel.startswith(".."):  # outside the report's folder: prefer the record's copy beside it
                if folder == job.run_dir:
                    continue
            seen.add(job.point.label)
            lines += [f"**{job.point.label}**, seed {job.seed}:", "", f"![{job.point.label} s{job.seed}]({rel})", ""]
            break
    return (["## Samples", "", "One grid per case (its lowest finished seed):", ""] + lines) if lines else []
