"""Published run records: a suite continues from them on another machine, a record of other settings is refused,
shards split a suite into disjoint slices whose merged report equals one invocation's, and a suite's tokenizer
travels with a verified hash."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from lab.core.registry import ConfigError, save_config
from lab.runtime.files import runs_root
from lab.stages.common import resolve_run_settings
from lab.runtime.published import published_tokenizer, sha256_of
from lab.stages import run as run_mod
from lab.sweeps.plan import plan
from lab.sweeps.records import publish_run, read_yaml, record_differences, record_dir, requested
from lab.sweeps.report import check_report, write_report
from lab.sweeps.shards import parse_shard, shard_jobs
from lab.sweeps.sweep import incomplete, run_sweep

SUITE = ("stage: tokenizer\nsweep:\n  quantizer.bits: [8, 10, 12]\nseeds: [0, 1]\n"
         "report:\n  baseline: {quantizer.bits: 8}\n  metrics: [psnr]\n  verdict_metrics: [psnr]\n")


@pytest.fixture
def fake_runs(monkeypatch):
    """run_experiment replaced by one that writes a finished run (config.yaml, metrics.json) at once: the suite's
    bookkeeping is what is tested here, not training. -> the list of run names it trained."""
    trained: list[str] = []

    def fake(cfg):
        cfg = copy.deepcopy(cfg)
        resolve_run_settings(cfg, verbose=False)  # as a run records its config
        run_dir = runs_root(cfg["runs_dir"]) / cfg["name"] / str(cfg["run_id"])
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        bits = int(cfg["quantizer"]["bits"])
        metrics = {"psnr": 20.0 + bits / 4 + 0.1 * int(cfg["seed"]), "wall_time_s": 1.0, "cpu": "Test CPU",
                   "precision": "32-true"}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        trained.append(f"{cfg['name'].split('/')[-1]}/s{cfg['seed']}")
        return run_dir, metrics

    monkeypatch.setattr(run_mod, "run_experiment", fake)
    return trained


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_suite_continues_from_its_records_with_a_fresh_runs_folder(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    first = [f"runs_dir={tmp_path / 'runs1'}"]
    # half the suite on "machine 1": shard 1 of 2, published as each run finishes
    run_sweep("rec", first, publish=results, shard=(1, 2))
    assert len(fake_runs) == 3
    assert len(list((results / "runs").glob("*/s*/metrics.json"))) == 3
    # "machine 2": an empty runs folder; only the missing runs train
    second = [f"runs_dir={tmp_path / 'runs2'}"]
    fake_runs.clear()
    run_sweep("rec", second, publish=results)
    assert len(fake_runs) == 3 and incomplete("rec", second, publish=results) == []
    rows = _rows(results / "results.csv")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert sorted(r["source"] for r in rows) == ["local"] * 3 + ["published"] * 3
    assert all(r["hardware"].startswith("Test CPU") for r in rows)
    assert len({(r["point"], r["seed"]) for r in rows}) == 6  # every run once
    # a third machine with nothing local: the report alone is made from the records
    third = [f"runs_dir={tmp_path / 'runs3'}"]
    check_report("rec", third, out=results)
    write_report("rec", third, out=results)
    assert len(_rows(results / "results.csv")) == 6
    assert "6 of 6 finished" in (results / "report.md").read_text()



def test_an_invocation_of_some_seeds_reports_the_whole_suite(tmp_experiments, tmp_path, fake_runs):
    """`seeds=[...]` picks what one invocation trains (pairing runs within a sitting, adding seeds): the published
    report still covers every seed of the suite, and its command rebuilds that report, not the invocation's slice."""
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    runs = f"runs_dir={tmp_path / 'runs'}"
    run_sweep("rec", [runs, "seeds=[1]"], publish=results)
    assert len(fake_runs) == 3 and all(r.endswith("/s1") for r in fake_runs)
    report = (results / "report.md").read_text()
    assert "3 of 6 finished" in report and "seeds=" not in report.split("Runs:")[0]
    run_sweep("rec", [runs, "seeds=[0]"], publish=results)
    assert "6 of 6 finished" in (results / "report.md").read_text()
    run_sweep("rec", [runs, "seeds=[2]"], publish=results)  # a seed beyond the YAML's joins the report, named
    report = (results / "report.md").read_text()
    assert "9 of 9 finished" in report and "seeds=[0,1,2]" in report.split("Runs:")[0]


