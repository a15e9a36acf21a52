"""``python -m lab findings [--results results] [--out results/FINDINGS.md]``: the findings table, computed.

Reads every suite's published results (``results/<suite>/results.csv``, written by ``python -m lab report
ablations/<suite> --out results/<suite>``) and the quantizer bench (``results/bench/quantizers.json``), and
decides each finding of ``lab/sweeps/findings_table.py`` with ``lab/core/stats.py``: seed-paired t-intervals, Holm's
correction over a finding's comparisons, the smallest detectable difference D, a difference of differences for
an interaction, a percentile-bootstrap interval for a correlation (per loss kind). A suite that has not finished,
has fewer than 3 seeds, or predates the evaluation protocol of issue 13 is reported as incomplete, never decided
from part of it. Light at import (the CLI registers it at start-up): scipy and numpy load when it runs.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from lab.sweeps.findings_table import BENCH, FINDINGS, LADDER, MIN_SEEDS, PROTOCOL_COLUMNS, Contrast, Finding
from lab.core import stats
from lab.core.numfmt import decimals_for, fmt, fmt_auto, fmt_p
from lab.core.registry import ConfigError
from lab.runtime.files import read_data

ALPHA, POWER = 0.05, 0.8  # as lab/core/stats.py (not imported here: the CLI's start-up stays free of it)
ROOT = Path(__file__).resolve().parents[2]  # the repository root (as lab/runtime/files.py; not imported: start-up stays light)
# A run that ended in a recorded failure (out of memory, a diverging loss) is a result of its grid point; a run
# with any other status has not finished.
FAILED_STATUSES = ("out_of_memory", "non_finite_loss")
LOSS_KINDS = {"bitwise": "bit BCE (bitwise head)", "index": "index cross-entropy (index head)"}
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
    level: float = 1 - ALPHA             # of the interval (a correlation's is Bonferroni-widened)


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


# ------------------------------------------------------------------------------------------- reading
def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def num(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def suite_incomplete(columns: Sequence[str], rows: Sequence[Mapping[str, str]], stage: str) -> str:
    """Why a suite's results cannot decide a finding yet ("" when they can): runs not finished, fewer than
    ``MIN_SEEDS`` seeds in a case, or results from before the evaluation protocol."""
    reasons = []
    done = [r for r in rows if r.get("status") == "done"]
    need = PROTOCOL_COLUMNS.get(stage, ())
    lacking = [c for c in need if c not in columns or any(num(r.get(c)) is None for r in done)]
    if lacking:
        reasons.append(f"not yet rerun under the protocol (no {' / '.join(lacking)} in its results: they predate "
                       "issue 13's evaluation)")
    unfinished = [r for r in rows if r.get("status") not in ("done", *FAILED_STATUSES)]
    if unfinished:
        reasons.append(f"{len(unfinished)} of {len(rows)} runs not finished")
    seeds: dict[str, set] = {}
    for r in done:
        seeds.setdefault(r["point"], set()).add(r["seed"])
    fewest = min((len(s) for s in seeds.values()), default=0)
    if fewest < MIN_SEEDS:
        reasons.append(f"{fewest} seed{'s' if fewest != 1 else ''} in its smallest case (< {MIN_SEEDS})")
    return "; ".join(reasons)


def preset_of(report: Path) -> str:
    """The preset a published report names (``Preset `cpu`.``, lab/sweeps/report.py); "" without one."""
    import re

    if not report.is_file():
        return ""
    m = re.search(r"Preset `([\w-]+)`", report.read_text())
    return m.group(1) if m else ""


def _matches(row: Mapping[str, str], where: Mapping[str, str]) -> bool:
    return all(fnmatch.fnmatchcase(str(row.get(k, "")), pattern) for k, pattern in where.items())


def _cell(rows: Sequence[Mapping[str, str]], metric: str, **fixed: str) -> dict[int, float]:
    """{seed: value} of ``metric`` over the finished rows whose columns equal ``fixed``."""
    out = {}
    for r in rows:
        if r.get("status") == "done" and all(str(r.get(k, "")) == v for k, v in fixed.items()):
            x = num(r.get(metric))
            if x is not None:
                out[int(r["seed"])] = x
    return out


def _groups(rows: Sequence[Mapping[str, str]], within: Sequence[str]) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    for r in rows:
        g = {c: str(r.get(c, "")) for c in within}
        if g not in seen:
            seen.append(g)
    return seen


def _group_text(g: Mapping[str, str]) -> str:
    return ", ".join(f"{k} = {v}" if k != "case" else v for k, v in g.items())


def loss_kind_of(rows: Sequence[Mapping[str, str]], suite: str) -> dict[str, list[Mapping[str, str]]]:
    """Runs grouped by the loss their validation loss is (bit BCE or index cross-entropy): by the ``head.name``
    column where the suite sweeps the head, else by the head its YAML (or ``base.yaml``) sets for every run."""
    if any(r.get("head.name") for r in rows):
        out: dict[str, list] = {}
        for r in rows:
            out.setdefault(LOSS_KINDS.get(r["head.name"], f"{r['head.name']} head"), []).append(r)
        return out
    head = _yaml_head(ROOT / "experiments" / "ablations" / f"{suite}.yaml") or _yaml_head(ROOT / "experiments" / "base.yaml")
    return {LOSS_KINDS.get(head or "", f"{head or 'unknown'} head"): list(rows)}


def _yaml_head(path: Path) -> str | None:
    if not path.is_file():
        return None
    node = read_data(path).get("head") or {}
    return node.get("name") if isinstance(node, dict) else None


# ------------------------------------------------------------------------------------------- deciding
def _outcomes(c: Contrast, rows: Sequence[Mapping[str, str]], suite: str) -> tuple[list[Outcome], str]:
    """The contrast's estimates before Holm (verdicts come later) and, when its cases are absent, why."""
    rows = [r for r in rows if _matches(r, c.where)]
    if c.kind == "correlation":
        out, why = [], []
        for kind, group in loss_kind_of(rows, suite).items():
            pts = [(num(r.get(c.other)), num(r.get(c.metric))) for r in group if r.get("status") == "done"]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            r = stats.pearson(*zip(*pts)) if len(pts) >= 3 else None
            if r is None:
                why.append(f"{kind}: r undefined over {len(pts)} runs (fewer than 3, or one variable constant)")
                continue
            # the interval comes in _decide: its level depends on how many correlations the finding has
            out.append(Outcome(c, kind, n=len(pts), estimate=r, points=pts))
        return out, "; ".join(why)
    out = []
    for g in _groups(rows, c.within):
        if c.kind == "within":
            a, b = _cell(rows, c.metric, **g), _cell(rows, c.other, **g)
            diffs, dropped = stats.pair_by_seed(a, b)
        elif c.kind == "paired":
            a = _cell(rows, c.metric, **g, **{c.axis: c.case})
            b = _cell(rows, c.metric, **g, **{c.axis: c.baseline})
            diffs, dropped = stats.pair_by_seed(a, b)
        else:  # dod over the smallest and largest value of `over`
            sizes = sorted({str(r.get(c.over, "")) for r in rows}, key=lambda s: LADDER.index(s) if s in LADDER else len(LADDER))
            if len(sizes) < 2:
                continue
            lo, hi = sizes[0], sizes[-1]
            cells = [_cell(rows, c.metric, **g, **{c.axis: v, c.over: s}) for s in (hi, lo) for v in (c.case, c.baseline)]
            if not all(cells):
                continue
            est = stats.difference_of_differences(*cells)
            o = Outcome(c, _group_text({**g, c.over: f"{lo} → {hi}"}), n=est.n, estimate=est.estimate, ci=est.ci,
                        p=est.p, exact=est.sd == 0, sd=est.sd)
            out.append(o)
            continue
        if not a or not b:
            continue
        est = stats.t_interval(diffs, 1 - ALPHA, dropped)
        mean = lambda d: sum(d.values()) / len(d) if d else None  # noqa: E731
        o = Outcome(c, _group_text(g), n=est.n, estimate=est.estimate, ci=est.ci, p=est.p, exact=est.sd == 0,
                    means=(mean(a), mean(b)), note=f"{dropped} unpaired seed(s) dropped" if dropped else "", sd=est.sd)
        out.append(o)
    why = "" if out else (f"{c.case} / {c.baseline} not both in the results" if c.kind != "within"
                          else f"no runs with {c.metric} and {c.other}")
    return out, why


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
                p=float(2 * sps.t.sf(abs(est) / se, df)), note=note)
    o.d = (sps.t.ppf(1 - ALPHA / 2, df) + sps.t.ppf(POWER, df)) * se  # D from the t quantiles at the slope difference's df
    return [o], ""


