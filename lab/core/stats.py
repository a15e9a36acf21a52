"""Statistics for computed verdicts: seed-paired differences with a t-interval, Holm's correction, the smallest
difference a paired t-test detects, a bootstrap interval for a correlation, and a difference of differences.

Pure numbers in, numbers out (numpy and scipy only): ``lab/sweeps/verdicts.py`` applies them to a suite's results and
the findings table reuses them. The paired t-test: Student (1908); Holm's step-down correction: Holm (1979),
"A simple sequentially rejective multiple test procedure"; power of the paired t-test from the noncentral t
distribution (Cohen 1988, ch. 2); the percentile bootstrap: Efron & Tibshirani (1993), ch. 13.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from lab.core.numfmt import as_number

ALPHA = 0.05
POWER = 0.8
HIGHER, LOWER, NEUTRAL = 1, -1, 0

# Which way is better, by metric name (fnmatch patterns, first match wins). A metric matching none has no
# direction: its verdict says "higher" / "lower" instead of "better" / "worse". A suite's
# `report.directions: {metric: higher|lower}` overrides this table. Counts, settings and spreads of the
# evaluation come first and have none, so that `*fid*` / `*kid*` never call `fid_samples` or `kid_std` better.
DIRECTIONS: tuple[tuple[str, int], ...] = (
    ("*accuracy_gap*", LOWER),          # teacher-forced minus free-running accuracy: the train-test discrepancy
    ("*_floor", NEUTRAL), ("*_ceiling", NEUTRAL),  # properties of the data and tokenizer, not of the method
    # counts and settings (fid_samples, kid_subsets, kid_subset_size, lpips_size, fid_reference.*) and the sd of
    # a KID over its subsets: how a number was measured, not how good the method is
    ("*_samples", NEUTRAL), ("*_subsets", NEUTRAL), ("*_size", NEUTRAL), ("*_std", NEUTRAL),
    ("fid_reference*", NEUTRAL), ("*.fid_reference*", NEUTRAL), ("*count*", NEUTRAL), ("*seed*", NEUTRAL),
    # clock figures (durations, step times, throughputs) of runs on a machine shared with other runs (issue 24
    # measured the same stage at 0.31 and 4.8 steps/s): a cost to report, not a verdict on the method; a speed
    # claim is decided where it is measured for it (F8's sampling speed with its explicit sign, the bench)
    ("*_time_s", NEUTRAL), ("*_ms", NEUTRAL), ("*_per_s", NEUTRAL), ("*load*", NEUTRAL),
    ("*normalized*", LOWER),            # (FID - floor) / (ceiling - floor), (KID - floor) / (ceiling - floor)
    ("*fid*", LOWER), ("*kid*", LOWER), ("*lpips*", LOWER),   # gfid, rfid, kid, rkid, lpips, baseline_lpips
    ("*loss*", LOWER), ("*memory*", LOWER),
    ("*psnr*", HIGHER), ("*ssim*", HIGHER), ("*accuracy*", HIGHER), ("*usage*", HIGHER),
    ("*entropy*", HIGHER), ("*perplexity*", HIGHER),
)
DIRECTION_NAMES = {"higher": HIGHER, "lower": LOWER, "none": NEUTRAL}


def direction(metric: str, overrides: Mapping[str, str] | None = None) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when the metric has no better side."""
    if overrides and metric in overrides:
        return DIRECTION_NAMES[str(overrides[metric])]
    for pattern, sign in DIRECTIONS:
        if fnmatch.fnmatchcase(metric, pattern):
            return sign
    return NEUTRAL


@dataclass(frozen=True)
class Estimate:
    """An effect with its t-interval. ``ci`` and ``p`` are None with fewer than 2 observations."""
    estimate: float | None
    sd: float | None          # sd of the per-seed contrasts (paired) or None (Welch)
    n: int                    # observations the interval is over (seed pairs, or the smallest cell for Welch)
    dropped: int              # seeds present in only some of the compared cells, left out
    df: float | None
    ci: tuple[float, float] | None
    p: float | None           # two-sided, against 0


def pair_by_seed(case: Mapping[int, float], baseline: Mapping[int, float]) -> tuple[list[float], int]:
    """Per-seed differences case - baseline over the seeds both have, and how many seeds only one of them has."""
    common = sorted(set(case) & set(baseline))
    return [float(case[s]) - float(baseline[s]) for s in common], len(set(case) ^ set(baseline))


