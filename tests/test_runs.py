"""End-to-end runs at smoke scale: every experiment YAML, outputs, resume, no overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lab.config import available_experiments, load_experiment
from lab.core.registry import ConfigError
from lab.stages.run import run_experiment

TOKENIZER_KEYS = {"psnr", "ssim", "lpips", "rfid", "per_scale", "wall_time_s", "peak_memory_mb", "train_peak_memory_mb",
                  "rkid", "rkid_std", "rfid_floor", "rkid_floor", "fid_reference", "eval_time_s"}
GENERATOR_KEYS = {"val_loss", "token_accuracy", "bit_accuracy", "gfid", "params", "head_params", "per_scale",
                  "wall_time_s", "peak_memory_mb", "train_peak_memory_mb",
                  "kid", "kid_std", "gfid_floor", "gfid_ceiling", "gfid_normalized", "kid_floor", "kid_ceiling",
                  "kid_normalized", "fid_reference", "fid_note", "eval_time_s"}  # the evaluation protocol (issue 13)


def smoke(name: str, tmp_path: Path, *extra: str):
    cfg = load_experiment(name, ["preset=smoke", f"runs_dir={tmp_path / 'runs'}", *extra])
    return cfg


SINGLE_RUN = [n for n in available_experiments() if not n.startswith("ablations/")]


@pytest.mark.slow
@pytest.mark.parametrize("name", SINGLE_RUN)
def test_every_experiment_runs_at_smoke_scale(name, tmp_path):
    cfg = smoke(name, tmp_path)
    run_dir, metrics = run_experiment(cfg)
    assert (run_dir / "config.yaml").is_file()
    saved = json.loads((run_dir / "metrics.json").read_text())
    keys = TOKENIZER_KEYS if cfg.stage == "tokenizer" else GENERATOR_KEYS
    assert keys <= set(saved), keys - set(saved)
    for k in keys - {"per_scale"}:
        assert saved[k] == saved[k], f"{k} is NaN"  # finite numbers
    assert 0 < saved["train_peak_memory_mb"] <= saved["peak_memory_mb"]  # training alone vs training + evaluation
    assert 0 < saved["eval_time_s"] < saved["wall_time_s"]
    assert saved["fid_reference"]["split"] == ("validation" if cfg.stage == "tokenizer" else "train")
    assert saved["fid_reference"]["count"] <= cfg.eval.fid_reference_limit  # the smoke preset's small reference
    if cfg.stage == "tokenizer":
        assert ("bit_entropy" in saved) != ("codebook_usage" in saved)
        assert len(saved["per_scale"]["prefix_psnr"]) == len(cfg.tokenizer.get("scales", [1, 2, 3, 4, 6, 8]))
    ck = run_dir / "checkpoints"
    assert (ck / "last.ckpt").is_file() and (ck / "best.ckpt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint_step(tmp_path):
    cfg = smoke("quickstart", tmp_path, "run_id=r1", "eval.fid_samples=0")
    run_dir, m1 = run_experiment(cfg)
    assert m1["steps"] == 4
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4
    cfg2 = smoke("quickstart", tmp_path, "run_id=r1", "resume=true", "trainer.max_steps=6", "eval.fid_samples=0",
                 "resume_allow=[trainer.max_steps]")  # a finished run is extended only on purpose
    run_dir2, m2 = run_experiment(cfg2)
    assert run_dir2 == run_dir and m2["steps"] == 6
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    cfg = smoke("quickstart", tmp_path, "resume=true")
    with pytest.raises(ConfigError, match="no run of 'quickstart' has a checkpoint"):
        run_experiment(cfg)


@pytest.mark.slow
def test_a_run_never_overwrites_another(tmp_path):
    cfg = smoke("quickstart", tmp_path, "run_id=same", "trainer.max_steps=1", "eval.fid_samples=0")
    run_experiment(cfg)
    before = (tmp_path / "runs" / "quickstart" / "same" / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        run_experiment(cfg)
    assert (tmp_path / "runs" / "quickstart" / "same" / "metrics.json").read_text() == before
    # two runs without a run_id get two directories
    a, _ = run_experiment(smoke("quickstart", tmp_path, "trainer.max_steps=1", "eval.fid_samples=0"))
    b, _ = run_experiment(smoke("quickstart", tmp_path, "trainer.max_steps=1", "eval.fid_samples=0"))
    assert a != b


@pytest.mark.slow
def test_multiscale_residual_shrinks_on_a_trained_tokenizer(tmp_path):
    cfg = smoke("quickstart", tmp_path, "trainer.max_steps=30", "eval.fid_samples=0", "loss.lpips_weight=0.0")
    run_dir, _ = run_experiment(cfg)
    from lab.stages.generator import load_tokenizer

    tok = load_tokenizer(run_dir).tokenizer.eval()
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        f = tok.encode(x)
        q = tok.msq(f, keep_prefixes=True)
    errs = [float((f - p).pow(2).mean()) for p in q.prefixes]
    base = float(f.pow(2).mean())
    assert errs[0] < base
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [("generator/c2i_fashion", ["--class", "3"]), ("generator/t2i_emoji", ["--prompt", "red apple", "--prompt", "pig face"])])
def test_sample_command_writes_a_png(name, arg, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from lab.config import ROOT

    run_dir, _ = run_experiment(smoke(name, tmp_path, "eval.fid_samples=0"))
    out = tmp_path / "grid.png"
    r = subprocess.run([sys.executable, "-m", "lab", "sample", str(run_dir), *arg, "--n", "4", "--guidance", "3", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    img.verify()
    assert Image.open(out).size[0] > 32
    bad = subprocess.run([sys.executable, "-m", "lab", "sample", str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_weight_average_is_what_gets_evaluated_and_loaded(tmp_path):
    """optim.ema_decay: the checkpoint holds the raw and the averaged tokenizer, they differ after training, the
    average is warm-started (the data-initialised scale gains are not dragged from zero), and loading the
    run for downstream use gives the average."""
    from lab.stages.generator import load_tokenizer

    run_dir, _ = run_experiment(smoke("quickstart", tmp_path, "optim.ema_decay=0.9", "trainer.max_steps=6",
                                      "eval.fid_samples=0"))
    sd = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    raw = {k[len("tokenizer."):]: v for k, v in sd.items() if k.startswith("tokenizer.")}
    ema = {k[len("tokenizer_ema."):]: v for k, v in sd.items() if k.startswith("tokenizer_ema.")}
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    assert torch.allclose(ema["msq.log_gain"], raw["msq.log_gain"], atol=0.05)  # warm-up: not 0.9**6 of the way from 0
    loaded = load_tokenizer(run_dir / "checkpoints" / "last.ckpt").tokenizer.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
