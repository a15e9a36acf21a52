"""``python -m lab bench``: the memory tracker against known allocations, and one --quick run end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from lab.bench.common import format_table, peak_bytes
from lab.config import ROOT

MB = 1_000_000


def test_peak_bytes_counts_what_the_call_allocates():
    held = torch.ones(2 * MB)  # allocated before: not counted, and freeing it inside does not go negative

    def fn():
        nonlocal held
        held = None
        keep = torch.empty(8 * MB, dtype=torch.uint8)
        tmp = torch.empty(4 * MB, dtype=torch.uint8)
        del tmp
        small = torch.empty(1 * MB, dtype=torch.uint8)  # fits in the hole tmp left: peak stays 12 MB
        return keep, small

    peak = peak_bytes(fn)
    assert 12 * MB <= peak < 12 * MB + 64 * 1024


def test_peak_bytes_sees_autograd():
    x = torch.randn(MB, requires_grad=True)  # 4 MB

    def step():
        x.exp().sum().backward()  # exp's output is saved for backward (4 MB), then x.grad (4 MB)
        x.grad = None

    peak = peak_bytes(step)
    assert 8 * MB <= peak < 16 * MB


def test_format_table_aligns():
    rows = [dict(name="a", v=1.5), dict(name="bbb", v=None)]
    text = format_table(rows, [("name", "name", "s"), ("v", "value", "f")])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(lines[0]), len(lines[1])}) == 1
    assert format_table(rows, [("name", "name", "s")], markdown=True).splitlines()[1] == "|---|"


def test_timed_cases_are_bounded_on_a_slow_machine():
    """A case whose warm-up overruns its budget reports the warm-up step instead of running on (a bf16 step of the
    s transformer takes over 18 s on a CPU that emulates bf16)."""
    import time

    from lab.bench.machine import timed

    t0 = time.perf_counter()
    sec, n, status = timed(lambda: time.sleep(0.25), warmup=1, max_steps=100, budget=0.1)
    assert n == 0 and "over budget" in status and 0.2 < sec < 0.5 and time.perf_counter() - t0 < 0.5
    sec, n, status = timed(lambda: time.sleep(0.02), warmup=1, max_steps=100, budget=0.1)
    assert status == "ok" and 3 <= n < 10 and 0.015 < sec < 0.05


def test_alternating_precisions_share_the_load_and_stay_bounded():
    import time

    from lab.bench.machine import timed_alternating

    r = timed_alternating(lambda bf16: time.sleep(0.01 if bf16 else 0.03), warmup=1, max_steps=100, budget=0.1)
    assert r["32-true"][1] == r["bf16-mixed"][1] >= 2 and r["32-true"][0] / r["bf16-mixed"][0] > 2
    t0 = time.perf_counter()
    r = timed_alternating(lambda bf16: time.sleep(0.15), warmup=1, max_steps=100, budget=0.1)
    assert r["bf16-mixed"][1] == 0 and "over budget" in r["bf16-mixed"][2] and time.perf_counter() - t0 < 0.5


@pytest.mark.slow
def test_bench_quick(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lab", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = {}
    for part in ("quantizers", "heads", "sampling", "generator_train"):
        doc = json.loads((tmp_path / f"{part}.json").read_text())
        assert {"torch", "device", "cpu_count", "date", "repeats"} <= set(doc["header"])
        assert doc["rows"] and set(doc["columns"]) <= set().union(*doc["rows"])  # every column is filled somewhere
        docs[part] = doc
        assert f"## {part}" in (tmp_path / "bench.md").read_text()
        assert part in proc.stdout

    q = {(r["quantizer"], r["bits"]): r for r in docs["quantizers"]["rows"]}
    assert {"quantizer", "bits", "ms_per_step", "peak_mb", "status"} <= set(q["bsq", 64])
    assert q["bsq", 64]["status"] == "ok" and math.isfinite(q["bsq", 64]["ms_per_step"])
    assert q["lfq", 64]["status"] == "unsupported" or q["lfq", 64]["status"].startswith("skipped")
    assert q["lfq", 8]["status"] == "ok" and q["lfq", 8]["over_bsq"] > 0
    assert q["lfq", 12]["peak_mb"] > q["bsq", 12]["peak_mb"]  # LFQ's 2^bits distance matrix
    assert q["vq", 8]["status"] == "ok" and q["vq", 8]["over_bsq"] > 0
    assert q["vq", 12]["peak_mb"] > q["bsq", 12]["peak_mb"]  # VQ's tokens x codebook distances and one-hot
    assert q["vq", 64]["status"] == "unsupported"  # a 2^64 codebook cannot be built; BSQ at 64 bits runs

    h = {(r["width"], r["bits"]): r for r in docs["heads"]["rows"]}
    assert h[2048, 32]["index_params"] == 2048 * 2**32 + 2**32
    assert h[2048, 32]["bitwise_params"] == 2048 * 32 + 32
    assert h[2048, 32]["index_fp32_bytes"] == 4 * h[2048, 32]["index_params"]
    assert h[2048, 32]["index_ms"] is None and h[2048, 32]["bitwise_ms"] > 0  # never built, never allocated

    s = docs["sampling"]["rows"]
    for r in s:
        assert {"order", "use_cache", "batch", "ms_per_batch", "images_per_s"} <= set(r)
    for b in {r["batch"] for r in s}:
        scale = next(r for r in s if r["order"] == "scale" and r["use_cache"] and r["batch"] == b)
        raster = next(r for r in s if r["order"] == "raster" and r["batch"] == b)
        assert scale["images_per_s"] > raster["images_per_s"]  # 6 steps vs 130

    # issue 12: every header names the CPU, its torch capability and native bf16; the machine part measures fp32 vs
    # bf16 and one vs two processes, and compares auto's choices with the best measured
    md = (tmp_path / "bench.md").read_text()
    assert md.count("torch capability") == md.count("## ") and "native bf16" in md
    m = json.loads((tmp_path / "machine.json").read_text())
    assert {"cpu", "cpu_capability", "native_bf16"} <= set(m["header"]) and m["complete"]
    assert m["rows"][0]["stage"] == "probe" and m["rows"][0]["bf16_speedup"] > 0
    measured = {(r["processes"], r["precision"]) for r in m["rows"] if r["stage"] == "tokenizer" and "steps" in r}
    assert measured == {(1, "32-true"), (1, "bf16-mixed"), (2, "32-true"), (2, "bf16-mixed")}, m["rows"]
    chosen = [r for r in m["rows"] if r["layout"].startswith("auto")]
    assert len(chosen) == 1 and chosen[0]["vs_best"] >= 1.0

    g = docs["generator_train"]["rows"]
    assert {r["size"] for r in g if r["item"] == "train step"} == {"xs", "s"}
    assert {r["correction"] for r in g if r["item"] == "teacher_forcing"} >= {"none", "bitflip"}
    assert all(r["ms"] > 0 for r in g)
