"""Issue 23's ``make bench`` parts ``roofline`` and ``profile``: the attribution of a profile to categories, the
tokenizer's convolution shapes, bounded peaks, and both parts end to end in --quick mode."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from lab.bench.roofline import matmul_peak, stamp, tokenizer_convs
from lab.bench.step_profile import BACKWARD, OTHER, PREFIX, STEP, Labels, attribute, profile_steps
from lab.config import ROOT


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.mlp(self.conv(x).mean((2, 3)))


def test_attribution_adds_up_and_follows_backward_ops_to_their_forward_range():
    torch.manual_seed(0)
    model = Tiny()
    data = torch.randn(64, 3, 8, 8)

    def step():
        with torch.autograd.profiler.record_function(STEP):
            with torch.autograd.profiler.record_function(PREFIX + "data"):
                x = data[torch.randperm(64)[:8]]  # a no-grad op carrying the next sequence number
            model(x).square().mean().backward()
            model.zero_grad(set_to_none=True)

    step()
    with Labels() as labels:
        labels.module(model.conv, "convolutions")
        labels.module(model.mlp, "MLP")
        events, plain = profile_steps(model, step, steps=2)
    assert not model.conv._forward_hooks and not model.mlp._forward_pre_hooks  # removed on exit
    n, wall, totals, ops, in_backward = attribute(events)
    assert n == 2 and plain > 0
    assert sum(totals.values()) == pytest.approx(wall, rel=1e-6)
    assert {"convolutions", "MLP", "data", OTHER} <= set(totals)
    assert "aten::convolution_backward (backward)" in ops["convolutions"]
    assert any(k.endswith("(backward)") for k in ops["MLP"])
    assert not any(k.endswith("(backward)") or k.startswith(BACKWARD) for k in ops["data"])
    assert 0 < in_backward["convolutions"] < totals["convolutions"] and in_backward.get("data", 0.0) == 0.0


def test_tokenizer_convs_are_the_models_own():
    from lab.models.tokenizer import Tokenizer

    tok = Tokenizer(quantizer={"name": "bsq", "bits": 16})
    convs = tokenizer_convs(tok, torch.randn(2, 3, 32, 32))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in tok.modules())
    assert len(convs) >= 5 and sum(c["calls"] for c in convs) >= n_convs - 1  # every conv that the forward runs
    assert all(c["input"][0] == 2 for c in convs) and any(c["channels_last"] for c in convs)
    assert tok.training and not any(m._forward_hooks for m in tok.modules())


def test_matmul_peak_skips_sizes_over_the_budget():
    big = (4096, 4096, 4096)  # 137 GFLOP: far over 0.2 s at the rate of the small one on any CPU
    m = matmul_peak(torch.float32, ((64, 64, 64), big), repeats=2, budget=0.2)
    assert m["gflops"] > 0 and [d["shape"] for d in m["detail"]] == ["64x64x64"] and "4096x4096x4096" in m["status"]
    assert stamp(3) == dict(cpu=stamp(1)["cpu"], torch=torch.__version__, threads=3)


@pytest.mark.slow
def test_roofline_and_profile_quick(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lab", "bench", "--quick", "--only", "roofline,profile", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "bench.md").read_text()
    assert "## roofline" in md and "## profile" in md

    roof = json.loads((tmp_path / "roofline.json").read_text())
    assert roof["complete"]
    for r in roof["rows"]:  # every row names the CPU, the torch version and the thread count
        assert r["cpu"] and r["torch"] == torch.__version__ and r["threads"] >= 1
    peaks = [r for r in roof["rows"] if r["kind"] == "peak"]
    assert {r["precision"] for r in peaks} == {"fp32", "bf16"}
    assert {r["what"].split(" ")[0] for r in peaks} == {"matmul", "conv"}
    assert all(r["gflops"] > 0 for r in peaks)
    achieved = [r for r in roof["rows"] if r["kind"] == "achieved"]
    assert {r["what"].split(" ")[0] for r in achieved} == {"tokenizer", "generator"}
    assert {r["precision"] for r in achieved} == {"fp32", "bf16 autocast"}
    for r in achieved:
        assert r["status"] in ("ok",) or r["status"].startswith("over budget"), r
        assert r["gflop_per_step"] > 0 and 0 < r["of_peak"] < 50 and 0 < r["of_matmul"] < 50  # tiny quick sizes
        assert math.isclose(r["gflops"], r["gflop_per_step"] / (r["ms"] / 1e3), rel_tol=1e-6)

    prof = json.loads((tmp_path / "profile.json").read_text())
    stages = {r["stage"] for r in prof["rows"]}
    assert len(stages) == 3  # quick: the tokenizer, the generator as published and one index-head case
    for stage in stages:
        rows = [r for r in prof["rows"] if r["stage"] == stage]
        assert all(r["cpu"] and r["torch"] and r["threads"] >= 1 for r in rows)
        total = next(r for r in rows if r["category"] == "step (profiled wall)")
        assert total["ms"] > 0 and total["unprofiled_ms"] > 0 and total["overhead"] > 0 and 0 < total["backward_pct"] < 100
        cats = {r["category"]: r["pct"] for r in rows if r is not total}
        assert sum(cats.values()) == pytest.approx(100.0, abs=0.5)
        assert OTHER in cats and "optimizer" in cats and "data" in cats
        if stage.startswith("tokenizer"):
            assert {"convolutions", "LPIPS", "quantizer"} <= set(cats)
        else:
            assert {"attention", "MLP", "head", "teacher forcing"} <= set(cats)
