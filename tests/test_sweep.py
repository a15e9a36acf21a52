"""Sweeps: grid expansion, one tokenizer shared by many generator runs, resume after a stop, results schema,
and every ablation suite at smoke scale."""
from __future__ import annotations

import csv
from pathlib import Path
import json

import pytest

from lab import config
from lab.stages import run as run_mod
from lab.config import ROOT, available_experiments
from lab.core.registry import ConfigError
from lab.runtime.files import exclusive
from lab.sweeps.plan import FIXED_COLUMNS, expand, plan
from lab.sweeps.sweep import run_sweep
from lab.sweeps.report import write_report

SUITES = [n for n in available_experiments() if n.startswith("ablations/")]


def test_expand_is_the_product_of_the_axes_in_order():
    pts = expand({"head.name": ["index", "bitwise"], "generator.size": ["xs", "s", "m"]})
    assert [p.label for p in pts] == [f"head-{h}_size-{s}" for h in ("index", "bitwise") for s in ("xs", "s", "m")]
    assert pts[1].layer == {"head": {"name": "index"}, "generator": {"size": "s"}}
    assert pts[1].values == {"head.name": "index", "generator.size": "s"}


def test_cases_change_keys_together_and_cross_with_other_axes():
    pts = expand({
        "cases": [{"label": "bsc", "correction": {"name": "bitflip", "requantize": True}},
                  {"correction.name": "none"}],
        "seed_free.axis": [1, 2],
    })
    assert [p.label for p in pts] == ["bsc_axis-1", "bsc_axis-2", "correction-none_axis-1", "correction-none_axis-2"]
    assert pts[0].layer == {"correction": {"name": "bitflip", "requantize": True}, "seed_free": {"axis": 1}}
    assert pts[2].values == {"case": "correction-none", "seed_free.axis": 1}
    assert [p.label for p in expand(None)] == ["default"]


