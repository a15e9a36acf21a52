"""Nothing lost, nothing silently wrong, no code run from a file (issue 15): crafted checkpoints, path escapes,
resume of another configuration, report overwrites. Every case: exit code 2, one paragraph naming the problem,
nothing written."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def lab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_refused(r: subprocess.CompletedProcess, *expected: str, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-2000:]
    for e in expected:
        assert e in errors[0], (e, errors[0])
    return errors[0]


def snapshot(d: Path) -> dict:
    """Every file under ``d`` (run locks aside: bookkeeping that outlives its holder) -> (mtime, size)."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(d).rglob("*")
            if p.is_file() and not p.name.endswith(".lock")} if Path(d).exists() else {}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished smoke quickstart run (4 steps), shared by the tests of this file: -> its run directory."""
    runs = tmp_path_factory.mktemp("safety") / "runs"
    r = lab("run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / "quickstart" / "tiny"


class Payload:
    """Unpickling this creates ``marker``: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tiny_run, tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["extra"] = Payload(marker)
    runs = tmp_path / "runs"
    evil = runs / "quickstart" / "evil"
    (evil / "checkpoints").mkdir(parents=True)
    (evil / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    torch.save(ckpt, evil / "checkpoints" / "last.ckpt")
    before = snapshot(runs)

    r = lab("sample", str(evil), "--n", "1")
    assert_refused(r, "Refusing to load", "weights_only=True")
    r = lab("run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=evil", "resume=true")
    assert_refused(r, "Refusing to load", str(evil / "checkpoints" / "last.ckpt"))
    r = lab("run", "generator/c2i_fashion", "preset=smoke", f"runs_dir={runs}", f"tokenizer_from={evil}")
    assert_refused(r, "Refusing to load")
    assert not marker.exists()
    assert snapshot(runs) == before


def _main(capsys, *args: str) -> tuple[int, str]:
    """``python -m lab ARGS`` in this process -> (exit code, stderr)."""
    from lab.__main__ import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


def _refused(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    for e in expected:
        assert e in lines[-1], (e, lines[-1])


@pytest.mark.slow
def test_resume_of_another_configuration_or_of_a_finished_run_is_refused(tiny_run, capsys):
    runs = tiny_run.parent.parent
    before = snapshot(runs)
    base = ["run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=tiny", "resume=true"]
    _refused(*_main(capsys, *base, "data.name=fashion_mnist"), "different configuration", "data.name: 'emoji32' -> 'fashion_mnist'")
    _refused(*_main(capsys, *base, "optim.learning_rate=0.5", "eval.batches=3"), "optim.learning_rate: ", "-> 0.5",
             "eval.batches: 1 -> 3", "resume_allow")
    _refused(*_main(capsys, *base, "trainer.max_steps=8"), "trainer.max_steps: 4 -> 8", "resume_allow=[trainer.max_steps]")
    _refused(*_main(capsys, *base), "has finished", "nothing to resume")
    _refused(*_main(capsys, *base, "resume_allow=[trainer.max_steps]"), "has finished")  # allowed, but no more steps
    assert snapshot(runs) == before


@pytest.mark.slow
def test_a_finished_run_is_extended_only_on_purpose_and_keeps_its_metrics(tiny_run, tmp_path, capsys):
    import json
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.parent.parent, runs)
    run = runs / "quickstart" / "tiny"
    old = (run / "metrics.json").read_text()
    from lab.__main__ import main

    main(["run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=tiny", "resume=true",
          "trainer.max_steps=6", "resume_allow=[trainer.max_steps]"])  # (an error would raise SystemExit)
    assert (run / "metrics.4-steps.json").read_text() == old  # the earlier result is kept
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    log = json.loads((run / "resumes.json").read_text())
    assert log[-1]["changed"] == ["trainer.max_steps: 4 -> 6"] and log[-1]["allowed"] == ["trainer.max_steps"]
    assert "max_steps: 6" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_a_second_resume_of_a_run_in_use_is_refused(tiny_run, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.parent.parent, runs)
    run = runs / "quickstart" / "tiny"
    (run / "metrics.json").unlink()  # an unfinished run, being resumed by another process
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from lab.runtime.runlock import try_lock\n"
        f"assert try_lock(Path({str(run)!r})); print('held', flush=True); time.sleep(60)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(runs)
        code, err = _main(capsys, "run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=tiny", "resume=true")
        _refused(code, err, "is in use by process", str(holder.pid), "one run is trained by one process at a time")
        assert snapshot(runs) == before
    finally:
        holder.kill()
        holder.wait()


def _fake_sweep(tmp_experiments, monkeypatch):
    """A two-point sweep whose runs are stubs writing config.yaml and metrics.json (the bookkeeping, no training)."""
    import json

    from lab.stages import run as run_mod
    from lab.core.registry import save_config

    (tmp_experiments / "pts.yaml").write_text("stage: generator\nsweep:\n  optim.learning_rate: [0.001, 0.002]\n")

    def fake_run(cfg):
        run_dir = Path(cfg["runs_dir"]) / cfg["name"] / cfg["run_id"]
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.json").write_text(json.dumps({"val_loss": 0.5, "steps": cfg["trainer"]["max_steps"]}))
        return run_dir, {}

    monkeypatch.setattr(run_mod, "run_experiment", fake_run)


def test_a_sweep_never_reports_runs_of_other_settings_as_its_own(tmp_experiments, tmp_path, monkeypatch, capsys):
    _fake_sweep(tmp_experiments, monkeypatch)
    args = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}"]
    from lab.__main__ import main

    main(["run", "pts", *args])
    before = snapshot(tmp_path / "runs")
    code, err = _main(capsys, "run", "pts", *args, "trainer.max_steps=200")
    _refused(code, err, "2 existing run(s)", "another configuration", "trainer.max_steps: 4 -> 200")
    code, err = _main(capsys, "report", "pts", *args, "trainer.max_steps=200")
    _refused(code, err, "trainer.max_steps: 4 -> 200")
    assert snapshot(tmp_path / "runs") == before


