"""Computed verdicts: the statistics (paired t, Holm, smallest detectable difference, bootstrap r, difference of
differences) on planted effects and nulls, the baseline's validation, and the sweep report's Verdicts table.
No training: results.csv files and metrics.json files are written by hand."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from lab import config
from lab.config import available_experiments
from lab.core.numfmt import decimals_for, fmt, fmt_mean_sd
from lab.core.registry import ConfigError
from lab.core.stats import (
    HIGHER, LOWER, NEUTRAL, bootstrap_correlation, compare, difference_of_differences, direction, holm, holm_levels,
    min_detectable_difference, paired_t, power_paired_t, tost,
)
from lab.sweeps.plan import FIXED_COLUMNS, plan
from lab.sweeps.verdicts import DEFAULT_VERDICT_METRICS, markdown, parse_baseline, verdicts_from_csv

SUITES = [n for n in available_experiments() if n.startswith("ablations/")]
NOISE = [0.8, -1.1, 0.3, -0.4, 0.9]  # fixed "seed noise", mean 0.1, sd ~0.86


def write_results(path: Path, cells: dict[str, dict[int, dict[str, float]]], axis: str = "case",
                  extra_axes: dict[str, dict[str, str]] | None = None) -> Path:
    """A results.csv in the sweep's column layout: FIXED_COLUMNS, the axes, then the metrics.
    ``cells``: point label -> seed -> {metric: value}; ``extra_axes``: point label -> {axis: value}."""
    metrics = sorted({m for seeds in cells.values() for vals in seeds.values() for m in vals})
    axes = [axis, *sorted({a for v in (extra_axes or {}).values() for a in v})]
    cols = list(FIXED_COLUMNS) + axes + metrics
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for label, seeds in cells.items():
            for seed, vals in seeds.items():
                row = {"suite": "ablations/synthetic", "point": label, "seed": seed, "run_dir": f"{label}/s{seed}",
                       "status": "done", axis: label, **(extra_axes or {}).get(label, {}), **vals}
                if axis != "case":  # an axis sweep: the point label is "<axis>-<value>"
                    row[axis] = label.split("-", 1)[-1]
                w.writerow(row)
    return path


def by_case(results, metric):
    mv = next(m for m in results if m.metric == metric)
    return {c.case: c for c in mv.comparisons}


# --------------------------------------------------------------------------------------- planted effects
def test_a_planted_difference_far_above_the_seed_sd_is_better_or_worse(tmp_path):
    seeds = range(5)
    cells = {
        "none": {s: {"gfid": 100 + NOISE[s], "psnr": 20 + NOISE[s] / 10} for s in seeds},
        "good": {s: {"gfid": 70 + NOISE[s] * 1.5 + 0.2 * s, "psnr": 23 + NOISE[s] / 10} for s in seeds},
        "bad": {s: {"gfid": 130 - NOISE[s] + 0.1 * s, "psnr": 17 + NOISE[4 - s] / 10} for s in seeds},
    }
    path = write_results(tmp_path / "results.csv", cells)
    results = verdicts_from_csv(path, ["case"], "none", ["gfid", "psnr"])
    gfid, psnr = by_case(results, "gfid"), by_case(results, "psnr")
    assert gfid["good"].verdict == "better" and gfid["bad"].verdict == "worse"  # lower gFID is better
    assert psnr["good"].verdict == "better" and psnr["bad"].verdict == "worse"  # higher PSNR is better
    assert gfid["good"].test.ci[1] < 0 < gfid["bad"].test.ci[0]  # the intervals exclude 0, on the planted side
    assert gfid["good"].test.ci[0] < -30 + 1 < gfid["good"].test.ci[1] or abs(gfid["good"].test.estimate + 30) < 2
    # the interval is the paired t-interval over the seed-paired differences
    d = np.array([cells["good"][s]["gfid"] - cells["none"][s]["gfid"] for s in seeds])
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert gfid["good"].test.ci == pytest.approx((lo, hi)) and gfid["good"].test.n == 5
    assert gfid["good"].test.p == pytest.approx(sps.ttest_rel([cells["good"][s]["gfid"] for s in seeds],
                                                              [cells["none"][s]["gfid"] for s in seeds]).pvalue)
    assert gfid["good"].k == 2 and gfid["good"].p_holm <= 2 * gfid["good"].test.p + 1e-12
    text = markdown(results, {"case": "none"})
    assert "| good | none |" in text and "better" in text and "worse" in text and "Holm over 2 comparisons" in text
    assert "t-interval over n seed-paired differences" in text


def test_identical_distributions_give_no_difference_with_the_right_D(tmp_path):
    offsets = [0.5, -0.5, 1.0, -1.0]  # paired differences with mean 0 exactly: p = 1
    cells = {"none": {s: {"gfid": 100 + 3 * NOISE[s]} for s in range(4)},
             "same": {s: {"gfid": 100 + 3 * NOISE[s] + offsets[s]} for s in range(4)},
             "same2": {s: {"gfid": 100 + 3 * NOISE[s] - offsets[s] / 2} for s in range(4)}}
    results = verdicts_from_csv(write_results(tmp_path / "results.csv", cells), ["case"], "none", ["gfid"])
    c = by_case(results, "gfid")["same"]
    assert c.verdict == "no difference detected" and c.test.ci[0] < 0 < c.test.ci[1]
    sd = float(np.std(offsets, ddof=1))
    assert c.test.sd == pytest.approx(sd)
    assert c.mde_alpha == pytest.approx(0.05 / 2)  # at Holm's strictest step over the 2 comparisons
    assert c.mde == pytest.approx(min_detectable_difference(sd, 4, 0.05 / 2))
    # D checked directly: a paired t-test with 4 pairs at alpha/2 rejects a true difference D 80 % of the time
    rng = np.random.default_rng(0)
    diffs = rng.normal(c.mde, sd, size=(40000, 4))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / 2)
    assert np.mean(np.abs(t) > sps.t.ppf(1 - 0.05 / 4, 3)) == pytest.approx(0.8, abs=0.012)
    # and, with many pairs, the normal approximation (z_{1-a/2} + z_{power}) sd / sqrt(n)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert min_detectable_difference(2.0, 400) == pytest.approx(z * 2.0 / 20, rel=0.01)
    assert power_paired_t(min_detectable_difference(1.0, 2, 0.05 / 6), 1.0, 2, 0.05 / 6) == pytest.approx(0.8, abs=1e-6)
    text = markdown(results, {"case": "none"})
    assert f"no difference detected, smallest detectable difference {fmt(c.mde, 2)}" in text


def test_holm_turns_a_borderline_verdict_into_no_difference(tmp_path):
    borderline = [-1.0, -2.0, -0.5, -1.5, 0.2, -1.2]  # paired differences: p between 0.01 and 0.05 alone
    p_alone = sps.ttest_1samp(borderline, 0).pvalue
    assert 0.01 < p_alone < 0.05
    base = {s: {"gfid": 100 + NOISE[s % 5] + s} for s in range(6)}
    cells = {"none": base, "tweak": {s: {"gfid": base[s]["gfid"] + borderline[s]} for s in range(6)}}
    alone = by_case(verdicts_from_csv(write_results(tmp_path / "a.csv", cells), ["case"], "none", ["gfid"]), "gfid")
    assert alone["tweak"].verdict == "better" and alone["tweak"].p_holm == pytest.approx(p_alone)
    for i in range(4):  # four more cases without an effect
        cells[f"null{i}"] = {s: {"gfid": base[s]["gfid"] + [0.3, -0.3, 0.2, -0.2, 0.1, -0.1][(s + i) % 6]} for s in range(6)}
    many = by_case(verdicts_from_csv(write_results(tmp_path / "b.csv", cells), ["case"], "none", ["gfid"]), "gfid")
    assert many["tweak"].test.p == pytest.approx(p_alone)  # the same test ...
    assert many["tweak"].k == 5 and many["tweak"].p_holm == pytest.approx(5 * p_alone)  # ... among 5 comparisons
    assert many["tweak"].verdict == "no difference detected"
    # its unadjusted 95 % interval excludes 0, the interval beside the verdict (Holm's) does not
    assert many["tweak"].test.ci[1] < 0 < many["tweak"].ci_adjusted[1] and many["tweak"].ci_adjusted[0] < 0
    assert alone["tweak"].ci_adjusted == pytest.approx(alone["tweak"].test.ci) and alone["tweak"].level == 0.95
    text = markdown(verdicts_from_csv(write_results(tmp_path / "b.csv", cells), ["case"], "none", ["gfid"]),
                    {"case": "none"})
    row = next(line for line in text.splitlines() if line.startswith("| tweak |"))
    lo, hi = map(float, re.search(r"\[(-?[\d.]+), (-?[\d.]+)\] \((\d+(?:\.\d+)?) %\)", row).groups()[:2])
    assert lo < 0 < hi and "no difference detected" in row


def interval_rows(text: str) -> list[tuple[float, float, str]]:
    """(lo, hi, verdict) of every row of a Verdicts table."""
    out = []
    for line in text.splitlines():
        m = re.search(r"\| \[(-?[\d.]+), (-?[\d.]+)\] \([\d.]+ %\) \| [^|]+ \| ([^|]+) \|$", line)
        if m:
            out.append((float(m.group(1)), float(m.group(2)), m.group(3).strip()))
    return out


def test_the_printed_interval_agrees_with_holm_on_random_planted_data():
    """Over many planted datasets (k comparisons, n seeds, effects from none to large): the Holm-adjusted interval
    excludes 0 exactly when Holm's adjusted p < 0.05, i.e. when the verdict is better / worse, and the table never
    prints an interval that excludes 0 beside "no difference detected"."""
    rng = np.random.default_rng(24)
    decided = undecided_but_unadjusted_excludes = 0
    for _ in range(400):
        k, n = int(rng.integers(1, 7)), int(rng.integers(2, 7))
        base = {s: float(rng.normal(100, 5)) for s in range(n)}
        pairs = []
        for j in range(k):
            effect = float(rng.choice([0.0, 0.5, 1.0, 2.0, 4.0])) * float(rng.choice([-1, 1]))
            pairs.append((f"c{j}", {s: base[s] + effect + float(rng.normal(0, 1)) for s in range(n)}, "none", base))
        for c in compare("gfid", pairs, LOWER):
            excludes = c.ci_adjusted[0] > 0 or c.ci_adjusted[1] < 0
            assert excludes == (c.p_holm < 0.05) == (c.verdict in ("better", "worse")), c
            decided += excludes
            undecided_but_unadjusted_excludes += (not excludes) and (c.test.ci[0] > 0 or c.test.ci[1] < 0)
        if k > 1:
            smallest_p = min(compare("gfid", pairs, LOWER), key=lambda c: c.test.p)
            assert smallest_p.level == pytest.approx(1 - 0.05 / k)  # Holm's first step: Bonferroni's level
    assert decided > 100 and undecided_but_unadjusted_excludes > 10  # both kinds of case were planted


def test_the_verdicts_table_never_shows_an_interval_excluding_0_beside_no_difference(tmp_path):
    rng = np.random.default_rng(7)
    cells = {"none": {s: {"gfid": 100 + NOISE[s]} for s in range(5)}}
    for j, effect in enumerate([0.0, 0.6, 0.9, 1.2, 3.0, -0.8]):
        cells[f"c{j}"] = {s: {"gfid": 100 + NOISE[s] + effect + float(rng.normal(0, 0.5))} for s in range(5)}
    results = verdicts_from_csv(write_results(tmp_path / "r.csv", cells), ["case"], "none", ["gfid"])
    rows = interval_rows(markdown(results, {"case": "none"}))
    assert len(rows) == 6
    for lo, hi, verdict in rows:
        assert (lo > 0 or hi < 0) == (verdict in ("better", "worse")), (lo, hi, verdict)


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    cells = {"none": {0: {"gfid": 100.0}}, "other": {0: {"gfid": 60.0}}}
    results = verdicts_from_csv(write_results(tmp_path / "results.csv", cells), ["case"], "none", ["gfid"])
    c = by_case(results, "gfid")["other"]
    assert c.test.n == 1 and c.test.ci is None and c.test.p is None and c.mde is None
    assert c.verdict == "1 seed: no interval" and c.test.estimate == -40
    text = markdown(results, {"case": "none"})
    assert "1 seed: no interval" in text and "± 0" not in text and "Holm over 0 comparisons" in text
    assert fmt_mean_sd(100.0, 0.0, 1, 1) == "100.0 (1 seed)"


def test_seeds_in_only_one_run_are_dropped_and_counted():
    t = paired_t({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.0, 1: 1.0, 3: 7.0})
    assert t.n == 2 and t.dropped == 2 and t.estimate == pytest.approx(1.0)


def test_a_baseline_that_fixes_one_axis_compares_within_each_group(tmp_path):
    """head_index_vs_bitwise: {head.name: index}, compared within each quantizer case."""
    seeds = range(3)
    cells, axes = {}, {}
    for q, effect in (("bsq", -40.0), ("vq", 0.0)):
        for h in ("index", "bitwise"):
            label = f"{q}_head-{h}"
            axes[label] = {"head.name": h}
            cells[label] = {s: {"gfid": 150 + NOISE[s] + (effect + [0.4, -0.2, 0.1][s] if h == "bitwise" else 0)} for s in seeds}
    path = tmp_path / "results.csv"
    write_results(path, cells, extra_axes=axes)
    rows = list(csv.DictReader(open(path)))
    for r in rows:  # the case column holds the quantizer case
        r["case"] = r["point"].split("_")[0]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    results = verdicts_from_csv(path, ["case", "head.name"], {"head.name": "index"}, ["gfid"])
    mv = results[0]
    got = {g["case"]: c for c, g in zip(mv.comparisons, mv.groups)}
    assert set(got) == {"bsq", "vq"} and all(c.case == "bitwise" and c.baseline == "index" for c in got.values())
    assert got["bsq"].verdict == "better" and got["bsq"].test.estimate == pytest.approx(-40 + 0.1, abs=0.01)
    assert got["vq"].verdict == "no difference detected"
    text = markdown(results, {"head.name": "index"})
    assert "| head.name | baseline | within case | n pairs |" in text and "| bitwise | index | bsq |" in text


# --------------------------------------------------------------------------------------- the statistics
def test_holm_levels_follow_the_steps_and_stop_where_holm_stops():
    # k = 3: p = 0.001 (rank 0: 3p < .05), 0.02 (rank 1: 2p = .04), 0.04 (rank 2: p = .04), all rejected:
    # levels 1 - .05/3, 1 - .05/2, 1 - .05/1
    assert holm_levels([0.02, 0.001, 0.04]) == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 3, 0.95])
    # p = 0.03 at rank 0 is retained (3p = .09): Holm stops there, and every later comparison takes its level
    assert holm_levels([0.03, 0.04, 0.045, None]) == pytest.approx([1 - 0.05 / 3] * 3 + [None])
    # p = 0.04 at rank 1 is retained though its own step (1p = .04) would pass: Holm stopped at rank 0 (2p = .06)
    assert holm_levels([0.03, 0.04]) == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 2])
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])


def test_tost_decides_equivalence_by_the_90_percent_interval():
    same = [0.3, -0.2, 0.1, -0.25, 0.05]
    e = tost(same, margin=1.0)
    lo, hi = sps.t.interval(0.90, 4, loc=np.mean(same), scale=sps.sem(same))
    assert e.ci == pytest.approx((lo, hi)) and e.level == pytest.approx(0.9)
    assert e.equivalent and not e.different and e.p < 0.05
    shifted = [x + 3 for x in same]
    e = tost(shifted, margin=1.0)
    assert not e.equivalent and e.different and e.p > 0.05
    e = tost([x * 8 for x in same], margin=1.0)  # centred on 0 but too noisy to show it: neither
    assert not e.equivalent and not e.different
    assert tost([2.0], margin=1.0).ci is None  # one pair: no decision
    with pytest.raises(ValueError):
        tost(same, margin=0.0)


def test_holm_matches_the_step_down_definition():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    assert holm([0.9, 0.9, 0.9]) == pytest.approx([1.0, 1.0, 1.0])


def test_directions_and_their_override():
    assert [direction(m) for m in ("gfid", "kid", "rfid", "lpips", "val_loss", "gfid_normalized")] == [LOWER] * 6
    assert [direction(m) for m in ("psnr", "ssim", "bit_accuracy", "codebook_usage", "bit_entropy")] == [HIGHER] * 5
    assert direction("per_scale.accuracy_gap.4") == LOWER and direction("gfid_floor") == NEUTRAL
    assert direction("params") == NEUTRAL and direction("params", {"params": "lower"}) == LOWER
    up = compare("params", [("big", {0: 10.0, 1: 11.0, 2: 12.0}, "small", {0: 1.0, 1: 1.5, 2: 2.0})])
    assert up[0].verdict == "higher"  # no better side: the verdict says which way


# Every metric a run records (metrics.json, flattened as in results.csv), by the side that is better.
QUALITY_LOWER = ("gfid", "kid", "rfid", "rkid", "gfid_normalized", "kid_normalized", "rfid_normalized",
                 "rkid_normalized", "lpips", "baseline_lpips", "val_loss", "per_scale.val_loss.4",
                 "per_scale.accuracy_gap.1", "peak_memory_mb", "train_peak_memory_mb")
QUALITY_HIGHER = ("psnr", "ssim", "baseline_psnr", "bit_accuracy", "token_accuracy", "codebook_usage", "bit_entropy",
                  "per_scale.prefix_psnr.8", "per_scale.bit_entropy.2", "per_scale.codebook_usage.1",
                  "per_scale.perplexity.3", "per_scale.accuracy_free_running.4", "per_scale.accuracy_teacher_forced.4")
# counts, settings, spreads, properties of the data and clock figures of a shared machine: never better or worse
NO_SIDE = ("fid_samples", "kid_std", "rkid_std", "kid_subsets", "kid_subset_size", "lpips_size", "gfid_floor",
           "gfid_ceiling", "kid_floor", "kid_ceiling", "rfid_floor", "rkid_floor", "fid_reference.count",
           "fid_reference.limit", "wall_time_s", "eval_time_s", "sampling_time_s", "train_time_s", "train_step_ms",
           "sample_images_per_s", "train_images_per_s", "cpu_load", "steps", "params", "head_params",
           "flops_per_step", "label_noise.0.03.index_change", "label_noise.0.03.bit_flip")


@pytest.mark.parametrize("metric, side", [*((m, LOWER) for m in QUALITY_LOWER), *((m, HIGHER) for m in QUALITY_HIGHER),
                                          *((m, NEUTRAL) for m in NO_SIDE)])
def test_every_quality_metric_has_a_direction_and_counts_and_settings_none(metric, side):
    assert direction(metric) == side


def test_a_count_never_gets_a_better_or_worse_verdict():
    more = compare("fid_samples", [("big", {0: 2000.0, 1: 2001.0, 2: 2002.0}, "small", {0: 1000.0, 1: 1000.5, 2: 1001.0})],
                   sign=direction("fid_samples"))
    assert more[0].verdict == "higher"


@pytest.mark.parametrize("name", SUITES)
def test_every_verdict_metric_of_every_suite_has_a_direction(name):
    suite = config.load_experiment(name)
    report = config.to_dict(suite["report"])
    named = list(report.get("verdict_metrics") or []) or list(DEFAULT_VERDICT_METRICS[str(suite["stage"])])
    overrides = dict(report.get("directions") or {})
    assert named and all(direction(m, overrides) != NEUTRAL for m in named), named


def test_bootstrap_correlation_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = -2 * x + rng.normal(scale=0.5, size=40)
    c = bootstrap_correlation(x, y, n_boot=4000)
    assert c.r == pytest.approx(np.corrcoef(x, y)[0, 1]) and c.r < -0.9
    assert c.ci[0] < c.r < c.ci[1] < -0.85 and c.n == 40 and c.n_boot > 3900
    u, v = rng.normal(size=30), rng.normal(size=30)
    v -= (v - v.mean()) @ (u - u.mean()) / ((u - u.mean()) @ (u - u.mean())) * (u - u.mean())  # r = 0 exactly
    null = bootstrap_correlation(u, v, n_boot=4000)
    assert abs(null.r) < 1e-12 and null.ci[0] < -0.1 and null.ci[1] > 0.1
    few = bootstrap_correlation([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 1.0, 4.0, 3.0, 6.0, 5.0], n_boot=2000)
    assert few.ci[1] - few.ci[0] > 0.2  # 6 runs: a wide interval, not a point
    assert bootstrap_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).r is None


def test_bootstrap_correlation_within_groups_is_over_seeds_not_sizes():
    """Runs that share a model size are resampled within it: every resample keeps each size's count, so the interval
    is over training seeds. Seeds that agree exactly leave nothing to resample; a plain bootstrap over runs would
    still give an interval (from dropping whole sizes), mistaking the design for noise."""
    sizes = ["xs"] * 3 + ["s"] * 3 + ["m"] * 3
    x = [3.0] * 3 + [2.0] * 3 + [1.5] * 3            # validation loss per size, identical over seeds
    y = [90.0] * 3 + [60.0] * 3 + [58.0] * 3         # gFID per size
    flat = bootstrap_correlation(x, y, n_boot=2000, groups=sizes)
    assert flat.ci == pytest.approx((flat.r, flat.r)) and flat.r > 0.9
    assert bootstrap_correlation(x, y, n_boot=2000).ci[0] < flat.r - 0.01  # over runs: sizes dropped, an interval
    rng = np.random.default_rng(3)
    noisy = [v + e for v, e in zip(y, rng.normal(scale=8.0, size=9))]
    within = bootstrap_correlation(x, noisy, n_boot=2000, groups=sizes)
    assert within.ci[0] < within.r < within.ci[1] and within.n_boot == 2000
    assert bootstrap_correlation(x[::3], y[::3], groups=sizes[::3]).ci is None  # one run a size: no seed variation
    with pytest.raises(ValueError, match="labels for 9 runs"):
        bootstrap_correlation(x, y, groups=sizes[:4])


def test_difference_of_differences():
    seeds = range(4)
    noise = {s: NOISE[s] for s in seeds}
    # the vocabulary gap is 18 at one model size and 11 at the other: the interaction is 7
    a1 = {s: 100 + noise[s] for s in seeds}
    b1 = {s: 82 + noise[s] + 0.3 * (s % 2) for s in seeds}
    a2 = {s: 90 - noise[s] for s in seeds}
    b2 = {s: 79 - noise[s] - 0.2 * (s % 2) for s in seeds}
    e = difference_of_differences(a1, b1, a2, b2)
    contrasts = [(a1[s] - b1[s]) - (a2[s] - b2[s]) for s in seeds]
    assert e.estimate == pytest.approx(np.mean(contrasts)) and abs(e.estimate - 7) < 0.5
    assert e.ci[0] > 0 and e.n == 4 and e.p < 0.05
    welch = difference_of_differences(a1, b1, a2, b2, paired=False)
    assert welch.estimate == pytest.approx(e.estimate)
    se = math.sqrt(sum(np.var(list(c.values()), ddof=1) / 4 for c in (a1, b1, a2, b2)))
    assert (welch.ci[1] - welch.ci[0]) / 2 > sps.norm.ppf(0.975) * se  # t quantile > z quantile
    null = difference_of_differences(a1, {s: a1[s] - 5 + 0.2 * s for s in seeds}, a2, {s: a2[s] - 5 + 0.1 * (3 - s) for s in seeds})
    assert null.ci[0] < 0 < null.ci[1]
    drop = difference_of_differences({**a1, 9: 1.0}, b1, a2, b2)
    assert drop.n == 4 and drop.dropped == 1


# --------------------------------------------------------------------------------------- formatting
def test_numbers_are_formatted_consistently():
    col = [528000.0, 1548.0, 12.4]
    d = decimals_for(col)
    assert [fmt(x, d) for x in col] == ["528,000", "1,548", "12"]
    small = [0.2439, 0.2622, 0.01]
    assert [fmt(x, decimals_for(small)) for x in small] == ["0.2439", "0.2622", "0.0100"]
    assert fmt(4e-5, 4) == "< 0.0001" and fmt(-4e-5, 4) == "> -0.0001" and "e" not in fmt(14926479360.0, 0)
    assert fmt_mean_sd(209.21, 2.809, 3, 1, n_expected=3) == "209.2 ± 2.8"
    assert fmt_mean_sd(209.21, 2.809, 2, 1, n_expected=3) == "209.2 ± 2.8 (2 seeds)"
    assert fmt_mean_sd(0.258, 0.00024, 3, 3, n_expected=3) == "0.258 ± 0.0002"  # not "± 0.000"


# --------------------------------------------------------------------------------------- the baseline
@pytest.mark.parametrize("spec, message", [
    ("nonexistent", r"unknown case 'nonexistent'; the valid ones are none, flip-0\.1"),
    ({"head.name": "index"}, r"'head.name' is not an axis of this sweep; the axes are case"),
    ({"case": "bsc"}, r"unknown case 'bsc'"),
    ({}, "non-empty mapping"),
])
def test_an_unknown_baseline_is_a_config_error_naming_the_valid_cases(spec, message):
    points = [{"case": c} for c in ("none", "flip-0.1", "bsc-0.3")]
    with pytest.raises(ConfigError, match=message):
        parse_baseline(spec, points)
    assert parse_baseline("none", points) == {"case": "none"} and parse_baseline(None, points) is None


def test_axis_baselines_accept_the_sweep_value_or_its_column_value():
    points = [{"quantizer": v, "generator.size": s} for v in ("bsq-10", "bsq-16") for s in ("xs", "s")]
    assert parse_baseline({"quantizer": {"name": "bsq", "bits": 16}}, points) == {"quantizer": "bsq-16"}
    assert parse_baseline({"quantizer": "bsq-10"}, points) == {"quantizer": "bsq-10"}
    with pytest.raises(ConfigError, match="no `cases:` axis"):
        parse_baseline("bsq-10", points)
    with pytest.raises(ConfigError, match=r"unknown value of generator.size 'l'; the valid ones are xs, s"):
        parse_baseline({"generator.size": "l"}, points)


def test_plan_refuses_a_baseline_outside_the_grid_before_anything_is_written(tmp_experiments, tmp_path):
    (tmp_experiments / "b.yaml").write_text(
        "stage: generator\nsweep:\n  generator.order: [scale, raster]\nreport: {baseline: {generator.order: rastr}}\n")
    with pytest.raises(ConfigError, match=r"report.baseline of b: unknown value of generator.order 'rastr'; the valid ones are scale, raster"):
        plan("b", [f"runs_dir={tmp_path / 'runs'}"])
    (tmp_experiments / "c.yaml").write_text("stage: generator\nsweep:\n  generator.order: [scale]\nreport: {basline: x}\n")
    with pytest.raises(ConfigError, match=r"Unknown key 'report.basline'.*baseline"):
        plan("c", [f"runs_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", SUITES)
def test_every_suite_names_a_baseline_in_its_grid_and_generators_have_three_seeds(name):
    for preset in ("smoke", "cpu"):
        suite, jobs = plan(name, [f"preset={preset}"])  # validates the baseline against the grid
        report = config.to_dict(suite["report"])
        assert report["baseline"] is not None
        baseline = parse_baseline(report["baseline"], [j.point.values for j in jobs])
        assert any(all(parse_baseline({a: j.point.values[a]}, [j.point.values])[a] == v for a, v in baseline.items())
                   for j in jobs)
        seeds = {j.seed for j in jobs}
        if preset == "smoke":
            assert seeds == {0}
        elif suite["stage"] == "generator":
            assert len(seeds) >= 3, f"{name}: {sorted(seeds)}"


# --------------------------------------------------------------------------------------- the sweep report
def test_the_sweep_report_has_a_verdicts_table_and_the_floor_and_ceiling(tmp_experiments, tmp_path):
    """write_report on hand-written metrics.json files (what lab/stages/run.py would leave): no training."""
    from lab.sweeps.report import write_report

    (tmp_experiments / "syn.yaml").write_text(
        "# Synthetic suite (Tab.0)\nstage: generator\nsweep:\n  cases:\n    - {label: none, correction: {name: none}}\n"
        "    - {label: bsc, correction: {name: bitflip, p_max: 0.3, requantize: true}}\n"
        "seeds: [0, 1, 2]\nreport: {baseline: none, metrics: [gfid, params, flops_per_step, val_loss]}\n")
    args = [f"runs_dir={tmp_path / 'runs'}"]
    suite, jobs = plan("syn", args)
    for j in jobs:
        bsc = j.point.label == "bsc"
        gfid = (150.0 if bsc else 100.0) + NOISE[j.seed]
        j.run_dir.mkdir(parents=True)
        (j.run_dir / "metrics.json").write_text(json.dumps({
            "gfid": gfid, "kid": gfid / 1000, "gfid_floor": 50.0 + j.seed, "gfid_ceiling": 300.0,
            "gfid_normalized": (gfid - 50 - j.seed) / (250 - j.seed), "params": 528000, "flops_per_step": 14926479360,
            "val_loss": 0.2439 + j.seed * 1e-4, "wall_time_s": 100.0, "eval_time_s": 20.0}))
    out = write_report("syn", args)
    md = (out / "results.md").read_text()
    assert "## Verdicts" in md and "**gfid** (lower is better; Holm over 1 comparison;" in md
    assert re.search(r"\| bsc \| none \| 3 \| \+50\.0+ \| \[[\d.]+, [\d.]+\] \(95 %\) \| [<\d. ]+ \| worse \|", md), md
    assert "**kid**" in md  # the default verdict metrics: gfid and kid
    assert "## Floor and ceiling" in md and "gfid_normalized" in md.split("## Floor and ceiling")[1]
    assert "528,000" in md and "14,926,479,360" in md and "e+" not in md
    assert "evaluation (FID/KID, floor and ceiling) took 2m00s of it (20 %)" in md and "\n\n\n" not in md
    assert "Incomplete" not in md
    (jobs[-1].run_dir / "metrics.json").unlink()  # a run not finished: said, and its seed dropped from its pair
    md = (write_report("syn", args) / "results.md").read_text()
    assert "**Incomplete: 1 of 6 runs have not finished** (bsc/s2 missing)" in md and "| 2 (1 dropped) |" in md


def test_the_report_gives_each_scatter_plot_a_bootstrap_interval():
    from lab.sweeps.report_sections import correlations_section

    rows = [{"status": "done", "val_loss": 0.20 + 0.01 * i, "gfid": 100 + 10 * i + NOISE[i % 5]} for i in range(8)]
    text = correlations_section(rows, [{"kind": "bar", "x": "case", "y": "gfid"},
                                       {"kind": "scatter", "x": "val_loss", "y": "gfid"}])
    m = re.search(r"Pearson r\(val_loss, gfid\) = ([\d.]+) \[([\d.-]+), ([\d.-]+)\] over 8 runs", text)
    assert m, text
    r, lo, hi = map(float, m.groups())
    assert r == pytest.approx(np.corrcoef([x["val_loss"] for x in rows], [x["gfid"] for x in rows])[0, 1], abs=0.005)
    assert lo <= r <= hi and "val_loss: lower is better; gfid: lower is better" in text
    assert correlations_section(rows, [{"kind": "bar", "x": "case", "y": "gfid"}]) == ""