def _decide(outcomes: list[Outcome]) -> None:
    """Holm over the finding's comparisons with a p-value; D at alpha / k; bootstrap intervals for correlations
    at level 1 - alpha / k (Bonferroni: a percentile interval has no p-value to step down)."""
    tests = [o for o in outcomes if o.contrast.kind != "correlation"]
    adjusted = stats.holm([o.p for o in tests])
    k_t = sum(o.p is not None for o in tests)
    for o, p in zip(tests, adjusted):
        o.p_holm = p
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
        c = stats.bootstrap_correlation(xs, ys, level=level)
        o.ci, o.level = c.ci, level
        o.note = f"{c.n_boot:,} bootstrap resamples, {100 * level:.4g} % interval (Bonferroni over {len(corr)})"
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
    dec.incomplete = suite_incomplete(columns, rows, finding.stage)
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


# ------------------------------------------------------------------------------------------- writing
def command(f: Finding, results: str = "results") -> str:
    if f.suite == BENCH:
        return f"`python -m lab bench --only quantizers --out {results}/bench` (part of `make bench`)"
    return (f"`python -m lab run ablations/{f.suite}` then "
            f"`python -m lab report ablations/{f.suite} --out {results}/{f.suite}`")


def effect_text(o: Outcome) -> str:
    vals = [o.estimate, *(o.ci or ())]
    dec = decimals_for(vals, 3)
    signed = lambda x: ("+" if x is not None and x > 0 else "") + fmt(x, dec)  # noqa: E731
    what = "r = " if o.contrast.kind == "correlation" else ""
    text = f"{what}{signed(o.estimate)}"
    if o.exact:
        text += f" (identical in all {o.n} runs)" if o.contrast.kind != "slope" else " (exact fit)"
    elif o.ci:
        text += f" [{signed(o.ci[0])}, {signed(o.ci[1])}]"
        if abs(o.level - (1 - ALPHA)) > 1e-9:
            text += f" ({100 * o.level:.4g} % interval)"
    else:
        text += " (no interval)"
    return text