def t_interval(values: Sequence[float], level: float = 1 - ALPHA, dropped: int = 0) -> Estimate:
    """Mean of ``values`` with a Student t-interval and the two-sided p-value of mean = 0 (one-sample t-test)."""
    from scipy import stats

    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Estimate(None, None, 0, dropped, None, None, None)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, None, 1, dropped, None, None, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    df = n - 1
    se = sd / math.sqrt(n)
    if se == 0:  # every contrast equal: the interval is the point and only a zero mean is "no difference"
        return Estimate(mean, 0.0, n, dropped, df, (mean, mean), 1.0 if mean == 0 else 0.0)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    p = 2 * stats.t.sf(abs(mean) / se, df)
    return Estimate(mean, sd, n, dropped, df, (mean - half, mean + half), float(p))


def paired_t(case: Mapping[int, float], baseline: Mapping[int, float], level: float = 1 - ALPHA) -> Estimate:
    """Paired t: the t-interval over the seed-paired differences case - baseline."""
    diffs, dropped = pair_by_seed(case, baseline)
    return t_interval(diffs, level, dropped)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted among the comparisons).

    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha over the k comparisons."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    k = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (k - rank) * float(pvalues[i])))
        out[i] = running
    return out


def holm_levels(pvalues: Sequence[float | None], alpha: float = ALPHA) -> list[float | None]:
    """Per comparison, the level 1 - alpha / m of the t-interval that agrees with Holm's decision: m = k - r for
    the comparison of rank r (0 = smallest p) while Holm rejects, and m = k - r* for every comparison from the
    first one it retains (rank r*) on, where Holm stops. So the interval excludes 0 exactly when Holm's
    adjusted p < alpha: a rejected comparison has p < alpha / (k - r); a retained one has p >= p_(r*) >=
    alpha / (k - r*). The first step's interval (m = k) is Bonferroni's; later steps are less strict, as Holm's
    are. None where the p-value is None."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    adjusted = holm(pvalues)
    k = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    stop: int | None = None
    for rank, i in enumerate(idx):
        if stop is None and adjusted[i] >= alpha:
            stop = rank
        out[i] = 1 - alpha / (k - (rank if stop is None else stop))
    return out


def rescale_interval(estimate: float | None, ci: tuple[float, float] | None, df: float | None, level_from: float,
                     level_to: float) -> tuple[float, float] | None:
    """A t-interval at ``level_from`` (centred on ``estimate`` with ``df`` degrees of freedom) as the interval of
    the same estimate and standard error at ``level_to``."""
    from scipy import stats

    if ci is None or estimate is None:
        return None
    half = (ci[1] - ci[0]) / 2
    if half == 0 or df is None or level_to == level_from:
        return ci
    half *= stats.t.ppf(0.5 + level_to / 2, df) / stats.t.ppf(0.5 + level_from / 2, df)
    return (estimate - half, estimate + half)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests of |mean| < margin (TOST; Schuirmann 1987) on paired differences.

    ``ci`` is the (1 - 2 alpha) t-interval (90 % at alpha 0.05): the means are shown equivalent exactly when it
    lies inside (-margin, margin), i.e. when both one-sided tests reject at alpha (``p`` is the larger of their
    p-values). ``different``: the same interval lies wholly outside [-margin, margin], a one-sided test at alpha
    that the difference exceeds the margin."""
    estimate: float | None
    ci: tuple[float, float] | None
    level: float
    margin: float
    n: int
    dropped: int
    p: float | None
    equivalent: bool
    different: bool


def tost(values: Sequence[float], margin: float, alpha: float = ALPHA, dropped: int = 0) -> Equivalence:
    """TOST of the mean of ``values`` (seed-paired differences) against the equivalence margin +-``margin``."""
    from scipy import stats

    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    level = 1 - 2 * alpha
    est = t_interval(values, level, dropped)
    if est.ci is None:
        return Equivalence(est.estimate, None, level, margin, est.n, dropped, None, False, False)
    lo, hi = est.ci
    se = est.sd / math.sqrt(est.n)
    if se == 0:
        p = 0.0 if abs(est.estimate) < margin else 1.0
    else:
        p_low = stats.t.sf((est.estimate + margin) / se, est.df)    # H0: mean <= -margin
        p_high = stats.t.cdf((est.estimate - margin) / se, est.df)  # H0: mean >= +margin
        p = float(max(p_low, p_high))
    return Equivalence(est.estimate, est.ci, level, margin, est.n, dropped, p,
                       equivalent=-margin < lo and hi < margin, different=lo > margin or hi < -margin)