def test_a_published_report_is_not_replaced_by_one_with_fewer_finished_runs(tmp_experiments, tmp_path, monkeypatch, capsys):
    _fake_sweep(tmp_experiments, monkeypatch)
    args = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}"]
    from lab.__main__ import main

    main(["run", "pts", *args])
    out = tmp_path / "results" / "pts"
    main(["report", "pts", *args, "--out", str(out)])
    assert "Runs: 2 of 2 finished" in (out / "report.md").read_text()
    # the run is gone here and its published record too (a record alone would still count it)
    (tmp_path / "runs" / "pts" / "learning-rate-0.002" / "s0" / "metrics.json").unlink()
    shutil.rmtree(out / "runs" / "learning-rate-0.002" / "s0")
    published = snapshot(out)
    code, err = _main(capsys, "report", "pts", *args, "--out", str(out))
    _refused(code, err, "Refusing to overwrite the report", "it has 2 finished runs", "only 1 of 2", "--force")
    assert snapshot(out) == published
    main(["report", "pts", *args, "--out", str(out), "--force"])
    assert "Runs: 1 of 2 finished" in (out / "report.md").read_text()


def test_a_sweep_that_ends_with_a_run_missing_exits_non_zero_naming_it(tmp_experiments, tmp_path, monkeypatch, capsys):
    from lab.stages import run as run_mod
    from lab.train.modules import NonFiniteLossError

    _fake_sweep(tmp_experiments, monkeypatch)
    real = run_mod.run_experiment

    def second_fails(cfg):
        if cfg["optim"]["learning_rate"] == 0.002:
            raise NonFiniteLossError("Non-finite loss (nan) at step 3")
        return real(cfg)

    monkeypatch.setattr(run_mod, "run_experiment", second_fails)
    code, err = _main(capsys, "run", "pts", "preset=smoke", f"runs_dir={tmp_path / 'runs'}")
    assert code == 1 and "1 run(s) not finished: learning-rate-0.002/s0 (failed)" in err, err