@pytest.mark.parametrize("sweep, message", [
    ({"head.name": "index"}, "non-empty list"),
    ({"head.name": []}, "non-empty list"),
    ({"cases": [{"label": "a", "seed": 1}, {"label": "a", "seed": 2}]}, "share a label"),
    ({"cases": ["index"]}, "mapping of config keys"),
])
def test_bad_sweeps_are_clear_errors(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand(sweep)


def test_every_point_is_validated_before_anything_trains(tmp_experiments, tmp_path):
    (tmp_experiments / "bad.yaml").write_text("stage: generator\nsweep:\n  head.nmae: [index]\n")
    with pytest.raises(ConfigError, match=r"sweep point nmae-index.*nmae"):
        plan("bad", [f"runs_dir={tmp_path / 'runs'}"])
    (tmp_experiments / "bad2.yaml").write_text("stage: generator\nsweep:\n  head.name: [index, softmax]\n")
    with pytest.raises(ConfigError, match=r"softmax.*bitwise"):
        plan("bad2", [f"runs_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sweep_shares_its_tokenizer_and_resumes_without_redoing_finished_runs(tmp_experiments, tmp_path, monkeypatch):
    (tmp_experiments / "mini.yaml").write_text(
        "stage: generator\ngenerator: {size: xs, cond: class}\n"
        "sweep:\n  head.name: [index, bitwise]\nseeds: [0, 1]\n"
        "report:\n  plots:\n    - {kind: bar, x: head.name, y: val_loss}\n    - {kind: curve, tag: val/loss, hue: head.name}\n"
    )
    args = ["preset=smoke", "seeds=[0,1]", f"runs_dir={tmp_path / 'runs'}"]
    real_run = run_mod.run_experiment
    calls = []

    def stop_on_third(cfg):
        calls.append(cfg["name"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the sweep is stopped half way
        return real_run(cfg)

    monkeypatch.setattr(run_mod, "run_experiment", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep("mini", args)
    sweep_dir = tmp_path / "runs" / "mini"
    finished = sorted(sweep_dir.glob("*/s*/metrics.json"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    calls.clear()
    monkeypatch.setattr(run_mod, "run_experiment", lambda cfg: calls.append(cfg["name"]) or real_run(cfg))
    run_sweep("mini", args)
    assert len(calls) == 2  # only the two unfinished runs
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished runs untouched
    assert len(list(sweep_dir.glob("*/s*/metrics.json"))) == 4

    # one tokenizer, trained once, used by all four generator runs
    tokenizers = list((tmp_path / "runs" / "_tokenizers").glob("*/run/metrics.json"))
    assert len(tokenizers) == 1
    used = {(p / "tokenizer.txt").read_text().strip() for p in sweep_dir.glob("*/s*")}
    assert used == {str(tokenizers[0].parent)}

    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 4
    for col in (*FIXED_COLUMNS, "head.name", "params", "head_params", "flops_per_step", "wall_time_s",
                "peak_memory_mb", "val_loss", "gfid", "per_scale.val_loss.1"):
        assert col in rows[0], col
    assert {r["status"] for r in rows} == {"done"}
    assert sorted((r["head.name"], r["seed"]) for r in rows) == [("bitwise", "0"), ("bitwise", "1"), ("index", "0"), ("index", "1")]
    index_row = next(r for r in rows if r["head.name"] == "index")
    bit_row = next(r for r in rows if r["head.name"] == "bitwise")
    assert int(index_row["head_params"]) > int(bit_row["head_params"])  # 2^16 logits vs 16
    assert float(index_row["flops_per_step"]) > 0
    md = (sweep_dir / "results.md").read_text()
    first_table = md[md.index("| head.name | seeds |"):].split("\n\n")[0]  # results.md holds more tables after it
    assert first_table.count("| 2 |") == 2  # mean +- std over the two seeds, one row per head
    assert len(list((sweep_dir / "plots").glob("*.png"))) == 2

    # the report can be rebuilt elsewhere without training
    out = write_report("mini", args, out=tmp_path / "published")
    assert (out / "report.md").is_file() and (out / "results.csv").read_text() == (sweep_dir / "results.csv").read_text()


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """Runs a suite at smoke scale once per test module (the notebooks reuse it)."""
    done: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("suites")

    def get(name: str):
        if name not in done:
            args = ["preset=smoke", f"runs_dir={root / 'runs'}"]
            suite, jobs = plan(name, args)
            done[name] = (suite, jobs, run_sweep(name, args), args)
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", SUITES)
def test_every_suite_runs_at_smoke_scale(name, smoke_sweep):
    suite, jobs, sweep_dir, _ = smoke_sweep(name)
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == len(jobs) == len(expand(config.to_dict(suite["sweep"])))
    assert {r["status"] for r in rows} == {"done"}, [(r["point"], r.get("error")) for r in rows]
    for r in rows:
        metric = "psnr" if suite["stage"] == "tokenizer" else "gfid"
        assert float(r[metric]) == float(r[metric])
    specs = config.to_dict(suite["report"])["plots"]
    assert len(list((sweep_dir / "plots").glob("*.png"))) == len(specs)
    header = (ROOT / "experiments" / f"{name}.yaml").read_text().splitlines()[0]
    assert header.startswith("# ") and any(ref in header for ref in ("Tab.", "Fig.", "VAR"))  # what it reproduces
    assert header[2:] in (sweep_dir / "results.md").read_text()
    json.loads((sweep_dir / "sweep.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["explore_runs", "ablation_report"])
def test_notebooks_execute_against_a_smoke_sweep(notebook, smoke_sweep, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    suite, jobs, sweep_dir, args = smoke_sweep("ablations/order")
    published = tmp_path / "results"
    write_report("ablations/order", args, out=published / "order")
    monkeypatch.setenv("BITLAB_RUN", str(sweep_dir))
    monkeypatch.setenv("BITLAB_RESULTS", str(published))
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if notebook == "explore_runs":
        assert "2 run(s)" in text and "gfid" in text
    else:
        assert "order" in text and "gfid" in text


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_experiments, tmp_path, monkeypatch):
    """Out of memory / a diverging loss belong to the grid point: recorded in results.csv, skipped on re-runs.
    (run_experiment is replaced by a stub: this checks the runner's bookkeeping, not training.)"""
    from lab.train.modules import NonFiniteLossError

    (tmp_experiments / "fails.yaml").write_text("stage: generator\nsweep:\n  optim.learning_rate: [0.001, 1000.0]\n")
    calls = []

    def fake_run(cfg):
        calls.append(cfg["optim"]["learning_rate"])
        if cfg["optim"]["learning_rate"] > 1:
            raise NonFiniteLossError("Non-finite loss (nan) at step 3")
        run_dir = Path(cfg["runs_dir"]) / cfg["name"] / cfg["run_id"]
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"val_loss": 0.5, "gfid": 100.0}))
        return run_dir, {}

    monkeypatch.setattr(run_mod, "run_experiment", fake_run)
    args = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}"]
    sweep_dir = run_sweep("fails", args)
    rows = {r["optim.learning_rate"]: r for r in csv.DictReader(open(sweep_dir / "results.csv"))}
    assert rows["0.001"]["status"] == "done" and rows["1000.0"]["status"] == "non_finite_loss"
    assert "Non-finite" in rows["1000.0"]["error"]
    assert "non finite loss" in (sweep_dir / "results.md").read_text()
    calls.clear()
    run_sweep("fails", args)
    assert calls == []  # neither the finished nor the failed point runs again


def test_concurrent_invocations_share_the_work(tmp_experiments, tmp_path, monkeypatch):
    """A run whose lock a live process holds is left to it; a lock file whose process died, or whose PID now
    belongs to another (live) process that does not hold it, is taken over; locks are released after each run.
    (run_experiment is a stub: this checks the runner's bookkeeping.)"""
    import os
    import subprocess
    import sys

    (tmp_experiments / "shared.yaml").write_text("stage: generator\nsweep:\n  optim.learning_rate: [0.001, 0.002, 0.003]\n")
    calls = []

    def fake_run(cfg):
        calls.append(cfg["optim"]["learning_rate"])
        run_dir = Path(cfg["runs_dir"]) / cfg["name"] / cfg["run_id"]
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"val_loss": 0.5}))
        return run_dir, {}

    monkeypatch.setattr(run_mod, "run_experiment", fake_run)
    args = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}"]
    base = tmp_path / "runs" / "shared"
    held = base / "learning-rate-0.001" / "s0"
    live = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lab.runtime.runlock import try_lock\n"
        f"assert try_lock(Path({str(held)!r})); print('held', flush=True); time.sleep(60)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        assert live.stdout.readline().strip() == "held"
        # a claim file naming a dead PID, and one naming a live PID (this very process: a reused PID) that holds no lock
        for point, pid in (("learning-rate-0.002", dead.pid), ("learning-rate-0.003", os.getppid())):
            (base / point).mkdir(parents=True)
            (base / point / ".s0.lock").write_text(json.dumps({"pid": pid, "host": "elsewhere"}))
        run_sweep("shared", args)
    finally:
        live.kill()
        live.wait()
    assert calls == [0.002, 0.003]  # the held run is skipped, the stale claims taken over
    calls.clear()
    run_sweep("shared", args)  # the holder died: its run is free now
    assert calls == [0.001]


def test_a_tokenizer_needed_by_two_processes_is_trained_once(tmp_path):
    """Two sweep invocations that need the same uncached tokenizer: the second waits on the cache entry's lock
    (instead of deleting the first one's half-trained directory), and the OS frees the lock if its holder dies."""
    import subprocess
    import sys
    import time

    lock, log = tmp_path / ".training.lock", tmp_path / "order.txt"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lab.runtime.files import exclusive\n"
        f"log = Path({str(log)!r})\n"
        f"with exclusive(Path({str(lock)!r})):\n"
        "    log.write_text('holder-start\\n'); time.sleep(1.5)\n"
        "    log.write_text(log.read_text() + 'holder-end\\n')\n")])
    try:
        for _ in range(1200):  # wait (up to a minute on a loaded machine) until the holder owns the lock
            if log.is_file():
                break
            time.sleep(0.05)
        with exclusive(lock, waiting="waiting"):
            log.write_text(log.read_text() + "second\n")
    finally:
        holder.wait(timeout=30)
    assert log.read_text().split() == ["holder-start", "holder-end", "second"]

    killed = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from lab.runtime.files import exclusive\n"
        f"with exclusive(Path({str(lock)!r})):\n"
        f"    Path({str(log)!r}).write_text('held\\n'); time.sleep(60)\n")])
    for _ in range(1200):
        if log.read_text() == "held\n":
            break
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    with exclusive(lock):  # taken at once: the dead holder's lock went with its process
        pass


def test_exclude_drops_the_points_that_ask_nothing_and_refuses_what_matches_none():
    sweep = {"cases": [{"label": "bsq", "quantizer.name": "bsq"}, {"label": "vq", "quantizer.name": "vq"}],
             "head.name": ["index", "bitwise"], "exclude": [{"case": "vq", "head.name": "bitwise"}]}
    assert [p.label for p in expand(sweep)] == ["bsq_head-index", "bsq_head-bitwise", "vq_head-index"]
    with pytest.raises(ConfigError, match="matches no point"):
        expand({**sweep, "exclude": [{"case": "lfq"}]})
    with pytest.raises(ConfigError, match="not a column"):
        expand({**sweep, "exclude": [{"head.nmae": "index"}]})
    with pytest.raises(ConfigError, match="list of mappings"):
        expand({**sweep, "exclude": "vq"})
