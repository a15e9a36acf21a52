"""The notebooks' helpers (lab/explore.py, lab/explore_suites.py, lab/explore_plots.py) on small synthetic suites:
correlations never pooled across tokenizers or loss kinds, incomparable losses never on one axis or in one column,
pre-protocol results marked, runs named by run_name or point/seed."""
from __future__ import annotations

import csv
import math

import matplotlib
import pytest

matplotlib.use("Agg")

from lab import explore, explore_plots, explore_suites  # noqa: E402
from lab.core.stats import pearson  # noqa: E402

BCE, CE = "bit BCE (bitwise head)", "index cross-entropy (index head)"


def write_suite(path, rows, extra=()):
    path.mkdir(parents=True, exist_ok=True)
    cols = ["suite", "point", "seed", "run_dir", "status", "quantizer", "head.name", "val_loss", "gfid", *extra]
    with open(path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    return path


def two_by_two(tmp_path, protocol=True):
    """Two quantizers x two heads x 3 seeds. Within each group a lower loss goes with a *higher* gFID (r < 0),
    while the groups' offsets make a pooled r strongly positive: pooling would flip the sign."""
    rows = []
    for qi, q in enumerate(["bsq-16", "vq-4096"]):
        for head, base in (("bitwise", 0.25), ("index", 5.0)):
            for seed in range(3):
                loss = base + qi * 2 + 0.01 * seed
                gfid = 100 + 60 * qi + (40 if head == "index" else 0) - 3 * seed
                rows.append({"suite": "ablations/synthetic", "point": f"{q}_{head}", "seed": seed,
                             "run_dir": f"{q}_{head}/s{seed}", "status": "done", "quantizer": q, "head.name": head,
                             "val_loss": loss, "gfid": gfid,
                             **({"kid": 0.1, "gfid_normalized": 1.5} if protocol else {})})
    return write_suite(tmp_path / "synthetic", rows, ("kid", "gfid_normalized") if protocol else ())


def test_correlations_are_per_tokenizer_and_loss_kind_never_pooled(tmp_path):
    suite = explore_suites.load(two_by_two(tmp_path))
    assert suite.stage == "generator" and set(suite.kinds) == {BCE, CE} and suite.tokenizers == ["bsq-16", "vq-4096"]
    table = explore_suites.correlations(suite, "val_loss", "gfid")
    assert len(table) == 4 and set(table["runs"]) == {3}  # 2 tokenizers x 2 loss kinds, 3 seeds each: no pooled row
    assert {(r["loss kind"], r["tokenizer"]) for _, r in table.iterrows()} == {
        (k, t) for k in (BCE, CE) for t in ("bsq-16", "vq-4096")}
    assert (table["r"] < -0.99).all()  # within each group: r = -1
    pooled = pearson(suite.rows["val_loss"].tolist(), suite.rows["gfid"].tolist())
    assert pooled is not None and pooled > 0  # what pooling would have said
    note = explore_suites.pooling_note(suite)
    assert "2 loss kinds" in note and "2 tokenizers" in note and "never over all its runs" in note


def test_a_group_of_fewer_than_three_runs_has_no_r(tmp_path):
    rows = [{"suite": "s", "point": f"p{i}", "seed": 0, "run_dir": "", "status": "done", "quantizer": "bsq-16",
             "head.name": "bitwise", "val_loss": 0.2 + i / 100, "gfid": 100 + i} for i in range(2)]
    table = explore_suites.correlations(explore_suites.load(write_suite(tmp_path / "s", rows)))
    assert len(table) == 1 and math.isnan(table["r"].iloc[0]) and "fewer than 3" in table["note"].iloc[0]


def test_one_tokenizer_and_one_head_need_no_note(tmp_path):
    rows = [{"suite": "s", "point": f"p{i}", "seed": 0, "run_dir": "", "status": "done", "quantizer": "bsq-16",
             "head.name": "bitwise", "val_loss": 0.2 + i / 100, "gfid": 100 + i} for i in range(4)]
    suite = explore_suites.load(write_suite(tmp_path / "s", rows))
    assert explore_suites.pooling_note(suite) == "" and explore_suites.correlations(suite)["r"].iloc[0] > 0.99


def test_pre_protocol_results_are_marked(tmp_path):
    old = explore_suites.load(two_by_two(tmp_path / "old", protocol=False))
    assert old.lacking == ["kid", "gfid_normalized"] and "pre-protocol" in old.title
    new = explore_suites.load(two_by_two(tmp_path / "new"))
    assert new.lacking == [] and new.mark == "" and new.title == "synthetic"
    # a protocol column present but empty in a finished run still predates it
    rows = list(csv.DictReader(open(tmp_path / "new" / "synthetic" / "results.csv")))
    rows[0]["kid"] = ""
    half = explore_suites.load(write_suite(tmp_path / "half", rows, ("kid", "gfid_normalized")))
    assert half.lacking == ["kid"]
    fig, _ = explore_plots.draw(old, {"kind": "bar", "x": "quantizer", "y": "gfid"})
    assert "pre-protocol" in fig._suptitle.get_text()


def test_a_tokenizer_suite_without_rkid_is_pre_protocol(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "results.csv").write_text("suite,point,seed,run_dir,status,case,psnr,rfid\ns,a,0,a/s0,done,a,20.0,100.0\n")
    suite = explore_suites.load(d)
    assert suite.stage == "tokenizer" and suite.lacking == ["rkid"] and "no rkid" in suite.title


def test_losses_of_different_kinds_are_facets_never_one_axis(tmp_path):
    suite = explore_suites.load(two_by_two(tmp_path))
    for spec in ({"kind": "bar", "x": "quantizer", "y": "val_loss", "hue": "head.name"},
                 {"kind": "scatter", "x": "val_loss", "y": "gfid"}):
        fig, why = explore_plots.draw(suite, spec)
        assert why == "" and len(fig.axes) == 2
        for ax, kind in zip(fig.axes, suite.kinds):
            assert ax.get_title() == kind
            assert kind in (ax.get_ylabel() if spec["kind"] == "bar" else ax.get_xlabel())
            if spec["kind"] == "bar":  # each panel holds one head's losses only
                heights = [p.get_height() for p in ax.patches]
                assert heights and (all(h < 3 for h in heights) if kind == BCE else all(h > 4 for h in heights))
            else:  # a legend entry per tokenizer, each with its own r
                labels = ax.get_legend_handles_labels()[1]
                assert len(labels) == 2 and all("r = -1.00" in lab for lab in labels)
    # gFID is one number for every head: one panel
    fig, _ = explore_plots.draw(suite, {"kind": "bar", "x": "quantizer", "y": "gfid", "hue": "head.name"})
    assert len(fig.axes) == 1
    # the table: one val_loss column per loss kind, never both kinds in one column
    table = explore_suites.table(suite, ["val_loss", "gfid"])
    assert "val_loss" not in table and {f"val_loss: {BCE}", f"val_loss: {CE}"} <= set(table.columns)
    assert all(bool(a) != bool(b) for a, b in zip(table[f"val_loss: {BCE}"], table[f"val_loss: {CE}"]))


def test_curves_without_event_files_say_why(tmp_path):
    suite = explore_suites.load(two_by_two(tmp_path))
    fig, why = explore_plots.draw(suite, {"kind": "curve", "tag": "val/loss", "x": "step"})
    assert fig is None and "TensorBoard" in why


def record(path, **cfg):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    (path / "metrics.json").write_text('{"gfid": 100.0}')
    return path


def test_runs_are_labelled_by_run_name_else_point_and_seed_never_a_bare_timestamp(tmp_path):
    results = tmp_path / "results"
    rec = record(results / "order" / "runs" / "order-scale" / "s1", stage="generator", seed=1)
    named = record(results / "order" / "runs" / "order-raster" / "s0", stage="generator", seed=0,
                   run_name="raster-emoji")
    stamped = record(tmp_path / "runs" / "quickstart" / "20250101-120000-s0", stage="tokenizer", seed=0)
    assert explore.run_label(rec, results) == "order order-scale/s1"
    assert explore.run_label(rec, results / "order") == "order-scale/s1"
    assert explore.run_label(named, results) == "raster-emoji s0"
    assert explore.run_label(stamped, stamped) == "quickstart/20250101-120000-s0"
    assert explore.run_label(stamped, tmp_path / "runs") == "quickstart/20250101-120000-s0"
    # the published records are what the run notebook shows of results/, labelled so
    assert explore.runs_under(results) == [named, rec]
    assert list(explore.metrics_table(explore.runs_under(results), results).index) == ["raster-emoji s0",
                                                                                       "order order-scale/s1"]
    assert explore.loss_kind(stamped) == "reconstruction loss (tokenizer)"


@pytest.mark.parametrize("head,kind", [("bitwise", BCE), ("index", CE)])
def test_a_runs_loss_kind_comes_from_its_head(tmp_path, head, kind):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(f"stage: generator\nseed: 0\nhead: {{name: {head}}}\n")
    assert explore.loss_kind(run) == kind


def test_the_report_reads_results_when_runs_has_no_suite(tmp_path, monkeypatch):
    monkeypatch.delenv("BITLAB_RESULTS", raising=False)
    (tmp_path / "runs").mkdir()
    assert explore.default_results(tmp_path) == tmp_path / "results"
    two_by_two(tmp_path / "runs")
    assert explore.default_results(tmp_path) == tmp_path / "runs"
