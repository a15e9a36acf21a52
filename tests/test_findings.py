"""``python -m lab findings`` on synthetic published results (results.csv files in the sweep's column layout and a
bench quantizers.json, written by hand; no training): planted effects are reproduced, planted opposite effects
contradicted, nulls undecided with the right D, a suite with missing runs, too few seeds or pre-protocol columns
is incomplete rather than decided from part of it, and F7's correlation is computed per loss kind."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from lab.sweeps import findings as F
from lab.sweeps import findings_data as FDATA
from lab.sweeps import findings_decide as FD
from lab.sweeps.findings_table import FINDINGS
from lab.core.stats import min_detectable_difference, pearson
from lab.sweeps.plan import FIXED_COLUMNS

NOISE = [0.8, -1.1, 0.3, -0.4, 0.9]  # fixed per-seed noise, sd ~0.86
GEN = {"kid": 0.05, "gfid_normalized": 0.2}  # the protocol's columns (issue 13), present in every generator run


def write_suite(results: Path, suite: str, points: dict[str, dict], seeds=(0, 1, 2), metrics=None,
                status: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """results/<suite>/results.csv: ``points``: point label -> its axis columns; ``metrics(label, axes, seed)`` ->
    {metric: value}; ``status``: (label, seed) -> a status other than done (its metrics are left empty);
    ``drop``: columns to leave out (e.g. the protocol's, as in results from before issue 13)."""
    rows = []
    for label, axes in points.items():
        for s in seeds:
            st = (status or {}).get((label, s), "done")
            row = {"suite": f"ablations/{suite}", "point": label, "seed": s, "run_dir": f"{label}/s{s}", "status": st,
                   **axes}
            if st == "done":
                row.update({k: v for k, v in metrics(label, axes, s).items() if k not in drop})
            rows.append(row)
    axes_cols = list(dict.fromkeys(a for ax in points.values() for a in ax))
    cols = list(FIXED_COLUMNS) + axes_cols + list(dict.fromkeys(m for r in rows for m in r if m not in FIXED_COLUMNS
                                                                and m not in axes_cols))
    out = results / suite
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    return out / "results.csv"


def finding(fid: str):
    return next(f for f in FINDINGS if f.id == fid)


def by_label(decision) -> dict[str, FD.Outcome]:
    return {o.contrast.label + (f" ({o.group})" if o.group else ""): o for o in decision.outcomes}


def directional(decision) -> list[FD.Outcome]:
    return [o for o in decision.outcomes if o.contrast.kind != "equivalence"]


SELF_CORRECTION = {c: {"case": c} for c in ("none", "flip-0.3", "bsc-0.1", "bsc-0.2", "bsc-0.3")}


def self_correction(results: Path, gfid: dict[str, float], **kw) -> Path:
    return write_suite(results, "self_correction", SELF_CORRECTION,
                       metrics=lambda label, axes, s: {"gfid": gfid[label] + NOISE[s], **GEN}, **kw)


# ----------------------------------------------------------------------------- planted effects and nulls
def test_planted_effects_are_reproduced_and_nulls_undecided_with_d(tmp_path):
    # BSC 0.3 is 40 gFID better than none and than flips (far above the seed noise); the BSC strengths are equal
    self_correction(tmp_path, {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60})
    f5 = FD.decide(finding("F5"), tmp_path)
    assert not f5.incomplete and f5.verdict == "reproduced"
    for o in f5.outcomes:
        assert o.estimate == pytest.approx(-40) and o.ci[1] < 0 and o.p_holm < 0.05
    f6 = FD.decide(finding("F6"), tmp_path)
    assert f6.verdict == "undecided"  # similar, but "0.3 best" is not shown
    for o in f6.outcomes:  # the same noise in both cells: every paired difference is 0
        assert o.estimate == pytest.approx(0)
        assert o.verdict == ("reproduced" if o.contrast.kind == "equivalence" else "undecided")


def test_a_null_with_seed_noise_is_undecided_and_reports_d(tmp_path):
    # bsc-0.1 / bsc-0.2 differ from bsc-0.3 only by seed noise that does not cancel in the pairs
    other = [0.5, 1.6, -0.9]
    write_suite(tmp_path, "self_correction", SELF_CORRECTION, metrics=lambda label, axes, s: {
        "gfid": 80 + (NOISE[s] if label == "bsc-0.3" else other[s]), **GEN})
    f6 = FD.decide(finding("F6"), tmp_path)
    assert f6.verdict == "undecided"
    diffs = [NOISE[s] - other[s] for s in range(3)]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    for o in directional(f6):
        assert o.ci[0] < 0 < o.ci[1] and o.verdict == "undecided"
        assert o.d == pytest.approx(min_detectable_difference(sd, 3, 0.05 / 2))  # Holm's alpha / k over 2 contrasts
        assert f"D = " in F.verdict_text(o)


def test_a_planted_opposite_effect_is_contradicted(tmp_path):
    # raster next-token 50 gFID better and twice as fast as next-scale: VAR's claim reversed
    write_suite(tmp_path, "order", {"order-scale": {"generator.order": "scale"}, "order-raster": {"generator.order": "raster"}},
                metrics=lambda label, axes, s: {
                    "gfid": (150 if axes["generator.order"] == "raster" else 200) + NOISE[s],
                    "sample_images_per_s": (40 if axes["generator.order"] == "raster" else 20) + NOISE[s] / 10, **GEN})
    f8 = FD.decide(finding("F8"), tmp_path)
    assert f8.verdict == "contradicted"
    assert all(o.verdict == "contradicted" for o in f8.outcomes)
    gfid = next(o for o in f8.outcomes if o.contrast.metric == "gfid")
    assert gfid.estimate == pytest.approx(-50) and gfid.ci[1] < 0  # the interval excludes the paper's side (> 0)


def test_an_effect_reproduced_in_one_contrast_and_undecided_in_another_is_undecided(tmp_path):
    self_correction(tmp_path, {"none": 100, "flip-0.3": 60, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60})
    f5 = FD.decide(finding("F5"), tmp_path)
    verdicts = {o.contrast.case + "/" + o.contrast.baseline: o.verdict for o in f5.outcomes}
    assert verdicts == {"bsc-0.3/none": "reproduced", "bsc-0.3/flip-0.3": "undecided"}
    assert f5.verdict == "undecided"


# ------------------------------------------------------------------------------------------- incomplete
def test_a_suite_with_missing_runs_is_incomplete_not_decided_from_the_finished_ones(tmp_path):
    # the finished runs alone would reproduce F5 (a 40-gFID effect); one run has not finished
    self_correction(tmp_path, {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60},
                    status={("bsc-0.3", 2): "missing"})
    d = FD.decide(finding("F5"), tmp_path)
    assert d.verdict == "incomplete" and d.outcomes == []
    assert "1 of the 9 runs its contrasts compare not finished" in d.incomplete  # none, flip-0.3, bsc-0.3
    md = F.markdown([d])
    assert "**incomplete**" in md and "reproduced" not in md.split("## Details")[1]


def test_fewer_than_three_seeds_or_pre_protocol_results_are_incomplete(tmp_path):
    gfid = {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60}
    self_correction(tmp_path, gfid, seeds=(0, 1))
    d = FD.decide(finding("F5"), tmp_path)
    assert d.verdict == "incomplete" and "2 seeds" in d.incomplete
    self_correction(tmp_path, gfid, drop=("kid", "gfid_normalized"))
    d = FD.decide(finding("F5"), tmp_path)
    assert d.verdict == "incomplete" and "not yet rerun under the protocol" in d.incomplete
    assert "kid" in d.incomplete and "gfid_normalized" in d.incomplete
    d = FD.decide(finding("F8"), tmp_path)  # no results/order at all
    assert d.verdict == "incomplete" and "not yet run" in d.incomplete


def test_results_published_from_a_smoke_run_are_not_a_result(tmp_path):
    path = self_correction(tmp_path, {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60})
    (path.parent / "report.md").write_text("Command: `python -m lab run ablations/self_correction preset=smoke`\n"
                                           "(`make experiment NAME=ablations/self_correction` preset=smoke). Preset `smoke`.\n")
    d = FD.decide(finding("F5"), tmp_path)
    assert d.verdict == "incomplete" and "smoke" in d.incomplete and d.preset == "smoke"
    (path.parent / "report.md").write_text("Preset `cpu`.\n")
    assert FD.decide(finding("F5"), tmp_path).verdict == "reproduced"


def test_a_recorded_out_of_memory_run_is_a_result_not_a_missing_run(tmp_path):
    gfid = {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60}
    self_correction(tmp_path, gfid, status={("bsc-0.1", 0): "out_of_memory"}, seeds=(0, 1, 2, 3))
    d = FD.decide(finding("F5"), tmp_path)
    assert not d.incomplete and d.verdict == "reproduced"


def test_the_tokenizer_suite_needs_rkid_and_steps_through_the_vocabularies(tmp_path):
    cases = {f"bsq-2-{b}": {"case": f"bsq-2^{b}"} for b in (16, 32, 64)}
    psnr = {"bsq-2^16": 20, "bsq-2^32": 22, "bsq-2^64": 24}
    rfid = {"bsq-2^16": 60, "bsq-2^32": 50, "bsq-2^64": 40}
    metrics = lambda label, axes, s: {"psnr": psnr[axes["case"]] + NOISE[s] / 10,  # noqa: E731
                                      "rfid": rfid[axes["case"]] + NOISE[s], "rkid": 0.01}
    write_suite(tmp_path, "tokenizer_vocab", cases, metrics=metrics, drop=("rkid",))
    assert "rkid" in FD.decide(finding("F1"), tmp_path).incomplete
    write_suite(tmp_path, "tokenizer_vocab", cases, metrics=metrics)
    d = FD.decide(finding("F1"), tmp_path)
    assert d.verdict == "reproduced" and len(d.outcomes) == 4
    assert {round(o.estimate, 6) for o in d.outcomes} == {2.0, -10.0}


def test_a_finding_waits_for_its_own_cases_not_for_the_suites_other_questions(tmp_path):
    # F1 compares the BSQ vocabularies; the suite's VQ / LFQ cases, not yet run, answer another question
    cases = {f"bsq-2-{b}": {"case": f"bsq-2^{b}"} for b in (16, 32, 64)}
    cases.update({"vq-2-10": {"case": "vq-2^10"}, "lfq-2-10": {"case": "lfq-2^10"}})
    psnr = {"bsq-2^16": 20, "bsq-2^32": 22, "bsq-2^64": 24, "vq-2^10": 19, "lfq-2^10": 18}
    metrics = lambda label, axes, s: {"psnr": psnr[axes["case"]] + NOISE[s] / 10,  # noqa: E731
                                      "rfid": 100 - 2 * psnr[axes["case"]] + NOISE[s], "rkid": 0.01}
    later = {(c, s): "missing" for c in ("vq-2-10", "lfq-2-10") for s in (0, 1, 2)}
    write_suite(tmp_path, "tokenizer_vocab", cases, metrics=metrics, status=later)
    d = FD.decide(finding("F1"), tmp_path)
    assert not d.incomplete and d.verdict == "reproduced"
    # one seed of a compared case missing: incomplete, however clear the others are
    write_suite(tmp_path, "tokenizer_vocab", cases, metrics=metrics, status={**later, ("bsq-2-64", 2): "missing"})
    d = FD.decide(finding("F1"), tmp_path)
    assert d.verdict == "incomplete" and d.outcomes == []
    assert "1 of the 9 runs its contrasts compare not finished" in d.incomplete
    # and the compared cases need 3 seeds: with 2 (all finished) they are not decided
    write_suite(tmp_path, "tokenizer_vocab", cases, metrics=metrics, seeds=(0, 1))
    assert "2 seeds" in FD.decide(finding("F1"), tmp_path).incomplete


# ------------------------------------------------------------------------------- F3, F4, F9: grouped contrasts
HEADS = {f"{q}-2-12_head-{h}": {"case": f"{q}-2^12", "head.name": h} for q in ("bsq", "vq") for h in ("index", "bitwise")}
# the measurement of each tokenizer (one per quantizer, shared by every seed and head): VQ's labels change at 4 %,
# BSQ's at 3 %, moving 1.1 of its 12 bits when they do, so 0.275 % of its bits flip
LABEL_NOISE = {"vq": {"index_change": 0.040, "bit_flip": 0.019, "bits_moved_if_changed": 5.7},
               "bsq": {"index_change": 0.030, "bit_flip": 0.00275, "bits_moved_if_changed": 1.1}}


def test_f3_compares_heads_within_the_bsq_case_and_f9_vq_labels_with_bsq_bits(tmp_path):
    def metrics(label, axes, s):
        bitwise = axes["head.name"] == "bitwise"
        q = axes["case"].split("-")[0]
        return {"gfid": (150 if bitwise else 180) + NOISE[s], "head_params": 1548 if bitwise else 528384,
                **{f"label_noise.0.03.{k}": v for k, v in LABEL_NOISE[q].items()}, **GEN}

    write_suite(tmp_path, "head_index_vs_bitwise", HEADS, metrics=metrics)
    f3 = FD.decide(finding("F3"), tmp_path)
    assert f3.verdict == "reproduced"
    assert {o.group for o in f3.outcomes} == {"bsq-2^12"}  # the VQ case is not Tab.5's question
    params = next(o for o in f3.outcomes if o.contrast.metric == "head_params")
    assert params.exact and params.estimate == 1548 - 528384 and "identical in all 3 runs" in F.effect_text(params)
    f9 = FD.decide(finding("F9"), tmp_path)
    o = f9.outcomes[0]
    assert f9.verdict == "reproduced" and o.n == 3  # the index-head runs only: one per seed
    # like with like: VQ's label changes against BSQ's bit flips, not BSQ's own labels against its own bits
    assert o.estimate == pytest.approx(0.040 - 0.00275) and o.means == pytest.approx((0.040, 0.00275))
    assert "bsq-2^12: label_noise.0.03.index_change = 0.03" in o.note and "bits_moved_if_changed = 1.1" in o.note
    md = F.markdown([f9])
    assert "cannot show" in md and "by construction" in md


def test_f9_is_contradicted_when_bsq_bits_flip_more_often_than_vq_labels_change(tmp_path):
    flipped = {"vq": {"index_change": 0.01}, "bsq": {"index_change": 0.3, "bit_flip": 0.05}}
    write_suite(tmp_path, "head_index_vs_bitwise", HEADS, metrics=lambda label, axes, s: {
        **{f"label_noise.0.03.{k}": v for k, v in flipped[axes["case"].split("-")[0]].items()}, "gfid": 100 + NOISE[s],
        "head_params": 1, **GEN})
    assert FD.decide(finding("F9"), tmp_path).verdict == "contradicted"


@pytest.mark.parametrize("interaction, verdict", [(-30.0, "reproduced"), (0.0, "undecided"), (30.0, "contradicted")])
def test_f4_difference_of_differences(tmp_path, interaction, verdict):
    # gFID = base(size) + vocabulary gap; the 2^32 - 2^16 gap is +20 at xs and +20 + interaction at s
    points = {f"quantizer-{q}_size-{z}": {"quantizer": q, "generator.size": z}
              for q in ("bsq-10", "bsq-16", "bsq-32") for z in ("xs", "s")}
    other = [0.5, 1.6, -0.9]

    def metrics(label, axes, s):
        z, q = axes["generator.size"], axes["quantizer"]
        g = (200 if z == "xs" else 180) + {"bsq-10": 0, "bsq-16": 0, "bsq-32": 20}[q]
        g += interaction if (q == "bsq-32" and z == "s") else 0
        return {"gfid": g + (other[s] if (q, z) == ("bsq-32", "s") else NOISE[s]), **GEN}

    write_suite(tmp_path, "vocab_vs_model", points, metrics=metrics)
    d = FD.decide(finding("F4"), tmp_path)
    o = by_label(d)["(2^32 − 2^16) at the largest size − at the smallest, gFID (generator.size = xs → s)"]
    assert o.estimate == pytest.approx(interaction + sum(other[s] - NOISE[s] for s in range(3)) / 3)
    assert o.verdict == verdict
    assert "(2^64 − 2^32)" in " ".join(d.skipped)  # not in this (cpu-scale) grid: skipped, not failed


# ----------------------------------------------------------------------------------------------- F6
def equivalence(decision) -> FD.Outcome:
    return next(o for o in decision.outcomes if o.contrast.kind == "equivalence")


def test_f6_equal_strengths_within_the_margin_are_similar(tmp_path):
    # bsc-0.1 and bsc-0.3 from the same distribution: gFID 60 with seed noise that does not cancel in the pairs
    # (sd of the differences ~0.17), far inside the margin of 5 % x 60 = 3 gFID
    other = [0.85, -1.0, 0.2, -0.35, 0.95]
    write_suite(tmp_path, "self_correction", SELF_CORRECTION, seeds=range(5), metrics=lambda label, axes, s: {
        "gfid": {"none": 100, "flip-0.3": 100}.get(label, 60) + (other[s] if label == "bsc-0.1" else NOISE[s]), **GEN})
    d = FD.decide(finding("F6"), tmp_path)
    o = equivalence(d)
    assert o.verdict == "reproduced" and o.equivalence.equivalent
    assert o.equivalence.margin == pytest.approx(0.05 * (60 + sum(other) / 5))
    assert -o.equivalence.margin < o.ci[0] < o.ci[1] < o.equivalence.margin and o.level == pytest.approx(0.90)
    assert F.verdict_text(o).startswith("similar (equivalent within ±3.")
    md = F.markdown([d])
    assert "equivalence margin ±3." in md and "5 % of bsc-0.1's mean gfid" in md  # the margin is stated
    assert "(TOST 90 % interval)" in md
    # "0.3 best" is a separate, directional question: undecided here, so the finding is undecided
    assert {o.verdict for o in directional(d)} == {"undecided"} and d.verdict == "undecided"


@pytest.mark.parametrize("shift, verdict", [(6.0, "contradicted"), (2.6, "undecided")])
def test_f6_a_planted_difference_outside_the_margin_is_not_similar(tmp_path, shift, verdict):
    # bsc-0.3 worse by `shift` gFID on a margin of 3: far outside (the interval wholly beyond the margin:
    # contradicted), or near its edge with seed noise (the interval crosses it: not shown similar)
    other = [0.3, -0.9, 1.4]
    write_suite(tmp_path, "self_correction", SELF_CORRECTION, metrics=lambda label, axes, s: {
        "gfid": {"none": 100, "flip-0.3": 100, "bsc-0.3": 60 + shift}.get(label, 60)
        + (other[s] if label == "bsc-0.3" else NOISE[s]), **GEN})
    o = equivalence(FD.decide(finding("F6"), tmp_path))
    assert not o.equivalence.equivalent and o.verdict == verdict
    text = F.verdict_text(o)
    assert ("differs by more than ±3" in text) if verdict == "contradicted" else (
        text.startswith("not shown similar: the 90 % interval is not inside ±3") and "within ±" in text)


# ---------------------------------------------------------------------------- the interval beside a verdict
def test_the_findings_print_the_holm_adjusted_interval_that_decided(tmp_path):
    """F5 has 2 contrasts: one borderline effect whose unadjusted 95 % interval excludes 0 while Holm retains it
    is printed with its Holm-step interval, which contains 0 (never an interval that excludes 0 beside undecided);
    over many random planted suites the printed interval excludes 0 exactly when Holm rejects."""
    import numpy as np

    rng = np.random.default_rng(5)
    seen_borderline = 0
    for trial in range(60):
        effects = {"bsc-0.3": float(rng.choice([0.0, 1.0, 2.0, 5.0])), "flip-0.3": float(rng.choice([0.0, 1.0, 2.0]))}
        noise = {c: rng.normal(0, 1, 4) for c in SELF_CORRECTION}
        write_suite(tmp_path, "self_correction", SELF_CORRECTION, seeds=range(4), metrics=lambda label, axes, s: {
            "gfid": 100 - effects.get(label, 0.0) + float(noise[label][s]), **GEN})
        d = FD.decide(finding("F5"), tmp_path)
        for o in d.outcomes:
            excludes = o.ci[0] > 0 or o.ci[1] < 0
            assert excludes == (o.p_holm < 0.05) == (o.verdict != "undecided")
            assert o.interval == "Holm" and o.level in (pytest.approx(1 - 0.05 / 2), pytest.approx(0.95))
            seen_borderline += o.p < 0.05 <= o.p_holm
            if o.verdict == "undecided":
                assert "undecided" in F.verdict_text(o)
    assert seen_borderline > 0  # planted: unadjusted p < 0.05 but Holm's adjusted p >= 0.05


# ----------------------------------------------------------------------------------------------- F7
def test_f7_correlates_per_loss_kind_and_never_pools_bce_with_cross_entropy(tmp_path):
    # within each head, lower loss -> lower gFID (r > 0, Fig.10's direction); index CE is ~20x the bit BCE and
    # its runs have the better gFIDs, so pooling both would give a strongly negative r
    points = {f"head-{h}_size-{z}": {"head.name": h, "generator.size": z} for h in ("index", "bitwise") for z in ("xs", "s", "m")}
    size = {"xs": 0, "s": 1, "m": 2}

    def metrics(label, axes, s):
        h, k = axes["head.name"], size[axes["generator.size"]]
        loss = (5.0 - 0.3 * k if h == "index" else 0.26 - 0.006 * k) + NOISE[s] * (0.01 if h == "index" else 0.0005)
        gfid = (120 if h == "index" else 200) - 15 * k + NOISE[s]
        return {"val_loss": loss, "gfid": gfid, "kid": gfid / 1000, "gfid_normalized": 0.2}

    path = write_suite(tmp_path, "model_scaling", points, metrics=metrics)
    d = FD.decide(finding("F7"), tmp_path)
    assert {o.group for o in d.outcomes} == {"bit BCE (bitwise head)", "index cross-entropy (index head)"}
    assert all(o.n == 9 and o.estimate > 0.9 and o.ci[0] > 0 and o.verdict == "reproduced" for o in d.outcomes)
    assert d.verdict == "reproduced" and "(Bonferroni 98.75 % interval)" in F.effect_text(d.outcomes[0])  # over 4
    rows = list(csv.DictReader(open(path)))
    assert pearson([float(r["val_loss"]) for r in rows], [float(r["gfid"]) for r in rows]) < -0.5  # pooled: wrong sign

    from lab.sweeps.report_sections import correlations_section

    text = correlations_section(rows, [{"kind": "scatter", "x": "val_loss", "y": "gfid"}], head="bitwise")
    for kind in ("bit BCE (bitwise head)", "index cross-entropy (index head)"):
        r = re.search(re.escape(f"{kind}: Pearson r(val_loss, gfid) = ") + r"(-?[0-9.]+) \[", text)
        assert r and float(r.group(1)) > 0.9, text
    assert "r > 0 means a better val_loss goes with a better gfid" in text and "-0.98" in text


def test_f7_takes_the_loss_kind_from_the_suite_when_the_head_is_not_swept(tmp_path):
    points = {f"size-{z}": {"generator.size": z} for z in ("xs", "s", "m")}
    k = {"xs": 0, "s": 1, "m": 2}
    # loss and gFID unrelated beyond seed noise: r's interval contains 0
    write_suite(tmp_path, "model_scaling", points, metrics=lambda label, axes, s: {
        **GEN, "val_loss": 0.25 + 0.001 * NOISE[s], "gfid": 200 + [3, -2, 1][k[axes["generator.size"]]] * (s - 1),
        "kid": 0.1 + 0.01 * NOISE[(s + 1) % 3]})
    d = FD.decide(finding("F7"), tmp_path)
    assert [o.group for o in d.outcomes] == ["bit BCE (bitwise head)"] * 2  # model_scaling.yaml: head bitwise
    undecided = [o for o in d.outcomes if o.verdict == "undecided"]
    assert undecided and all(o.ci[0] < 0 < o.ci[1] and o.d is not None and 0 < o.d < 1 for o in undecided)


# ----------------------------------------------------------------------------------------------- F2
def write_bench(results: Path, lfq_per_bit: float, quick: bool = False) -> None:
    rows = []
    for bits in (8, 12, 16, 18, 20):
        rows.append({"quantizer": "lfq", "bits": bits, "peak_mb": 30 * lfq_per_bit ** (bits - 8), "status": "ok"}
                    if bits <= 16 else {"quantizer": "lfq", "bits": bits, "peak_mb": None, "status": "skipped: estimated 28 GiB > budget 8"})
        rows.append({"quantizer": "bsq", "bits": bits, "peak_mb": 2.5 + 0.2 * bits + (0.1 if bits % 3 else 0), "status": "ok"})
    (results / "bench").mkdir(parents=True, exist_ok=True)
    (results / "bench" / "quantizers.json").write_text(json.dumps({"part": "quantizers", "header": {"quick": quick}, "rows": rows}))


@pytest.mark.parametrize("per_bit, verdict", [(2.0, "reproduced"), (0.5, "contradicted")])
def test_f2_lfq_memory_growth_against_bsq_from_the_bench(tmp_path, per_bit, verdict):
    write_bench(tmp_path, per_bit)
    d = FD.decide(finding("F2"), tmp_path)
    assert d.verdict == verdict
    assert "skipped: estimated 28 GiB" in d.outcomes[0].note  # the cases beyond the budget are reported
    write_bench(tmp_path, per_bit, quick=True)
    assert FD.decide(finding("F2"), tmp_path).verdict == "incomplete"


# ----------------------------------------------------------------------------------------------- CLI
def run_findings(argv: list[str]) -> None:
    """``python -m lab findings ARGS`` through the subcommand's own parser (lab/__main__.py imports torch)."""
    import argparse

    parser = argparse.ArgumentParser()
    F.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["findings", *argv])
    args.func(args)