def verdict_text(o: Outcome) -> str:
    if o.verdict == UNDECIDED and o.d is not None:
        return f"undecided, D = {fmt_auto(o.d, 2)}"
    return o.verdict


def markdown(decisions: Sequence[Decision], results: str = "results") -> str:
    lines = [
        "# Findings", "",
        "Generated by `python -m lab findings` from `results/<suite>/results.csv` (each written by "
        "`python -m lab report ablations/<suite> --out results/<suite>`) and `results/bench/quantizers.json` "
        "(`make bench`); the findings and their contrasts are declared in `lab/sweeps/findings_table.py`. Do not edit: "
        "rerun the command.", "",
        "How a verdict is computed: each contrast is an effect with a 95 % interval — a seed-paired t-interval "
        "(case − baseline over the seeds both have), a difference of differences paired by seed (F4), Pearson r "
        "with a percentile bootstrap over runs, per loss kind (F7; with several correlations the interval is "
        "widened to 1 − α / k, Bonferroni), or a least-squares slope (F2). With several "
        f"contrasts in a finding, p-values are Holm-adjusted over them. **reproduced**: adjusted p < {ALPHA:g} "
        "and the interval lies on the paper's side of 0; **contradicted**: it lies on the other side (the "
        "interval excludes the paper's direction); **undecided**: the interval contains 0, with D, the smallest "
        f"true effect the test detects with {POWER:.0%} power at α / k from the observed spread. A finding is "
        "reproduced when all its contrasts are. **incomplete**: its suite has runs not finished, fewer than "
        f"{MIN_SEEDS} seeds, or results from before the evaluation protocol of issue 13 (no KID / normalized "
        "gFID): it is not decided from part of its results.", "",
        "| # | finding | paper (source) | bitlab: effect [95 % CI] | verdict | suite | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in decisions:
        f = d.finding
        if d.incomplete:
            effect, verdict = "—", f"**incomplete**: {d.incomplete}"
        else:
            effect = "<br>".join(f"{o.contrast.label}{' (' + o.group + ')' if o.group else ''}: {effect_text(o)}"
                                 + (f" ({o.note.split(';')[0]})" if o.contrast.kind == "slope" else "")
                                 for o in d.outcomes)
            verdict = f"**{d.verdict}**" + "".join(f"<br>{o.contrast.label}{' (' + o.group + ')' if o.group else ''}: "
                                                    f"{verdict_text(o)}" for o in d.outcomes if len(d.outcomes) > 1)
            if len(d.outcomes) == 1:
                verdict = f"**{d.verdict}**" + (f" (D = {verdict_text(d.outcomes[0]).split('D = ')[1]})"
                                                 if "D = " in verdict_text(d.outcomes[0]) else "")
        suite = "`make bench` (quantizers)" if f.suite == BENCH else f"[`{f.suite}`]({f.suite}/report.md)"
        lines.append(f"| {f.id} | {f.title} | {f.paper} ({f.source}) | {effect} | {verdict} | {suite} | {command(f, results)} |")
    lines += ["", "## Details", ""]
    for d in decisions:
        f = d.finding
        lines += [f"### {f.id}: {f.title} ({f.source})", "", f"Paper: {f.paper}.", ""]
        if f.note:
            lines += [f"Here: {f.note}.", ""]
        lines += [f"Reproduce: {command(f, results)}, then `python -m lab findings`."
                  + (f" The published results are preset `{d.preset}`." if d.preset else ""), ""]
        if d.incomplete:
            lines += [f"**Incomplete**: {d.incomplete}. Not decided.", ""]
            continue
        lines += ["| contrast | within | n | case | baseline | effect [95 % CI] | paper's sign | Holm p | verdict | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for o in d.outcomes:
            dec = decimals_for([m for m in o.means if m is not None], 4)
            lines.append("| " + " | ".join([
                o.contrast.label, o.group or "—", str(o.n), fmt(o.means[0], dec) or "—", fmt(o.means[1], dec) or "—",
                effect_text(o), "> 0" if o.contrast.paper_sign > 0 else "< 0",
                fmt_p(o.p_holm) if o.contrast.kind != "correlation" else "—", verdict_text(o), o.note or ""]) + " |")
        lines.append("")
        if d.skipped:
            lines += ["Not in this grid: " + "; ".join(d.skipped) + ".", ""]
    return "\n".join(lines)


def write_findings(results: Path, out: Path | None = None) -> Path:
    results = Path(results)
    out = Path(out) if out is not None else results / "FINDINGS.md"
    decisions = decide_all(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(decisions))
    print(f"[findings] {out}: " + ", ".join(f"{d.finding.id} {d.verdict}" for d in decisions))
    return out


def cmd_findings(args: argparse.Namespace) -> None:
    results = Path(args.results)
    if not results.is_dir():
        raise ConfigError(f"--results {args.results}: not a directory; it should hold results/<suite>/results.csv "
                          "(e.g. the repository's results/).")
    write_findings(results, Path(args.out) if args.out else None)


def register(sub) -> None:
    p = sub.add_parser("findings", help="decide the paper findings from results/ -> results/FINDINGS.md (no training)")
    p.add_argument("--results", default=str(ROOT / "results"), help="the published results (default results/)")
    p.add_argument("--out", default=None, help="where to write (default <results>/FINDINGS.md)")
    p.set_defaults(func=cmd_findings)
