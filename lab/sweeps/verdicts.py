"""Computed verdicts for a sweep: every case against the suite's baseline, paired by seed (``lab/core/stats.py``).

A suite names its baseline under ``report:``::

    report: {baseline: none}                          # a case label of the `cases:` axis
    report: {baseline: {generator.order: scale}}      # axis -> value (a `cases:` axis is the column `case`)
    report: {baseline: {head.name: index}}            # fixes some axes only: each point is compared with the
                                                      # baseline point that shares its other axes' values

A value may be written as in the sweep (``{quantizer: {name: bsq, bits: 16}}``) or as its column value
(``bsq-16``). The axes a baseline leaves free group the comparisons: with ``{head.name: index}`` and a
quantizer `cases:` axis, ``bitwise`` is compared with ``index`` within each quantizer.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lab.core.numfmt import as_number, decimals_for, fmt, fmt_p, short_value
from lab.core.registry import ConfigError
from lab.core.stats import ALPHA, DIRECTION_NAMES, HIGHER, LOWER, Comparison, compare, direction

CASE = "case"
REPORT_KEYS = ("metrics", "plots", "baseline", "verdict_metrics", "directions")
# report.verdict_metrics when a suite names none (those present in its results are used)
DEFAULT_VERDICT_METRICS = {"generator": ("gfid", "kid"), "tokenizer": ("psnr", "rfid")}


def parse_baseline(spec: Any, points: Sequence[Mapping[str, Any]], where: str = "report.baseline") -> dict[str, str] | None:
    """``report.baseline`` -> {column: column value} checked against the grid (``points``: each point's column
    values, e.g. ``Point.values``). None when no baseline is named. An unknown case, axis or value is a
    ConfigError naming the valid ones."""
    if spec is None:
        return None
    axes: dict[str, list[str]] = {}
    for p in points:
        for col, v in p.items():
            vals = axes.setdefault(col, [])
            if short_value(v) not in vals:
                vals.append(short_value(v))
    if isinstance(spec, str):
        if CASE not in axes:
            raise ConfigError(
                f"{where}: '{spec}' names a case, but this sweep has no `cases:` axis; name an axis value instead, "
                f"e.g. {{{next(iter(axes), 'axis')}: {next(iter(axes.values()), ['value'])[0]}}} (axes: "
                + "; ".join(f"{a}: {', '.join(v)}" for a, v in axes.items()) + ").")
        spec = {CASE: spec}
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{where} must be a case label or a non-empty mapping {{axis: value}}, got {spec!r}.")
    out: dict[str, str] = {}
    for col, value in spec.items():
        if col not in axes:
            raise ConfigError(f"{where}: '{col}' is not an axis of this sweep; the axes are "
                              f"{', '.join(axes) or 'none'} (a `cases:` axis is `{CASE}`).")
        if short_value(value) not in axes[col]:
            what = "case" if col == CASE else f"value of {col}"
            raise ConfigError(f"{where}: unknown {what} {value!r}; the valid ones are {', '.join(axes[col])}.")
        out[col] = short_value(value)
    return out


def check_report_node(report: Mapping[str, Any]) -> None:
    """Keys and directions of a suite's ``report:`` node (before anything trains)."""
    for key in report:
        if key not in REPORT_KEYS:
            raise ConfigError(f"Unknown key 'report.{key}'; the report node takes {', '.join(REPORT_KEYS)}.")
    for metric, d in (report.get("directions") or {}).items():
        if str(d) not in DIRECTION_NAMES:
            raise ConfigError(f"report.directions.{metric}: '{d}' is not one of {', '.join(DIRECTION_NAMES)}.")


@dataclass(frozen=True)
class MetricVerdicts:
    metric: str
    sign: int
    comparisons: list[Comparison]
    groups: list[dict[str, str]]      # per comparison: the free axes' values it was compared within


def _value(row: Mapping, metric: str) -> float | None:
    return as_number(row.get(metric))


def _points(rows: Sequence[Mapping], axes: Sequence[str]) -> dict[str, dict[str, str]]:
    """{point label: its axis values} of results rows, in their order."""
    points: dict[str, dict[str, str]] = {}
    for r in rows:
        points.setdefault(str(r["point"]), {a: short_value(r.get(a, "")) for a in axes})
    return points


def baseline_of(rows: Sequence[Mapping], axes: Sequence[str], baseline: Mapping[str, str]) -> dict[str, str]:
    """{point: the baseline point it is compared with}: the point with the baseline's values on the axes it fixes
    and the case's own on the others (points that are a baseline, or have none in the grid, are left out)."""
    points = _points(rows, axes)
    base_of: dict[str, str] = {}
    for label, vals in points.items():
        if all(vals[a] == v for a, v in baseline.items()):
            continue
        target = {**vals, **baseline}
        match = [lb for lb, vv in points.items() if vv == target]
        if match:
            base_of[label] = match[0]
    return base_of