def power_paired_t(difference: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that a two-sided paired t-test at ``alpha`` with ``n`` pairs rejects when the true mean
    difference is ``difference`` and the sd of the paired differences is ``sd``: the noncentral t's two tails.
    Where scipy's ``nct`` returns NaN (1 degree of freedom and a large noncentrality, which 2 seeds at alpha / k
    need) the same probability is integrated over the chi-distributed sample sd."""
    from scipy import integrate, stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = difference * math.sqrt(n) / sd
    fast = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isfinite(fast):
        return fast

    log_norm = (df / 2 - 1) * math.log(2) + math.lgamma(df / 2)

    def reject(x: float) -> float:  # x: sample sd / sd * sqrt(df), chi-distributed with df degrees of freedom
        if x <= 0:
            return 0.0
        c = crit * x / math.sqrt(df)
        chi_pdf = math.exp((df - 1) * math.log(x) - x * x / 2 - log_norm)
        tails = 0.5 * math.erfc((c + nc) / math.sqrt(2)) + 0.5 * math.erfc((c - nc) / math.sqrt(2))
        return chi_pdf * tails

    mode = math.sqrt(max(df - 1, 0))
    return float(sum(integrate.quad(reject, a, b, limit=200)[0] for a, b in ((0, mode + 1), (mode + 1, math.inf))))


def min_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects with probability
    ``power``, given the sd of the paired differences and ``n`` pairs. None below 2 pairs."""
    from scipy import optimize

    if n < 2 or sd is None or not math.isfinite(sd):
        return None
    if sd == 0:
        return 0.0
    hi = 1.0
    while power_paired_t(hi, 1.0, n, alpha) < power:  # bracket the standardized difference
        hi *= 2
        if hi > 1e7:
            return math.inf
    d = optimize.brentq(lambda x: power_paired_t(x, 1.0, n, alpha) - power, 0.0, hi, xtol=1e-7)
    return d * sd


@dataclass(frozen=True)
class Comparison:
    """One case against its baseline on one metric, with the verdict."""
    metric: str
    case: str
    baseline: str
    test: Estimate            # case - baseline, paired by seed
    p_holm: float | None
    k: int                    # comparisons in Holm's family (those with a p-value)
    mde: float | None         # smallest detectable difference (see ``compare``)
    mde_alpha: float
    sign: int                 # direction of the metric
    verdict: str
    ci_adjusted: tuple[float, float] | None = None   # the interval the verdict used (``holm_levels``)
    level: float | None = None                         # its level, 1 - alpha / m


def compare(metric: str, pairs: Sequence[tuple[str, Mapping[int, float], str, Mapping[int, float]]],
            sign: int = NEUTRAL, alpha: float = ALPHA, power: float = POWER, adjust_mde: bool = True) -> list[Comparison]:
    """Verdicts for ``(case label, {seed: value}, baseline label, {seed: value})`` comparisons of one metric.

    A case is ``better`` / ``worse`` (``higher`` / ``lower`` for a metric without a direction) when Holm's adjusted
    p over the comparisons is below ``alpha``, which is exactly when its Holm-adjusted t-interval (``ci_adjusted``,
    at the level ``holm_levels`` gives it) excludes 0; else "no difference detected" with D, the difference a
    paired t-test detects with probability ``power`` at the sd of its paired differences and its n pairs, at
    alpha / k (Holm's strictest step: what a single real effect among k comparisons has to pass) when
    ``adjust_mde``, else at alpha. One pair: no interval. ``test.ci`` stays the unadjusted (1 - alpha) interval."""
    tests = [paired_t(c, b, 1 - alpha) for _, c, _, b in pairs]
    adjusted = holm([t.p for t in tests])
    levels = holm_levels([t.p for t in tests], alpha)
    k = sum(t.p is not None for t in tests)
    mde_alpha = alpha / max(1, k) if adjust_mde else alpha
    out = []
    for (case, _, base, _), t, p_adj, level in zip(pairs, tests, adjusted, levels):
        mde = min_detectable_difference(t.sd, t.n, mde_alpha, power) if t.sd is not None else None
        ci = rescale_interval(t.estimate, t.ci, t.df, 1 - alpha, level) if level is not None else None
        if t.n == 0:
            verdict = "no seed-paired runs"
        elif t.n == 1:
            verdict = "1 seed: no interval"
        elif p_adj is not None and p_adj < alpha and ci is not None and (ci[0] > 0 or ci[1] < 0):
            up = t.estimate > 0
            verdict = ("higher" if up else "lower") if sign == NEUTRAL else ("better" if up == (sign > 0) else "worse")
        else:
            verdict = "no difference detected"
        out.append(Comparison(metric, case, base, t, p_adj, k, mde, mde_alpha, sign, verdict, ci, level))
    return out


