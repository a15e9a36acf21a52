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
    assert "MEMBER: 2/2" in out and "distributed_backend=gloo" in out

    # exactly one run directory per stage (rank 1 created none), each complete
    tokenizers = list((runs / "_tokenizers").glob("*/run"))
    generators = list((runs / "generator" / "c2i_fashion").iterdir())
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
    from lab.run import build_datamodule

    dm = build_datamodule(load_experiment("generator/c2i_fashion", ["preset=smoke", f"runs_dir={runs}"]))
    dm.setup()
    n = len(dm.splits["train"])
    per_rank, single = math.ceil(n / 2) // 8, n // 8
    ck = torch.load(generators[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 8 // per_rank != 8 // single and ck["epoch"] == 8 // per_rank, (n, ck["epoch"])

    # and the checkpoints load in one process
    from lab.generator_run import load_tokenizer

    tok = load_tokenizer(tokenizers[0])
    assert tok.tokenizer.msq.bits == 16
    from lab.generator import GeneratorModule

    module = GeneratorModule(ck["hyper_parameters"]["cfg"], tok.tokenizer, num_classes=ck["hyper_parameters"]["num_classes"])
    module.load_state_dict(ck["state_dict"], strict=True)


def test_cpu_processes_share_the_cores(monkeypatch):
    """N training processes on one CPU each take 1/N of the cores (no oversubscription), unless
    OMP_NUM_THREADS is set; one process, or a GPU run, keeps torch's setting."""
    import torch

    from lab.run import share_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert share_cpu_threads({"accelerator": "cpu", "devices": 2}) == 4 and torch.get_num_threads() == 4
        assert share_cpu_threads({"accelerator": "cpu", "devices": 16}) == 1
        assert share_cpu_threads({"accelerator": "cpu", "devices": 1}) is None
        assert share_cpu_threads({"accelerator": "gpu", "devices": 2}) is None
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert share_cpu_threads({"accelerator": "cpu", "devices": 2}) is None
    finally:
        torch.set_num_threads(before)