def test_the_command_writes_one_row_per_finding(tmp_path):
    self_correction(tmp_path, {"none": 100, "flip-0.3": 100, "bsc-0.1": 60, "bsc-0.2": 60, "bsc-0.3": 60})
    write_bench(tmp_path, 2.0)
    out = tmp_path / "F.md"
    run_findings(["--results", str(tmp_path), "--out", str(out)])
    table = out.read_text().split("## Details")[0]
    rows = [line for line in table.splitlines() if line.startswith("| F")]
    assert [r.split(" | ")[0] for r in rows] == [f"| F{i}" for i in range(1, 10)]
    verdict = {r.split(" | ")[0][2:]: r.split(" | ")[4] for r in rows}
    assert verdict["F5"].startswith("**reproduced**") and verdict["F2"].startswith("**reproduced**")
    assert verdict["F6"].startswith("**undecided**")
    assert all(verdict[f].startswith("**incomplete**") for f in ("F1", "F3", "F4", "F7", "F8", "F9"))


def test_a_results_directory_that_does_not_exist_is_a_config_error(tmp_path):
    from lab.core.registry import ConfigError

    with pytest.raises(ConfigError, match="--results"):
        run_findings(["--results", str(tmp_path / "nowhere")])
    assert not (tmp_path / "nowhere").exists()


def test_the_committed_results_are_not_decided_from_pre_protocol_runs():
    """Today's results/ predate issue 13's protocol (no KID): every suite finding is incomplete, not decided."""
    for d in FD.decide_all(F.ROOT / "results"):
        if d.finding.suite != "bench" and (F.ROOT / "results" / d.finding.suite / "results.csv").is_file():
            columns, _ = FDATA.read_rows(F.ROOT / "results" / d.finding.suite / "results.csv")
            if "kid" not in columns and "rkid" not in columns:
                assert d.verdict == "incomplete" and "protocol" in d.incomplete


@pytest.mark.slow
def test_python_m_lab_findings_is_registered(tmp_path):
    from lab.__main__ import main

    write_bench(tmp_path, 2.0)
    main(["findings", "--results", str(tmp_path)])
    assert (tmp_path / "FINDINGS.md").is_file()
