"""Scale-out on Lightning's engine: two processes on CPU (DDP, gloo) train both stages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_trains_both_stages_and_rank0_alone_writes(tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lab", "run", "generator/c2i_fashion", "preset=smoke", f"runs_dir={runs}",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=8"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "BITLAB_RUN_DIR")}
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    # rank 1's traceback usually only says rank 0 went away: show rank 0's lines first
    rank0 = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("[rank1]"))
    assert r.returncode == 0, rank0[-4000:] + "\n--- rank 1 ---\n" + r.stderr[-1500:]
    out = r.stdout + r.stderr
    assert "MEMBER: 2/2" in out  # (Lightning's "distributed_backend=gloo" banner is hidden unless --verbose)

    # exactly one run directory per stage (rank 1 created none), each complete
    tokenizers = list((runs / "_tokenizers").glob("*/run"))
    generators = [p for p in (runs / "generator" / "c2i_fashion").iterdir() if p.is_dir()]  # (not the run locks)
    assert len(tokenizers) == 1 and len(generators) == 1
    for run_dir in tokenizers + generators:
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
        pids = {p.name.split(".")[-2] for p in (run_dir / "tb").glob("events.out.tfevents.*")}
        assert len(pids) == 1  # one process wrote the logs
    m = json.loads((generators[0] / "metrics.json").read_text())
    assert m["steps"] == 8
    for k in ("val_loss", "bit_accuracy", "gfid"):
        assert m[k] == m[k] and abs(m[k]) != float("inf")

    # the distributed sampler split the data: each rank's epoch holds half the batches, so 8 steps end in a
    # later epoch than one process would reach
    import math

    import torch

    from lab.config import load_experiment
    from lab.stages.common import build_datamodule

    dm = build_datamodule(load_experiment("generator/c2i_fashion", ["preset=smoke", f"runs_dir={runs}"]))
    dm.setup()
    n = len(dm.splits["train"])
    per_rank, single = math.ceil(n / 2) // 8, n // 8
    ck = torch.load(generators[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 8 // per_rank != 8 // single and ck["epoch"] == 8 // per_rank, (n, ck["epoch"])

    # and the checkpoints load in one process
    from lab.stages.generator import load_tokenizer

    tok = load_tokenizer(tokenizers[0])
    assert tok.tokenizer.msq.bits == 16
    from lab.stages.build import generator_module

    module = generator_module(ck["hyper_parameters"]["cfg"], tok.tokenizer, num_classes=ck["hyper_parameters"]["num_classes"])
    module.load_state_dict(ck["state_dict"], strict=True)


def test_cpu_processes_share_the_cores(monkeypatch):
    """N training processes on one CPU each take 1/N of the cores (no oversubscription), unless
    OMP_NUM_THREADS is set; one process, or a GPU run, keeps torch's setting."""
    import torch

    from lab.runtime.trainer import share_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert share_cpu_threads("cpu", 2) == 4 and torch.get_num_threads() == 4
        assert share_cpu_threads("cpu", 16) == 1
        assert share_cpu_threads("cpu", 1) is None
        assert share_cpu_threads("gpu", 2) is None
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert share_cpu_threads("cpu", 2) is None
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_checkpoints_and_both_exit_then_it_resumes(tmp_path):
    """SIGTERM to rank 0 of a DDP run (what a cluster sends first): every rank stops after the same step, the
    checkpoint is written, both processes exit within 60 s (143) naming the resume command; the resume, which
    starts mid-epoch, finishes."""
    import signal
    import time

    import torch

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lab", "run", "quickstart", "preset=smoke", f"runs_dir={runs}", "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.max_steps=24", "checkpoint_every_n_steps=3", "run_id=d"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "BITLAB_RUN_DIR")}
    env = {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ckpt = runs / "quickstart" / "d" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not ckpt.is_file() and time.time() - t0 < 600 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        t_sig = time.time()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
        assert time.time() - t_sig < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    rank0 = [line for line in err.splitlines() if not line.startswith("[rank1]")]
    assert proc.returncode == 143, "\n".join(rank0[-40:])
    assert "Traceback" not in err and rank0[-1].startswith("error: interrupted (SIGTERM)"), "\n".join(rank0[-40:])
    assert "run_id=d resume=true" in rank0[-1]
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 3 <= step < 24 and f"stopped at step {step}" in rank0[-1]
    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", f"runs_dir={runs}"], capture_output=True).returncode == 1  # no rank left

    r = subprocess.run(cmd + ["resume=true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((runs / "quickstart" / "d" / "metrics.json").read_text())["steps"] == 24


@pytest.mark.slow
def test_a_two_process_suite_keeps_each_run_whole_and_rank0_alone_reports(tmp_path):
    """A suite whose runs train in two processes (the tokenizer suites: `trainer.devices: auto` on 2 cores): Lightning
    re-runs the sweep command for rank 1, which then walks the sweep beside rank 0. Rank 1 used to find the directory
    rank 0 had just made for the run (config.yaml, no checkpoint yet) and move it aside as an abandoned start, so the
    finished run lacked its config.yaml; it also printed every sweep line twice and recorded the invocation twice.
    Shard 2/4 is LFQ-2^10 then BSQ-2^16: LFQ's library all-reduced its batch entropy when rank 0 alone counted a
    training step's FLOPs after fit, and the run hung there (rank 1 had gone on to the next run)."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lab", "run", "ablations/tokenizer_vocab", "preset=smoke", f"runs_dir={runs}",
           "trainer.devices=2", "trainer.strategy=ddp", "seeds=[0]", "--shard", "2/4"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "BITLAB_RUN_DIR",
                                                               "BITLAB_RESUMING")}
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "MEMBER: 2/2" in out
    suite = runs / "ablations" / "tokenizer_vocab"
    done = sorted(p.parent for p in suite.glob("*/s0/metrics.json"))
    assert len(done) == 2, sorted(str(p) for p in suite.rglob("*"))[:40]
    for run_dir in done:
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list(suite.glob("*/*.incomplete-*"))  # nothing moved aside
    assert len(json.loads((suite / "sweep.json").read_text())["invocations"]) == 1
    assert out.count("runs (8 points x 1 seeds)") == 1  # the sweep's header, from rank 0 alone
