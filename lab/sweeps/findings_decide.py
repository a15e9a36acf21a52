"""Deciding the findings (``lab.sweeps.findings`` writes them): each ``Finding`` of lab/sweeps/findings_table.py
against the published results with lab/core/stats.py: seed-paired t-intervals, Holm's correction over a finding's
contrasts, the smallest detectable difference D, a difference of differences, a bootstrap interval for a
correlation (per loss kind), a slope from the quantizer bench, and two one-sided tests against a margin. A finding
whose compared runs (``rows_read``) have not all finished or have too few seeds is incomplete, never decided from
part of them. -> ``Decision``s.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lab.core import stats
from lab.core.numfmt import fmt_auto
from lab.runtime.files import read_data
from lab.sweeps.findings_data import (cell, group_text, groups, loss_kind_of, matches, num, preset_of, read_rows,
                                      suite_incomplete)
from lab.sweeps.findings_table import BENCH, FINDINGS, LADDER, Contrast, Finding

ALPHA, POWER = stats.ALPHA, stats.POWER
REPRODUCED, CONTRADICTED, UNDECIDED = "reproduced", "contradicted", "undecided"


@dataclass
class Outcome:
    """One contrast in one group (a value of its ``within`` columns, or a loss kind), decided."""
    contrast: Contrast
    group: str
    n: int = 0
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None
    p_holm: float | None = None
    d: float | None = None               # smallest detectable difference (or |r|) at alpha / k
    exact: bool = False                  # identical in every run: no sampling variation to bound
    means: tuple[float | None, float | None] = (None, None)   # case, baseline (paired / within)
    verdict: str = UNDECIDED
    note: str = ""
    sd: float | None = None              # sd of the per-seed contrasts (D is computed from it once k is known)
    points: list[tuple[float, float]] = field(default_factory=list)   # correlation: (x, y) per run
    groups: list[Any] = field(default_factory=list)   # correlation: each run's sweep point (its model size)
    level: float = 1 - ALPHA             # of the interval ``ci``: the one the verdict used
    interval: str = ""                   # how ``ci`` was adjusted: "Holm", "Bonferroni", "TOST" ("" at 1 - alpha)
    df: float | None = None              # of the t-interval (to move it to Holm's level)
    equivalence: stats.Equivalence | None = None   # kind "equivalence": the TOST against the margin


@dataclass
class Decision:
    finding: Finding
    incomplete: str = ""                 # why the suite cannot decide it yet ("" when it can)
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # contrasts whose cases are not in the suite's grid
    preset: str = ""                     # the suite's preset, from its report.md ("" when unknown)

    @property
    def verdict(self) -> str:
        if self.incomplete:
            return "incomplete"
        vs = [o.verdict for o in self.outcomes]
        if not vs:
            return "incomplete"
        if CONTRADICTED in vs:
            return CONTRADICTED if REPRODUCED not in vs else f"{CONTRADICTED} in part"
        return REPRODUCED if all(v == REPRODUCED for v in vs) else UNDECIDED


# ------------------------------------------------------------------------------------------- deciding
def _outcomes(c: Contrast, rows: Sequence[Mapping[str, str]], suite: str) -> tuple[list[Outcome], str]:
    """The contrast's estimates before Holm (verdicts come later) and, when its cases are absent, why."""
    rows = [r for r in rows if matches(r, c.where)]
    if c.kind == "correlation":
        out, why = [], []
        for kind, group in loss_kind_of(rows, suite).items():
            runs = [(num(r.get(c.other)), num(r.get(c.metric)), r.get("point")) for r in group if r.get("status") == "done"]
            runs = [t for t in runs if t[0] is not None and t[1] is not None]
            pts = [(t[0], t[1]) for t in runs]
            r = stats.pearson(*zip(*pts)) if len(pts) >= 3 else None
            if r is None:
                why.append(f"{kind}: r undefined over {len(pts)} runs (fewer than 3, or one variable constant)")
                continue
            # the interval comes in _decide: its level depends on how many correlations the finding has
            out.append(Outcome(c, kind, n=len(pts), estimate=r, points=pts, groups=[t[2] for t in runs]))
        return out, "; ".join(why)
    out = []
    for g in groups(rows, c.within):
        if c.kind == "within":
            a, b = cell(rows, c.metric, **g), cell(rows, c.other, **g)
            diffs, dropped = stats.pair_by_seed(a, b)
        elif c.kind in ("paired", "equivalence"):
            (case, base), why = _values(rows, c)
            if why:
                return [], why
            a = cell(rows, c.metric, **g, **{c.axis: case})
            b = cell(rows, c.other or c.metric, **g, **{c.axis: base})  # `other`: a cross-metric contrast (F9)
            diffs, dropped = stats.pair_by_seed(a, b)
        else:  # dod over the smallest and largest value of `over`
            sizes = sorted({str(r.get(c.over, "")) for r in rows}, key=lambda s: LADDER.index(s) if s in LADDER else len(LADDER))
            if len(sizes) < 2:
                continue
            lo, hi = sizes[0], sizes[-1]
            cells = [cell(rows, c.metric, **g, **{c.axis: v, c.over: s}) for s in (hi, lo) for v in (c.case, c.baseline)]
            if not all(cells):
                continue
            est = stats.difference_of_differences(*cells)
            o = Outcome(c, group_text({**g, c.over: f"{lo} → {hi}"}), n=est.n, estimate=est.estimate, ci=est.ci,
                        p=est.p, exact=est.sd == 0, sd=est.sd, df=est.df)
            out.append(o)
            continue
        if not a or not b:
            continue
        est = stats.t_interval(diffs, 1 - ALPHA, dropped)
        mean = lambda d: sum(d.values()) / len(d) if d else None  # noqa: E731
        o = Outcome(c, group_text(g), n=est.n, estimate=est.estimate, ci=est.ci, p=est.p, exact=est.sd == 0,
                    means=(mean(a), mean(b)), note=f"{dropped} unpaired seed(s) dropped" if dropped else "", sd=est.sd,
                    df=est.df)
        if c.kind == "equivalence":
            margin = c.margin * abs(o.means[1]) if c.margin_of_baseline else c.margin
            o.equivalence = stats.tost(diffs, margin, ALPHA, dropped)
            o.estimate, o.ci, o.level, o.interval, o.p = o.equivalence.estimate, o.equivalence.ci, o.equivalence.level, "TOST", None
            o.note = "; ".join(x for x in (o.note, margin_text(c, margin, o.means[1])) if x)
        o.note = "; ".join(x for x in (o.note, _shown(rows, c, g)) if x)
        out.append(o)
    why = "" if out else (f"{c.case} / {c.baseline} not both in the results" if c.kind != "within"
                          else f"no runs with {c.metric} and {c.other}")
    return out, why