def test_a_point_another_suite_published_with_the_same_settings_is_not_retrained(tmp_experiments, tmp_path, fake_runs):
    """Two suites that share a point (the same settings, seed and preset) train it once: the second takes the first's
    record as it is, says where it came from, and trains only what differs."""
    (tmp_experiments / "first.yaml").write_text(SUITE)
    (tmp_experiments / "second.yaml").write_text(SUITE.replace("[8, 10, 12]", "[10, 14]").replace("bits: 8}", "bits: 10}"))
    root = tmp_path / "results"
    run_sweep("first", [f"runs_dir={tmp_path / 'runs'}"], publish=root / "first")
    fake_runs.clear()
    run_sweep("second", [f"runs_dir={tmp_path / 'runs_lr'}", "optim.learning_rate=0.0005"], publish=root / "second_lr")
    assert len(fake_runs) == 4  # another setting (the learning rate): no twin, all trained
    fake_runs.clear()
    run_sweep("second", [f"runs_dir={tmp_path / 'runs'}"], publish=root / "second")
    assert sorted(fake_runs) == ["bits-14/s0", "bits-14/s1"]
    source = json.loads((root / "second" / "runs" / "bits-10" / "s1" / "source.json").read_text())
    assert source["reused_from"].endswith("first/runs/bits-10/s1")
    assert (json.loads((root / "second" / "runs" / "bits-10" / "s1" / "metrics.json").read_text())
            == json.loads((root / "first" / "runs" / "bits-10" / "s1" / "metrics.json").read_text()))
    rows = _rows(root / "second" / "results.csv")
    assert sum(bool(r["reused_from"]) for r in rows) == 2 and {r["status"] for r in rows} == {"done"}
    assert "2 of them another suite's records" in (root / "second" / "report.md").read_text()
    fake_runs.clear()  # `lab status` of a third folder counts what --publish would take, and trains nothing
    from lab.cli.status import status
    st = status("second", [f"runs_dir={tmp_path / 'runs_d'}"], publish=str(root / "second_d"))
    assert st["finished"] == 0 and len(st["reused"]) == 2 and all(r.endswith("<- first") for r in st["reused"])
    assert sorted(st["missing"]) == ["bits-14/s0", "bits-14/s1"] and not fake_runs
    fake_runs.clear()  # without --publish nothing is copied: the runs train as before
    run_sweep("second", [f"runs_dir={tmp_path / 'runs_b'}"])
    assert len(fake_runs) == 4
    fake_runs.clear()  # the suite's own records published elsewhere are not another suite's: a rerun retrains
    run_sweep("first", [f"runs_dir={tmp_path / 'runs_c'}"], publish=root / "first_again")
    assert len(fake_runs) == 6


def test_odd_or_malformed_records_of_other_suites_are_passed_over(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "first.yaml").write_text(SUITE)
    (tmp_experiments / "second.yaml").write_text(SUITE)
    root = tmp_path / "results"
    run_sweep("first", [f"runs_dir={tmp_path / 'runs'}"], publish=root / "first")
    good = root / "first" / "runs" / "bits-10" / "s0"
    for odd in ("s\u00b2", "sfoo", "s-1"):  # names no seed has: never read as one
        (good.parent / odd).mkdir()
        for f in ("config.yaml", "metrics.json"):
            (good.parent / odd / f).write_text((good / f).read_text())
    (good / "source.json").write_text("{not json")  # a malformed provenance: the record is still taken
    (root / "first" / "runs" / "bits-12" / "s1" / "metrics.json").write_text("{broken")  # not taken, trained
    fake_runs.clear()
    run_sweep("second", [f"runs_dir={tmp_path / 'runs'}"], publish=root / "second")
    assert fake_runs == ["bits-12/s1"]
    assert json.loads((root / "second" / "runs" / "bits-10" / "s0" / "source.json").read_text())["reused_from"]
    assert not list((root / "second" / "runs").glob("*/.*tmp*"))


