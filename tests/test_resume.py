"""Interruption: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cmd(name: str, runs: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lab", "run", name, "preset=smoke", f"runs_dir={runs}", "deterministic=true",
            "trainer.max_steps=36", "checkpoint_every_n_steps=4", "trainer.val_check_interval=9",
            f"run_id={run_id}", *extra]


def _kill_after_a_checkpoint(cmd: list[str], ckpt: Path, min_step: int, timeout: float = 600) -> int:
    """Start ``cmd``, SIGKILL it once its last.ckpt has reached ``min_step``; -> the step it was killed after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed")
            if ckpt.is_file():
                try:
                    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
                except Exception:  # noqa: BLE001 - being replaced right now; look again
                    step = -1
                if step >= min_step:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return step
            time.sleep(0.05)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "generator/c2i_fashion"])
def test_sigkill_then_resume_equals_uninterrupted(name, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_cmd(name, runs, "full"), cwd=ROOT, env=env, check=True, capture_output=True)
    killed_dir = runs / name / "killed"
    step = _kill_after_a_checkpoint(_cmd(name, runs, "killed"), killed_dir / "checkpoints" / "last.ckpt", min_step=12)
    assert 12 <= step < 36 and not (killed_dir / "metrics.json").exists()
    subprocess.run(_cmd(name, runs, "killed", "resume=true"), cwd=ROOT, env=env, check=True, capture_output=True)

    full = json.loads((runs / name / "full" / "metrics.json").read_text())
    resumed = json.loads((killed_dir / "metrics.json").read_text())
    assert resumed["steps"] == full["steps"] == 36
    keys = ["psnr", "ssim", "lpips", "rfid"] if name == "quickstart" else ["val_loss", "bit_accuracy", "gfid"]
    for k in keys:
        assert resumed[k] == pytest.approx(full[k], rel=1e-5, abs=1e-6), (k, step)
    for k, values in full["per_scale"].items():
        assert resumed["per_scale"][k] == pytest.approx(values, rel=1e-5, abs=1e-6), k


def _signal_after_a_checkpoint(cmd: list[str], ckpt: Path, min_step: int, sig: int, timeout: float = 600):
    """Start ``cmd``, send ``sig`` once its last.ckpt has reached ``min_step`` and the run has gone on a little
    further; -> (exit code, stderr, seconds from the signal to the exit)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be signalled: {proc.stderr.read()[-2000:]}")
            if ckpt.is_file():
                try:
                    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
                except Exception:  # noqa: BLE001 - being replaced right now; look again
                    step = -1
                if step >= min_step:
                    time.sleep(0.2)  # somewhere between two periodic checkpoints
                    t_sig = time.time()
                    os.kill(proc.pid, sig)
                    err = proc.communicate(timeout=120)[1]
                    return proc.returncode, err, time.time() - t_sig
            time.sleep(0.05)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_and_sigint_checkpoint_the_current_step_and_resume_exactly(tmp_path):
    """SIGTERM (a cluster or container stopping the job): a checkpoint at the current step, a clean exit (143)
    within 60 s naming the resume command; SIGINT likewise (130). Resumed twice, the run ends where an
    uninterrupted one ends."""
    name, runs = "quickstart", tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_cmd(name, runs, "full"), cwd=ROOT, env=env, check=True, capture_output=True)
    run = runs / name / "term"
    ckpt = run / "checkpoints" / "last.ckpt"
    rc, err, took = _signal_after_a_checkpoint(_cmd(name, runs, "term", "checkpoint_every_n_steps=5"), ckpt, 5, signal.SIGTERM)
    assert rc == 143 and took < 60, (rc, took, err[-2000:])
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM)"), err[-2000:]
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert f"stopped at step {step}, checkpoint saved" in err and "run_id=term resume=true" in err
    assert 5 <= step < 30 and not (run / "metrics.json").exists(), step

    rc, err, took = _signal_after_a_checkpoint(_cmd(name, runs, "term", "resume=true"), ckpt, step + 1, signal.SIGINT)
    assert rc == 130 and took < 60, (rc, took, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGINT)") and "resume with resume=true" in err, err[-2000:]
    assert "run_id=term resume=true" in err and not (run / "metrics.json").exists()

    # the time spent so far travels in the checkpoint, so the finished run records its whole time, not its last part
    timer_state = [v for k, v in torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"].items()
                   if "StepTimer" in k]
    spent = timer_state[0]["elapsed_s"]
    assert spent > 0, timer_state

    subprocess.run(_cmd(name, runs, "term", "resume=true"), cwd=ROOT, env=env, check=True, capture_output=True)
    full = json.loads((runs / name / "full" / "metrics.json").read_text())
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == full["steps"] == 36
    assert resumed["train_time_s"] > spent and resumed["wall_time_s"] > spent and "time_partial" not in resumed
    for k in ["psnr", "ssim", "lpips", "rfid"]:
        assert resumed[k] == pytest.approx(full[k], rel=1e-5, abs=1e-6), (k, step)
    for k, values in full["per_scale"].items():
        assert resumed["per_scale"][k] == pytest.approx(values, rel=1e-5, abs=1e-6), k