def rows_read(finding: Finding, rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The rows of a suite's results that the finding's contrasts compare, finished or not: a paired, equivalence
    or difference-of-differences contrast reads its ``case`` and ``baseline`` values of ``axis`` (within its
    ``where``; a difference of differences at every value of ``over``, though it compares the smallest and the
    largest: it waits for the whole ladder); a within or correlation contrast every row its ``where`` keeps. A
    finding is decided once these are finished with every seed the suite declares (the suite's other cases answer
    other questions: F1 compares the BSQ vocabularies, not VQ, LFQ and FSQ), never from part of them."""
    keep: set[int] = set()
    for c in finding.contrasts:
        mine = [r for r in rows if matches(r, c.where)]
        if c.kind in ("paired", "equivalence", "dod"):
            (case, base), why = _values(mine, c)
            if not why:
                mine = [r for r in mine if str(r.get(c.axis, "")) in (case, base)]
        keep.update(id(r) for r in mine)
    return [r for r in rows if id(r) in keep]


def _values(rows: Sequence[Mapping[str, str]], c: Contrast) -> tuple[tuple[str, str], str]:
    """The ``axis`` values that ``case`` and ``baseline`` name (each may be an fnmatch pattern matching one value,
    e.g. ``vq-*`` for ``vq-2^12`` at cpu scale and ``vq-2^16`` on GPUs); a non-empty reason when one is ambiguous."""
    present = list(dict.fromkeys(str(r.get(c.axis, "")) for r in rows))
    out = []
    for pattern in (c.case, c.baseline):
        hits = [v for v in present if v == pattern] or [v for v in present if fnmatch.fnmatchcase(v, pattern)]
        if len(hits) > 1:
            return ("", ""), f"{c.axis} = {pattern} matches {', '.join(hits)}: name one"
        out.append(hits[0] if hits else pattern)
    return (out[0], out[1]), ""


def _shown(rows: Sequence[Mapping[str, str]], c: Contrast, g: Mapping[str, str]) -> str:
    """The means of ``c.show``'s metrics in the case and the baseline cell (context printed beside the verdict)."""
    if not c.show:
        return ""
    (case, base), why = _values(rows, c)
    parts = []
    for m in c.show:
        for v in (case, base):
            x = cell(rows, m, **g, **{c.axis: v})
            if x:
                parts.append(f"{v}: {m} = {fmt_auto(sum(x.values()) / len(x), 3)}")
    return ", ".join(parts)


def margin_text(c: Contrast, margin: float, baseline_mean: float | None) -> str:
    """The equivalence margin as the FINDINGS state it."""
    text = f"equivalence margin ±{fmt_auto(margin, 3)} {c.metric}"
    if c.margin_of_baseline:
        text += f" = {100 * c.margin:g} % of {c.baseline}'s mean {c.metric} ({fmt_auto(baseline_mean, 3)})"
    return text


def _slope_outcome(c: Contrast, doc: Mapping) -> tuple[list[Outcome], str]:
    """Least-squares growth of log2(peak MiB) per bit for ``case`` minus ``baseline`` over the bench rows that
    ran, with Welch's t-interval from the two slopes' standard errors."""
    from scipy import stats as sps

    fits = {}
    for q in (c.case, c.baseline):
        pts = [(float(r["bits"]), math.log2(float(r[c.metric]))) for r in doc.get("rows", [])
               if r.get("quantizer") == q and r.get("status") == "ok" and num(r.get(c.metric))]
        if len(pts) < 3:
            return [], f"fewer than 3 measured bit widths for {q}"
        fit = sps.linregress(*zip(*pts))
        fits[q] = (fit.slope, fit.stderr, len(pts) - 2, pts)
    (s1, e1, df1, p1), (s2, e2, df2, p2) = fits[c.case], fits[c.baseline]
    est, se = s1 - s2, math.hypot(e1, e2)
    lost = [f"{r['bits']} bits: {r['status']}" for r in doc.get("rows", []) if r.get("quantizer") == c.case and r.get("status") != "ok"]
    note = (f"{c.case} ×{2 ** s1:.2f} per added bit over {int(p1[0][0])}-{int(p1[-1][0])} bits, {c.baseline} ×{2 ** s2:.3f} "
            f"over {int(p2[0][0])}-{int(p2[-1][0])}; {c.case} beyond: " + (", ".join(lost) or "none"))
    if se == 0:
        return [Outcome(c, "", n=len(p1) + len(p2), estimate=est, ci=(est, est), p=0.0 if est else 1.0, exact=True, note=note)], ""
    df = se ** 4 / (e1 ** 4 / df1 + e2 ** 4 / df2)
    half = sps.t.ppf(1 - ALPHA / 2, df) * se
    o = Outcome(c, "", n=len(p1) + len(p2), estimate=est, ci=(est - half, est + half),
                p=float(2 * sps.t.sf(abs(est) / se, df)), note=note, df=df)
    o.d = (sps.t.ppf(1 - ALPHA / 2, df) + sps.t.ppf(POWER, df)) * se  # D from the t quantiles at the slope difference's df
    return [o], ""


def _decide(outcomes: list[Outcome]) -> None:
    """Holm over the finding's comparisons with a p-value, each interval moved to the level of its Holm step
    (``stats.holm_levels``: it excludes 0 exactly when Holm rejects); D at alpha / k; bootstrap intervals for
    correlations at level 1 - alpha / k (Bonferroni: a percentile interval has no p-value to step down); an
    equivalence by its own TOST at alpha (a different hypothesis, outside the directional contrasts' family)."""
    for o in outcomes:
        if o.equivalence is not None:
            e = o.equivalence
            o.verdict = REPRODUCED if e.equivalent else CONTRADICTED if e.different else UNDECIDED
    tests = [o for o in outcomes if o.contrast.kind not in ("correlation", "equivalence")]
    adjusted = stats.holm([o.p for o in tests])
    levels = stats.holm_levels([o.p for o in tests], ALPHA)
    k_t = sum(o.p is not None for o in tests)
    for o, p, level in zip(tests, adjusted, levels):
        o.p_holm = p
        if level is not None and not o.exact:
            o.ci = stats.rescale_interval(o.estimate, o.ci, o.df, 1 - ALPHA, level)
            o.level, o.interval = level, "Holm"
        if o.sd is not None and o.n >= 2:
            o.d = stats.min_detectable_difference(o.sd, o.n, ALPHA / max(1, k_t))
        sign = o.contrast.paper_sign
        if o.ci is not None and p is not None and p < ALPHA and (o.ci[0] > 0 or o.ci[1] < 0):
            o.verdict = REPRODUCED if (o.estimate > 0) == (sign > 0) else CONTRADICTED
        else:
            o.verdict = UNDECIDED
        if o.n < 2 and not o.exact:
            o.note = ", ".join(x for x in (o.note, "one pair: no interval") if x)
    corr = [o for o in outcomes if o.contrast.kind == "correlation"]
    for o in corr:
        from scipy import stats as sps

        level = 1 - ALPHA / max(1, len(corr))
        xs, ys = zip(*o.points)
        c = stats.bootstrap_correlation(xs, ys, level=level, groups=o.groups or None)
        o.ci, o.level, o.interval = c.ci, level, "Bonferroni" if len(corr) > 1 else ""
        o.note = (f"{c.n_boot:,} bootstrap resamples of the runs within each sweep point (the sizes are the design, "
                  f"the seeds the randomness), {100 * level:.4g} % interval (Bonferroni over {len(corr)})"
                  if c.ci is not None else "one run per sweep point: no seed variation to resample, no interval")
        if o.n > 3:  # |r| a test at alpha / k detects with 80 % power (Fisher's z)
            o.d = math.tanh((sps.norm.ppf(1 - ALPHA / len(corr) / 2) + sps.norm.ppf(POWER)) / math.sqrt(o.n - 3))
        if o.ci is not None and (o.ci[0] > 0 or o.ci[1] < 0):
            o.verdict = REPRODUCED if (o.ci[0] > 0) == (o.contrast.paper_sign > 0) else CONTRADICTED


def decide(finding: Finding, results: Path) -> Decision:
    """A finding's decision from the published results under ``results``."""
    dec = Decision(finding)
    if finding.suite == BENCH:
        path = results / "bench" / "quantizers.json"
        if not path.is_file():
            dec.incomplete = f"no {path.relative_to(results.parent) if results.parent in path.parents else path}: run `make bench`"
            return dec
        doc = read_data(path)
        if doc.get("header", {}).get("quick"):
            dec.incomplete = "the bench was run with --quick (tiny sizes): run the full `make bench`"
            return dec
        for c in finding.contrasts:
            outs, why = _slope_outcome(c, doc)
            dec.outcomes += outs
            if why:
                dec.incomplete = why
        _decide(dec.outcomes)
        return dec
    path = results / finding.suite / "results.csv"
    if not path.is_file():
        dec.incomplete = f"not yet run (no results/{finding.suite}/results.csv)"
        return dec
    columns, rows = read_rows(path)
    dec.preset = preset_of(path.parent / "report.md")
    read = rows_read(finding, rows)
    dec.incomplete = suite_incomplete(columns, read, finding.stage, of=len(read) < len(rows))
    if dec.preset == "smoke":  # a pipeline check (a few steps, 16 samples), never a result
        dec.incomplete = "; ".join(x for x in ("published from a preset=smoke run", dec.incomplete) if x)
    if dec.incomplete:
        return dec
    for c in finding.contrasts:
        outs, why = _outcomes(c, rows, finding.suite)
        dec.outcomes += outs
        if why:
            dec.skipped.append(f"{c.label}: {why}")
    if not dec.outcomes:
        dec.incomplete = "none of its comparisons is in the suite's grid (" + "; ".join(dec.skipped) + ")"
        return dec
    _decide(dec.outcomes)
    return dec


def decide_all(results: Path, findings: Sequence[Finding] = FINDINGS) -> list[Decision]:
    return [decide(f, Path(results)) for f in findings]