def test_an_adopted_record_brings_its_tokenizer_and_never_replaces_a_record(tmp_path):
    from lab.sweeps.records import adopt_record
    src = tmp_path / "a" / "runs" / "p" / "s0"
    src.mkdir(parents=True)
    (src / "config.yaml").write_text("preset: cpu\n")
    (src / "metrics.json").write_text(json.dumps({"gfid": 50.0, "tokenizer": "/x/runs/_tokenizers/abc123/run"}))
    (tmp_path / "a" / "tokenizer" / "abc123").mkdir(parents=True)
    (tmp_path / "a" / "tokenizer" / "abc123" / "tokenizer.json").write_text("{}")
    dest = adopt_record(src, tmp_path / "b", "p", 0)
    assert json.loads((dest / "metrics.json").read_text())["gfid"] == 50.0
    assert (tmp_path / "b" / "tokenizer" / "abc123" / "tokenizer.json").is_file()
    assert adopt_record(src, tmp_path / "b", "p", 0) == dest  # the same record again: adopted meanwhile, kept
    (src / "metrics.json").write_text(json.dumps({"gfid": 51.0}))
    with pytest.raises(ConfigError, match="not replaced"):
        adopt_record(src, tmp_path / "b", "p", 0)

def test_shards_are_disjoint_and_cover_the_suite(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    args = [f"runs_dir={tmp_path / 'runs'}"]
    _, jobs = plan("rec", args)
    slices = [shard_jobs(jobs, (i, 3)) for i in (1, 2, 3)]
    labels = [f"{j.point.label}/s{j.seed}" for s in slices for j in s]
    assert sorted(labels) == sorted(f"{j.point.label}/s{j.seed}" for j in jobs) and len(set(labels)) == 6
    assert [len(s) for s in slices] == [2, 2, 2]  # equal costs: balanced
    assert shard_jobs(plan("rec", args)[1], (2, 3))[0].point.label == slices[1][0].point.label  # deterministic
    for i in (1, 2, 3):  # three "machines", each its own runs folder, one results folder
        run_sweep("rec", [f"runs_dir={tmp_path / f'm{i}'}"], publish=results, shard=(i, 3))
    assert sorted(fake_runs) == sorted(labels)  # every run exactly once
    merged = _rows(results / "results.csv")
    one = tmp_path / "one"
    write_report("rec", [f"runs_dir={tmp_path / 'm1'}"], out=one, results=results)
    strip = lambda rows: sorted((r["point"], r["seed"], r["psnr"]) for r in rows)  # noqa: E731
    assert strip(merged) == strip(_rows(one / "results.csv"))


@pytest.mark.parametrize("spec, env, message", [
    ("4/3", {}, "between 1 and K"), ("0/0", {}, "between 1 and K"), ("a/b", {}, "I/K"), ("2", {}, "I/K"),
    ("slurm", {}, "SLURM_ARRAY_TASK_ID"), ("slurm", {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT"),
])
def test_bad_shards_are_clear_errors(spec, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(spec, env)


def test_slurm_shards_come_from_the_array_variables():
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 4)
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3",
                                 "SLURM_ARRAY_TASK_MAX": "6"}) == (3, 4)
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None


def test_a_record_of_other_settings_is_refused_naming_the_key(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    run_sweep("rec", [f"runs_dir={tmp_path / 'a'}"], publish=results, shard=(1, 3))
    fake_runs.clear()
    with pytest.raises(ConfigError, match=r"published record.*trainer\.max_steps"):
        run_sweep("rec", [f"runs_dir={tmp_path / 'b'}", "trainer.max_steps=7"], publish=results)
    assert fake_runs == [] and not (tmp_path / "b").exists()


def test_a_malformed_record_is_named_and_not_counted(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    args = [f"runs_dir={tmp_path / 'a'}"]
    run_sweep("rec", args, publish=results, shard=(1, 3))
    bad = next((results / "runs").glob("*/s*/metrics.json"))
    bad.write_text('{"psnr": 2')  # truncated
    write_report("rec", [f"runs_dir={tmp_path / 'elsewhere'}"], out=tmp_path / "rep", results=results)
    rows = _rows(tmp_path / "rep" / "results.csv")
    broken = [r for r in rows if r["status"] == "malformed"]
    assert len(broken) == 1 and str(bad) in broken[0]["error"]
    assert sum(r["status"] == "done" for r in rows) == 1


def test_records_are_compared_as_requested_not_as_resolved():
    """A record from a bf16 machine matches a point whose precision is `auto` on any machine; a real change
    does not."""
    job = {"trainer": {"precision": "auto", "devices": "auto", "max_steps": 5}, "loader": {"global_batch_size": 32,
           "batch_size": 64}, "resolved": {}}
    rec = {"trainer": {"precision": "bf16-mixed", "devices": 2, "strategy": "ddp", "max_steps": 5},
           "loader": {"global_batch_size": 32, "batch_size": 16},
           "resolved": {"precision_requested": "auto", "devices_requested": "auto", "cpu": "X"}}
    assert record_differences(rec, job) == []
    assert requested(rec)["trainer"]["precision"] == "auto"
    job["trainer"]["max_steps"] = 6
    assert record_differences(rec, job) == ["trainer.max_steps: 5 -> 6"]


def test_a_default_written_out_is_no_difference_but_another_value_is():
    """ablations/order's `scale` point sets generator.order: scale (its sweep axis); self_correction's identical
    `none` point leaves the key at the Transformer's default. They are one setting, so the twin test must match them
    (it did not: order retrained runs another suite had published); `raster`, or a quantizer keyword off its
    default, stays a difference; a name no registry knows is compared as written."""
    rec = {"generator": {"size": "s", "cond": "class"}, "quantizer": {"name": "bsq", "bits": 16},
           "head": {"name": "bitwise"}, "seed": 3}
    job = {"generator": {"size": "s", "cond": "class", "order": "scale"},
           "quantizer": {"name": "bsq", "bits": 16, "inv_temperature": 1.0}, "head": {"name": "bitwise"}, "seed": 3}
    assert record_differences(rec, job) == []
    job["generator"]["order"] = "raster"
    assert record_differences(rec, job) == ["generator.order: 'scale' -> 'raster'"]
    job["generator"]["order"], job["quantizer"]["inv_temperature"] = "scale", 2.0
    assert record_differences(rec, job) == ["quantizer.inv_temperature: 1.0 -> 2.0"]
    rec["head"], job["head"] = {"name": "gone"}, {"name": "gone", "width": 3}
    job["quantizer"]["inv_temperature"] = 1.0
    assert record_differences(rec, job) == ["head.width: '<unset>' -> 3"]


def test_a_published_record_is_never_replaced_silently(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.json").write_text('{"psnr": 1.0}')
    results = tmp_path / "results"
    dest = publish_run(run, results, "p", 0)
    assert dest == record_dir(results, "p", 0) and read_yaml(dest / "config.yaml") == {"seed": 0}
    assert publish_run(run, results, "p", 0) == dest  # the same record: nothing to do
    (run / "metrics.json").write_text('{"psnr": 2.0}')
    with pytest.raises(ConfigError, match="never replaced"):
        publish_run(run, results, "p", 0)
    publish_run(run, results, "p", 0, force=True)
    assert json.loads((dest / "metrics.json").read_text()) == {"psnr": 2.0}
    assert not list(results.rglob(".*tmp*"))  # no temp directory left behind


def test_a_config_with_tags_is_a_clear_error_naming_the_file(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=str(p)):
        read_yaml(p)


def test_a_truncated_published_tokenizer_is_refused(tmp_path):
    d = tmp_path / "suite" / "tokenizer" / "abc123"
    d.mkdir(parents=True)
    (d / "tokenizer.ckpt").write_bytes(b"0123456789")
    (d / "tokenizer.json").write_text(json.dumps({"file": "tokenizer.ckpt", "sha256": sha256_of(d / "tokenizer.ckpt")}))
    assert published_tokenizer("abc123", [tmp_path]) == d / "tokenizer.ckpt"
    assert published_tokenizer("other", [tmp_path]) is None
    (d / "tokenizer.ckpt").write_bytes(b"01234")
    with pytest.raises(ConfigError, match="SHA-256"):
        published_tokenizer("abc123", [tmp_path])


@pytest.mark.slow
def test_a_generator_suite_uses_its_published_tokenizer_on_a_new_machine(tmp_experiments, tmp_path, monkeypatch):
    """Seed 0 on machine 1 (publishing), seed 1 on machine 2 with empty runs/: the tokenizer is not retrained but
    installed from the record, with the same weights; a truncated one is refused before anything trains."""
    (tmp_experiments / "gen.yaml").write_text(
        "stage: generator\ngenerator: {size: xs, cond: class}\nsweep:\n  head.name: [bitwise]\nseeds: [0, 1]\n")
    results = tmp_path / "results" / "gen"
    monkeypatch.setenv("BITLAB_RESULTS", str(tmp_path / "results"))
    run_sweep("gen", ["preset=smoke", "seeds=[0,1]", f"runs_dir={tmp_path / 'm1'}"], publish=results, shard=(1, 2))
    (pub,) = list((results / "tokenizer").iterdir())
    info = json.loads((pub / "tokenizer.json").read_text())
    assert sha256_of(pub / info["file"]) == info["sha256"]
    run_sweep("gen", ["preset=smoke", "seeds=[0,1]", f"runs_dir={tmp_path / 'm2'}"], publish=results)
    (installed,) = list((tmp_path / "m2" / "_tokenizers").glob("*/run"))
    assert (installed / "published_from.txt").read_text().strip() == str(pub)
    assert sha256_of(installed / "checkpoints" / "best.ckpt") == info["sha256"]
    assert len(list((results / "runs").glob("*/s*/metrics.json"))) == 2
    data = (pub / info["file"]).read_bytes()
    (pub / info["file"]).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="SHA-256"):
        run_sweep("gen", ["preset=smoke", "seeds=[0,1,2]", f"runs_dir={tmp_path / 'm3'}"], publish=results)
    assert not list((tmp_path / "m3").rglob("metrics.json"))


def test_a_command_line_sweep_is_the_equivalent_yaml_suite(tmp_experiments, tmp_path, fake_runs):
    from lab.__main__ import main

    (tmp_experiments / "one.yaml").write_text("stage: tokenizer\n")
    (tmp_experiments / "grid.yaml").write_text(
        "stage: tokenizer\nsweep:\n  quantizer.bits: [8, 10]\n  loss.recon: [l1, l2]\nseeds: [0, 1]\n"
        "report:\n  baseline: {quantizer.bits: 8}\n")
    main(["run", "one", f"runs_dir={tmp_path / 'a'}", "--sweep", "quantizer.bits=8,10", "loss.recon=l1,l2", "seeds=[0,1]"])
    main(["run", "grid", f"runs_dir={tmp_path / 'b'}"])
    a, b = _rows(tmp_path / "a" / "one" / "results.csv"), _rows(tmp_path / "b" / "grid" / "results.csv")
    strip = lambda rows: [(r["point"], r["seed"], r["psnr"]) for r in rows]  # noqa: E731
    assert len(a) == 8 and strip(a) == strip(b)
    tables = lambda p: [line for line in p.read_text().splitlines() if line.startswith("|")]  # noqa: E731
    assert tables(tmp_path / "a" / "one" / "results.md") == tables(tmp_path / "b" / "grid" / "results.md")


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "quantizer.bits="], "KEY=V1,V2"),
    (["--sweep", "quantizer.bits=8,16", "sweep={loss.recon: [l1]}"], "not both"),
])
def test_bad_command_line_sweeps_are_clear_errors(tmp_experiments, tmp_path, capsys, fake_runs, argv, message):
    from lab.__main__ import main

    (tmp_experiments / "one.yaml").write_text("stage: tokenizer\n")
    with pytest.raises(SystemExit) as e:
        main(["run", "one", f"runs_dir={tmp_path / 'r'}", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_records_of_another_preset_are_neither_counted_nor_an_error(tmp_experiments, tmp_path, fake_runs):
    (tmp_experiments / "rec.yaml").write_text(SUITE)
    results = tmp_path / "results" / "rec"
    run_sweep("rec", [f"runs_dir={tmp_path / 'a'}"], publish=results, shard=(1, 3))  # preset cpu: 2 records
    fake_runs.clear()
    smoke = ["preset=smoke", f"runs_dir={tmp_path / 'b'}"]
    run_sweep("rec", smoke, publish=tmp_path / "smoke-results")
    assert len(fake_runs) == 3  # the smoke grid (one seed) trains in full: the cpu records are another scale's
    write_report("rec", smoke, out=tmp_path / "rep", results=results)
    rows = _rows(tmp_path / "rep" / "results.csv")
    assert {r["source"] for r in rows} == {"local"} and len(rows) == 3


def test_mixed_hardware_is_flagged_against_the_baseline_the_case_pairs_with():
    """Each case pairs with the baseline of its own other axes (bsq bitwise with bsq index): a run of the vq index
    on another machine must not flag the bsq contrasts, and does flag the vq one."""
    from lab.sweeps.report_sections import hardware_section

    def row(q, head, seed, cpu, prec="bf16-mixed"):
        return dict(point=f"{q}_head-{head}", quantizer=q, head=head, seed=seed, status="done", source="published",
                    cpu=cpu, precision=prec, hardware=f"{cpu} · {prec}")

    zen4, zen3 = "AMD EPYC (family 25 model 17)", "AMD EPYC (family 25 model 1)"
    rows = [row("bsq", h, s, zen4) for h in ("index", "bitwise") for s in (0, 1)]
    rows += [row("vq", "bitwise", s, zen4) for s in (0, 1)] + [row("vq", "index", 0, zen4), row("vq", "index", 1, zen3, "32-true")]
    text = hardware_section(rows, ["quantizer", "head"], {"head": "index"})
    assert "**Mixed hardware**" in text
    flagged = text.split("**Mixed hardware**: the contrasts of ")[1].split(" against")[0]
    assert flagged == "vq_head-bitwise"
    same = [r for r in rows if not (r["quantizer"] == "vq" and r["seed"] == 1 and r["head"] == "index")]
    assert "Mixed hardware" not in hardware_section(same, ["quantizer", "head"], {"head": "index"})
    # seed 1 of both vq runs on the Zen 3: every pair on one machine kind, the machines differing across seeds only
    # (ablations/order's seeds 0-2 on a Zen 4, 3-4 on an Ice Lake): not flagged, said as such
    rows[rows.index(row("vq", "bitwise", 1, zen4))] = row("vq", "bitwise", 1, zen3, "32-true")
    text = hardware_section(rows, ["quantizer", "head"], {"head": "index"})
    assert "Mixed hardware" not in text and "not within a seed pair for vq_head-bitwise" in text