def comparisons(rows: Sequence[Mapping], axes: Sequence[str], baseline: Mapping[str, str], metrics: Sequence[str],
                directions: Mapping[str, str] | None = None, alpha: float = ALPHA) -> list[MetricVerdicts]:
    """The verdicts of every point against its baseline point, per metric (Holm over that metric's comparisons).

    ``rows``: results.csv rows (``point``, ``seed``, ``status``, the axis columns, the metrics); ``axes``: the
    sweep's columns; ``baseline``: from ``parse_baseline``. Runs that are not ``done`` or lack the metric are left
    out, so their seed counts as dropped from its pair."""
    free = [a for a in axes if a not in baseline]
    points = _points(rows, axes)
    base_of = baseline_of(rows, axes, baseline)
    out = []
    for metric in metrics:
        per_point: dict[str, dict[int, float]] = {label: {} for label in points}
        for r in rows:
            x = _value(r, metric) if r.get("status", "done") == "done" else None
            if x is not None:
                per_point[str(r["point"])][int(r["seed"])] = x
        if not any(per_point.values()):
            continue
        pairs = [(_fixed(points[label], baseline), per_point[label], _fixed(points[b], baseline), per_point[b])
                 for label, b in base_of.items()]
        sign = direction(metric, directions)
        out.append(MetricVerdicts(metric, sign, compare(metric, pairs, sign, alpha),
                                  [{a: points[label][a] for a in free} for label in base_of]))
    return out


def _fixed(values: Mapping[str, str], baseline: Mapping[str, str]) -> str:
    """A point named by the axes its baseline fixes: ``bitwise`` (one axis) or ``a=x, b=y``."""
    if len(baseline) == 1:
        return values[next(iter(baseline))]
    return ", ".join(f"{a}={values[a]}" for a in baseline)


def read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def verdicts_from_csv(path: Path, axes: Sequence[str], baseline: Any, metrics: Sequence[str],
                      directions: Mapping[str, str] | None = None) -> list[MetricVerdicts]:
    """``comparisons`` for a results.csv written by a sweep (``baseline`` as in the YAML)."""
    rows = read_results(Path(path))
    spec = parse_baseline(baseline, [{a: r.get(a, "") for a in axes} for r in rows])
    if spec is None:
        raise ConfigError("verdicts need a baseline (report.baseline).")
    return comparisons(rows, axes, spec, metrics, directions)


def verdict_text(c: Comparison, decimals: int) -> str:
    if c.verdict == "no difference detected" and c.mde is not None:
        return f"no difference detected, smallest detectable difference {fmt(c.mde, decimals)}"
    return c.verdict


def adjusted_interval_text(c: Comparison, decimals: int) -> str:
    """``[lo, hi] (97.5 %)``: the Holm-adjusted interval the verdict used, with its level ("" without one)."""
    if c.ci_adjusted is None or c.level is None:
        return ""
    return f"[{fmt(c.ci_adjusted[0], decimals)}, {fmt(c.ci_adjusted[1], decimals)}] ({100 * c.level:.4g} %)"


def markdown(results: Sequence[MetricVerdicts], baseline: Mapping[str, str]) -> str:
    """The "Verdicts" section of a sweep report."""
    if not results:
        return ""
    base_text = ", ".join(f"{a} = {v}" if a != CASE else f"case {v}" for a, v in baseline.items())
    lines = [
        "## Verdicts", "",
        f"Every case against the baseline ({base_text}), paired by seed (a seed present in only one of the two runs "
        "is dropped and counted). Difference = case − baseline, mean over the n seed-paired differences; p from the "
        "paired t-test, Holm-adjusted over the k comparisons of each metric. The interval is the one the verdict "
        f"uses: the t-interval over the n differences at the level of the comparison's Holm step, 1 − {ALPHA:g} / m "
        "(m = k for the smallest p, as Bonferroni; m = k − r at rank r while Holm rejects, and the m of the step where "
        f"Holm stops for every comparison from there on; with k = 1 the plain 95 % interval). It excludes 0 exactly "
        f"when the adjusted p < {ALPHA:g}, and then the case is better / worse. Otherwise: "
        "no difference detected, with D, the smallest true difference a two-sided paired t-test detects with 80 % "
        "power at the observed sd of the paired differences and n seeds"
        f", at α = {ALPHA:g} / k (Holm's strictest step: what one real effect among k comparisons must pass).", ""]
    for mv in results:
        k = mv.comparisons[0].k if mv.comparisons else 0
        better = {HIGHER: "higher is better", LOWER: "lower is better"}.get(mv.sign, "no better side: higher / lower")
        lines += [f"**{mv.metric}** ({better}; Holm over {k} comparison{'s' if k != 1 else ''}; t-interval over n "
                  "seed-paired differences)", ""]
        free = list(mv.groups[0]) if mv.groups else []
        head = [", ".join(baseline), "baseline", *(f"within {a}" for a in free), "n pairs", "difference",
                "Holm-adjusted CI (level)", "Holm p", "verdict"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        dec = decimals_for([c.test.estimate for c in mv.comparisons]
                           + [x for c in mv.comparisons if c.ci_adjusted for x in c.ci_adjusted], 3)
        for c, group in zip(mv.comparisons, mv.groups):
            t = c.test
            n = f"{t.n}" + (f" ({t.dropped} dropped)" if t.dropped else "")
            ci = adjusted_interval_text(c, dec) or ("1 seed" if t.n == 1 else "—")
            diff = fmt(t.estimate, dec)
            if diff and t.estimate is not None and t.estimate > 0:
                diff = "+" + diff
            lines.append("| " + " | ".join([c.case, c.baseline, *[group[a] for a in free], n, diff, ci,
                                            fmt_p(c.p_holm), verdict_text(c, dec)]) + " |")
        lines.append("")
    return "\n".join(lines)
