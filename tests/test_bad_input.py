"""Bad input: each case is one paragraph on stderr, a non-zero exit, no traceback, nothing overwritten."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_paragraph as _one_paragraph
from cli_helpers import run_main as _main
import torch

from lab.config import load_experiment
from lab.train.modules import NonFiniteLossError, TokenizerModule
from lab.stages.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "run", *args, f"runs_dir={runs}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _assert_clear_error(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # one paragraph, last; anything before it is progress output (e.g. a dataset cache being built)
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-2000:]
    for e in expected:
        assert e in errors[0], (e, errors[0])


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["generator/c2i_fashion", "head.name=softmax"], ["Unknown head 'softmax'", "bitwise", "index"]),
    (["generator/c2i_fashion", "correction.name=flip"], ["Unknown correction 'flip'", "bitflip"]),
    (["generator/c2i_fashion", "generator.size=xxl"], ["Unknown generator.size 'xxl'"]),
    (["generator/c2i_fashion", "quantizer.bits=32", "head.name=index", "correction.name=none"],
     ["index head", "2^32", "parameters", "bitwise head needs"]),
    (["generator/c2i_fashion", "quantizer={name: vq}", "correction.name=bitflip"], ["needs bit codes", "random_index"]),
    (["generator/c2i_fashion", "tokenizer_from=/no/such/tokenizer"], ["does not exist"]),
    (["quickstart", "data={name: imagefolder, path: /no/such/folder}"], ["/no/such/folder"]),
])
def test_bad_input_is_refused_before_anything_is_written(args, expected, tmp_path):
    runs = tmp_path / "runs"
    r = _cli(*args, "preset=smoke", runs=runs)
    _assert_clear_error(r, *expected)
    assert not runs.exists() or not any(runs.rglob("config.yaml"))


@pytest.mark.slow
def test_tokenizer_from_a_folder_without_checkpoint(tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    _assert_clear_error(_cli("generator/c2i_fashion", "preset=smoke", f"tokenizer_from={empty}", runs=tmp_path / "runs"),
                        "no checkpoint there")


@pytest.mark.slow
def test_checkpoint_from_another_configuration_is_refused_and_nothing_is_overwritten(tmp_path):
    runs = tmp_path / "runs"
    run_dir, _ = run_experiment(load_experiment("quickstart", ["preset=smoke", f"runs_dir={runs}", "run_id=a"]))
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    r = _cli("quickstart", "preset=smoke", "run_id=a", "resume=true", "tokenizer.latent_dim=8", runs=runs)
    _assert_clear_error(r, "different configuration", "tokenizer.latent_dim", "-> 8", "config.yaml")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before

    # a tokenizer checkpoint used by a generator that asks for another quantizer
    r = _cli("generator/c2i_fashion", "preset=smoke", f"tokenizer_from={run_dir}", "quantizer.bits=12", runs=runs)
    _assert_clear_error(r, "was trained with quantizer", "'bits': 16")


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = TokenizerModule.train_loss

    def poisoned(self, batch):
        loss, rec, lp, out = real(self, batch)
        if self.global_step >= 3:
            loss = loss * float("nan")
        return loss, rec, lp, out

    monkeypatch.setattr(TokenizerModule, "train_loss", poisoned)
    cfg = load_experiment("quickstart", ["preset=smoke", f"runs_dir={tmp_path / 'runs'}", "run_id=nan",
                                         "trainer.max_steps=8"])
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss \(nan\) at step 3.*last good checkpoint"):
        run_experiment(cfg)
    run_dir = tmp_path / "runs" / "quickstart" / "nan"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2  # saved every 2 steps at smoke scale; step 3 never got there
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists() and (run_dir / "config.yaml").is_file()


def test_weight_averaging_of_a_generator_is_refused_before_training(tmp_path):
    from lab.stages.generator import preflight
    from lab.core.registry import ConfigError

    cfg = load_experiment("generator/c2i_fashion", ["optim.ema_decay=0.999", f"runs_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="tokenizer stage only"):
        preflight(cfg)






@pytest.mark.parametrize("args, expected", [
    (["quickstart", "trainer.max_steps=-3"], ["trainer.max_steps=-3", ">= 1"]),
    (["quickstart", "loader.batch_size=0"], ["loader.batch_size=0", ">= 1"]),
    (["quickstart", "checkpoint_every_n_steps=-5"], ["checkpoint_every_n_steps=-5", ">= 1"]),
    (["quickstart", "seed=-1"], ["seed=-1", "[0, 2^32)"]),
    (["quickstart", "seeds=3"], ["seeds=3", "no `sweep:`"]),
    (["quickstart", "seeds=[0,1]"], ["seeds=[0, 1]", "no `sweep:`"]),
    (["ablations/order", "seeds=3"], ["seeds=3", "non-empty list of integers"]),
    (["ablations/order", "seeds=[]"], ["seeds=[]", "non-empty list"]),
    (["ablations/order", "seeds=[0,0]"], ["seeds=[0, 0]", "repeats [0]", "distinct"]),
    (["quickstart", "generator.size=m"], ["generator.size='m'", "tokenizer run", "stage: generator"]),
    (["quickstart", "head.name=index"], ["head.name='index'", "tokenizer run"]),
    (["generator/c2i_fashion", "sample.top_p=7"], ["sample.top_p=7", "(0, 1]"]),
    (["generator/c2i_fashion", "sample.temperature=-1"], ["sample.temperature=-1", ">= 0"]),
    (["generator/c2i_fashion", "tokenizer_train.max_steps=0"], ["tokenizer_train.max_steps=0", ">= 1"]),
    # paths stay inside experiments/ and the runs directory
    (["../../evil"], ["'../../evil'", "inside experiments/"]),
    (["/etc/passwd"], ["'/etc/passwd'", "inside experiments/"]),
    (["./quickstart"], ["'./quickstart'", "inside experiments/"]),
    (["quickstart", "run_id=../../x"], ["run_id='../../x'", "single name"]),
    (["quickstart", "run_id=/tmp/abs"], ["run_id='/tmp/abs'", "single name"]),
    (["quickstart", "run_id=a/b"], ["run_id='a/b'", "single name"]),
    (["quickstart", "run_id=.."], ["run_id='..'", "single name"]),
])
def test_out_of_range_values_and_paths_are_one_paragraph_and_write_nothing(args, expected, capsys, tmp_path):
    runs = tmp_path / "runs"
    code, err = _main(capsys, "run", *args, "preset=smoke", f"runs_dir={runs}")
    _one_paragraph(code, err, *expected)
    assert not runs.exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("args, expected", [
    (["--n", "0"], ["--n=0", ">= 1"]), (["--n", "-2"], ["--n=-2"]), (["--cfg", "-1"], ["--cfg=-1.0", ">= 0"]), (["--guidance", "-1"], ["--guidance=-1.0", ">= 0"]),
    (["--temperature", "-1"], ["--temperature=-1.0", ">= 0"]), (["--top-p", "7"], ["--top-p=7.0", "(0, 1]"]),
    (["--top-p", "0"], ["--top-p=0.0", "(0, 1]"]), (["--top-k", "-3"], ["--top-k=-3", ">= 0"]),
])
def test_sample_options_out_of_range(args, expected, capsys, tmp_path):
    code, err = _main(capsys, "sample", str(tmp_path), *args)  # checked before the run directory is even read
    _one_paragraph(code, err, *expected)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_yaml_key_names_the_key_and_lines(tmp_experiments, capsys, tmp_path):
    (tmp_experiments / "dup.yaml").write_text("trainer:\n  max_steps: 10\n  log_every_n_steps: 1\n  max_steps: 20\n")
    code, err = _main(capsys, "run", "dup", f"runs_dir={tmp_path / 'runs'}")
    _one_paragraph(code, err, "Duplicate key", "'max_steps' at line 4", "line 2")
    assert not (tmp_path / "runs").exists()


def test_sweep_labels_never_leave_the_suite_directory(tmp_experiments, capsys, tmp_path):
    (tmp_experiments / "dots.yaml").write_text("sweep:\n  cases:\n    - {label: '..', seed: 1}\n    - {label: ok, seed: 2}\n")
    code, err = _main(capsys, "run", "dots", "preset=smoke", f"runs_dir={tmp_path / 'runs'}")
    _one_paragraph(code, err, "sweep.cases[0].label='..'", "directory name")
    assert not (tmp_path / "runs").exists()


def test_an_image_folder_too_small_for_a_validation_split_stops_before_training(capsys, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("BITLAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "only.png")
    runs = tmp_path / "runs"
    code, err = _main(capsys, "run", "quickstart", "preset=smoke", f"runs_dir={runs}",
                      f"data={{name: imagefolder, path: {folder}}}")
    _one_paragraph(code, err, "split is empty", "val_fraction")
    assert not runs.exists()


def test_report_of_a_suite_that_never_ran_is_an_error(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = _main(capsys, "report", "ablations/order", "preset=smoke", f"runs_dir={tmp_path / 'runs'}", "--out", str(out))
    _one_paragraph(code, err, "Nothing to report for ablations/order", "Run the suite first")
    assert not out.exists()