# --------------------------------------------------------------------------------------- for the findings
@dataclass(frozen=True)
class Correlation:
    r: float | None
    ci: tuple[float, float] | None    # percentile bootstrap interval over runs (within groups, if given)
    n: int
    n_boot: int                        # resamples used (those with variance in both variables)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    import numpy as np

    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_correlation(x: Sequence[float], y: Sequence[float], n_boot: int = 10000, level: float = 1 - ALPHA,
                          seed: int = 0, groups: Sequence[Any] | None = None) -> Correlation:
    """Pearson r of (x, y) over runs with a percentile bootstrap interval: resample the runs (pairs) with
    replacement ``n_boot`` times; resamples in which x or y is constant have no r and are left out.

    ``groups`` (one label per run, e.g. its model size): resample the runs *within* each group, keeping every
    group's count. Runs that share a design point (a model size, trained with several seeds) are not independent
    draws: the points are the design, the seeds are the randomness, so the interval is over training seeds. The
    plain bootstrap would drop whole sizes from a resample and mix design and noise. With a single run per group
    there is no seed variation to resample: no interval."""
    import numpy as np

    a, b = np.asarray(x, float), np.asarray(y, float)
    n = len(a)
    r = pearson(a, b)
    if r is None:
        return Correlation(None, None, n, 0)
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, n, size=(n_boot, n))
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} labels for {n} runs")
        members = [np.array([i for i, g in enumerate(groups) if g == label]) for label in dict.fromkeys(groups)]
        if max(len(m) for m in members) < 2:
            return Correlation(r, None, n, 0)
        idx = np.concatenate([m[rng.integers(0, len(m), size=(n_boot, len(m)))] for m in members], axis=1)
    xa, yb = a[idx], b[idx]  # (n_boot, n)
    xa = xa - xa.mean(1, keepdims=True)
    yb = yb - yb.mean(1, keepdims=True)
    den = np.sqrt((xa ** 2).sum(1) * (yb ** 2).sum(1))
    ok = den > 1e-12 * max(1.0, float(np.abs(a).max() * np.abs(b).max())) * n
    rs = (xa * yb).sum(1)[ok] / den[ok]
    if len(rs) == 0:
        return Correlation(r, None, n, 0)
    lo, hi = np.quantile(rs, [(1 - level) / 2, (1 + level) / 2])
    return Correlation(r, (float(lo), float(hi)), n, int(len(rs)))


def difference_of_differences(a1: Mapping[int, float], b1: Mapping[int, float], a2: Mapping[int, float],
                              b2: Mapping[int, float], paired: bool = True, level: float = 1 - ALPHA) -> Estimate:
    """The interaction (a1 - b1) - (a2 - b2) with a t-interval, e.g. the vocabulary gap at one model size minus
    the gap at another. Paired: per seed over the seeds all four cells have (the others dropped and counted).
    Unpaired: the difference of the four cell means with Welch's standard error and Satterthwaite's df."""
    from scipy import stats

    cells = (a1, b1, a2, b2)
    seeds = set(a1) & set(b1) & set(a2) & set(b2)
    dropped = len(set().union(*map(set, cells)) - seeds)
    if paired:
        contrasts = [(a1[s] - b1[s]) - (a2[s] - b2[s]) for s in sorted(seeds)]
        return t_interval(contrasts, level, dropped)
    vals = [[float(v) for v in c.values()] for c in cells]
    if any(len(v) < 2 for v in vals):
        means = [sum(v) / len(v) if v else math.nan for v in vals]
        est = (means[0] - means[1]) - (means[2] - means[3])
        return Estimate(est if math.isfinite(est) else None, None, min(map(len, vals)), 0, None, None, None)
    means = [sum(v) / len(v) for v in vals]
    var_of_mean = [sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v) for v, m in zip(vals, means)]
    est = (means[0] - means[1]) - (means[2] - means[3])
    se = math.sqrt(sum(var_of_mean))
    n = min(len(v) for v in vals)
    if se == 0:
        return Estimate(est, None, n, 0, None, (est, est), 1.0 if est == 0 else 0.0)
    df = sum(var_of_mean) ** 2 / sum(w ** 2 / (len(v) - 1) for w, v in zip(var_of_mean, vals) if w > 0)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    p = 2 * stats.t.sf(abs(est) / se, df)
    return Estimate(est, None, n, 0, df, (est - half, est + half), float(p))


def mean_std(values: Iterable[Any]) -> tuple[float, float, int] | None:
    """(mean, sample sd, count) of the numeric cells of ``values``; None when there are none."""
    xs = [x for x in (as_number(v) for v in values) if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd, len(xs)
