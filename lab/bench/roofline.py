"""``make bench`` part ``roofline`` (issue 23): how close a training step comes to what this CPU can do.

Peaks, measured at 1 and 2 threads (``torch.set_num_threads``), fp32 and bf16:
- ``matmul``: ``a @ b`` on square-ish GEMMs of a few sizes (and the precision probe's transformer-like shape,
  lab.runtime.machine.PROBE_SHAPE), in the dtype itself; the peak is the best size's rate; FLOPs 2 M K N.
- ``conv``: the convolutions the quickstart tokenizer really runs, found with a forward hook on every ``nn.Conv2d``
  of a real Tokenizer built from experiments/quickstart.yaml (channels_last, as the model keeps them), each shape
  timed alone for forward + backward (input and weight gradients), FLOPs counted by torch.utils.flop_counter; the
  peak is the best shape's rate, and ``conv mix`` is all the calls of one tokenizer forward together (what its
  convolutions reach in isolation, the bound closer to a step).
Achieved: one training step (lab.bench.machine.stepper: train_loss, backward, clipping, AdamW; bf16 = the forward
under bf16 autocast) of the quickstart tokenizer and the c2i_fashion generator (sizes xs and s) on emoji32, its
FLOPs counted by lab.metrics.measures.train_step_flops (FlopCounterMode over forward + backward: matmuls and
convolutions only; the count runs record as ``flops_per_step``), over its median wall time. At 1 thread the step
takes 16 images (one process's share of the 2-process layout ``trainer.devices: auto`` picks on 2 cores), at 2
threads 32 (the one-process layout). ``of peak``: achieved / the same precision and thread count's conv peak
(tokenizer) or matmul peak (generator); ``of matmul``: / the matmul peak, for both.

Every case is bounded: a peak case stops repeating after its budget and a size whose estimated call time (from the
rate already measured) exceeds half of it is skipped; a step case is lab.bench.machine.timed (about one step past
its budget, however slowly the CPU emulates bf16)."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lab.bench.common import Settings, progress, ratio
from lab.bench.machine import GLOBAL_BATCH, StepLoss, build_stage, stepper, timed
from lab.metrics.measures import train_step_flops
from lab.runtime.machine import PROBE_SHAPE, cpu_model, usable_cores

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATMUL_SHAPES = ((256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), PROBE_SHAPE)
QUICK_MATMUL_SHAPES = ((32, 32, 32), (64, 64, 64))
STEP_PRECISIONS = ("fp32", "bf16 autocast")


@contextlib.contextmanager
def num_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def stamp(threads: int) -> dict:
    """What every row names: the CPU, the torch version and the thread count."""
    return dict(cpu=cpu_model(), torch=torch.__version__, threads=threads)


def fastest(fn: Callable[[], object], repeats: int, budget: float) -> tuple[float, int]:
    """(fastest seconds of one call, calls timed): one warm-up call, then up to ``repeats`` calls, stopping once
    ``budget`` seconds have gone (at least one timed call)."""
    fn()
    best, n, start = math.inf, 0, time.perf_counter()
    while n < repeats and (n == 0 or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best, n


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ peaks
def matmul_peak(dtype: torch.dtype, shapes, repeats: int, budget: float) -> dict:
    """{gflops, best (the shape), detail, status}: the best rate over ``shapes``, the larger ones skipped when
    their estimated call time (at the best rate so far) exceeds half the budget."""
    gen = torch.Generator().manual_seed(0)
    detail, best_rate, skipped = [], 0.0, []
    for M, K, N in shapes:
        flops = 2 * M * K * N
        if best_rate and flops / best_rate > budget / 2:
            skipped.append(f"{M}x{K}x{N}")
            continue
        a = torch.randn(M, K, generator=gen).to(dtype)
        b = torch.randn(K, N, generator=gen).to(dtype)
        sec, n = fastest(lambda: a @ b, repeats, budget)
        rate = flops / sec
        detail.append(dict(shape=f"{M}x{K}x{N}", gflops=rate / 1e9, n=n))
        best_rate = max(best_rate, rate)
    best = max(detail, key=lambda d: d["gflops"])
    status = "ok" + (f"; skipped over budget: {', '.join(skipped)}" if skipped else "")
    return dict(gflops=best["gflops"], best=best["shape"], detail=detail, status=status)


def tokenizer_convs(tokenizer: nn.Module, images: torch.Tensor) -> list[dict]:
    """The distinct convolutions of one training-mode forward of ``tokenizer`` on ``images`` (forward hooks on
    every nn.Conv2d, the multi-scale quantizer's included): their input shape, layer settings and call count."""
    seen: dict[tuple, dict] = {}

    def hook(m: nn.Conv2d, inputs, output) -> None:
        x = inputs[0]
        cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        key = (tuple(x.shape), m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is not None, cl)
        seen.setdefault(key, dict(input=tuple(x.shape), out_channels=m.out_channels, kernel=m.kernel_size, stride=m.stride,
                                  padding=m.padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                                  channels_last=cl, calls=0))["calls"] += 1

    handles = [m.register_forward_hook(hook) for m in tokenizer.modules() if isinstance(m, nn.Conv2d)]
    was = tokenizer.training
    try:
        tokenizer.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            tokenizer(images)
    finally:
        tokenizer.train(was)
        for h in handles:
            h.remove()
    return list(seen.values())


def _conv_case(c: dict, dtype: torch.dtype):
    """(forward + backward of one conv shape as a callable, its input and weight gradients included)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c["input"][1], c["out_channels"], c["kernel"], stride=c["stride"], padding=c["padding"],
                     dilation=c["dilation"], groups=c["groups"], bias=c["bias"]).to(dtype)
    fmt = torch.channels_last if c["channels_last"] else torch.contiguous_format
    conv = conv.to(memory_format=fmt)
    x = torch.randn(c["input"], generator=gen).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    with torch.no_grad():
        gy = torch.randn_like(conv(x))

    def fn() -> None:
        conv(x).backward(gy)
        x.grad = None
        for p in conv.parameters():
            p.grad = None

    return fn


def conv_peak(convs: list[dict], dtype: torch.dtype, repeats: int, budget: float) -> tuple[dict, dict]:
    """(best shape's rate, the mix of every call of one forward), forward + backward of each shape alone."""
    detail, best_rate, skipped = [], 0.0, 0
    total_flops = total_sec = 0.0
    for c in convs:
        fn = _conv_case(c, dtype)
        flops = count_flops(fn)
        if best_rate and flops / best_rate > budget / 2:
            skipped += 1
            continue
        sec, n = fastest(fn, repeats, budget)
        rate = flops / sec
        name = f"{tuple(c['input'])}->{c['out_channels']} k{c['kernel'][0]} s{c['stride'][0]}"
        detail.append(dict(shape=name, calls=c["calls"], gflops=rate / 1e9, n=n))
        best_rate = max(best_rate, rate)
        total_flops += c["calls"] * flops
        total_sec += c["calls"] * sec
    best = max(detail, key=lambda d: d["gflops"])
    calls = sum(c["calls"] for c in convs)
    status = "ok" if not skipped else f"{skipped} shape(s) skipped over budget"
    peak = dict(gflops=best["gflops"], best=best["shape"], detail=detail, status=status)
    mix = dict(gflops=total_flops / total_sec / 1e9 if not skipped else None, calls=calls, status=status)
    return peak, mix


# ------------------------------------------------------------------------------------------ the part
def _layouts(s: Settings) -> list[tuple[int, int, str]]:
    """(threads, batch, what it stands for) per thread count measured."""
    if s.quick:
        return [(1, 4, "quick: 4 images, 1 thread")]
    half = GLOBAL_BATCH // 2
    return [(1, half, f"{half} images, 1 thread: one process of the 2-process layout"),
            (2, GLOBAL_BATCH, f"{GLOBAL_BATCH} images, 2 threads: the one-process layout")]


def bench_roofline(s: Settings) -> Iterator[dict]:
    repeats = 2 if s.quick else 10
    peak_budget = s.max_seconds / 5  # per peak case: 2 s (quick 0.2 s)
    step_budget = s.max_seconds  # seconds of timed steps per step case
    warmup, max_steps = (1, 3) if s.quick else (2, 30)
    shapes = QUICK_MATMUL_SHAPES if s.quick else MATMUL_SHAPES
    cases = [("tokenizer", "")] + [("generator", size) for size in (("xs",) if s.quick else ("xs", "s"))]
    cores = usable_cores()
    for threads, batch, layout in _layouts(s):
        base = dict(stamp(threads), batch=batch)
        if threads > cores:
            yield dict(base, kind="-", what="-", status=f"skipped: {threads} threads > {cores} usable core(s)")
            continue
        built = {}
        for stage, size in cases:
            progress(f"roofline: building {stage} {size} at batch {batch}")
            torch.manual_seed(0)
            built[stage, size] = build_stage(stage, size, batch, s.quick)
        module, loader = built["tokenizer", ""]
        images = next(iter(loader))["image"]
        convs = tokenizer_convs(module.tokenizer, images)
        peaks: dict[tuple[str, str], float | None] = {}
        with num_threads(threads):
            for prec, dtype in DTYPES.items():
                progress(f"roofline: matmul peak {prec}, {threads} thread(s)")
                m = matmul_peak(dtype, shapes, repeats, peak_budget)
                peaks["matmul", prec] = m["gflops"]
                yield dict(base, kind="peak", what=f"matmul (best: {m['best']})", precision=prec, gflops=m["gflops"],
                           status=m["status"], detail=m["detail"], batch=None)
            for prec, dtype in DTYPES.items():
                progress(f"roofline: conv peak {prec}, {threads} thread(s)")
                peak, mix = conv_peak(convs, dtype, repeats, peak_budget)
                peaks["conv", prec] = peak["gflops"]
                yield dict(base, kind="peak", what=f"conv fwd+bwd (best of {len(convs)} shapes: {peak['best']})",
                           precision=prec, gflops=peak["gflops"], of_matmul=ratio(peak["gflops"], peaks["matmul", prec]),
                           status=peak["status"], detail=peak["detail"])
                yield dict(base, kind="peak", what=f"conv mix ({mix['calls']} calls of one tokenizer forward)",
                           precision=prec, gflops=mix["gflops"], of_matmul=ratio(mix["gflops"], peaks["matmul", prec]),
                           status=mix["status"])
            for (stage, size), (module, loader) in built.items():
                yield from _achieved(stage, size, module, loader, base, layout, peaks, warmup, max_steps, step_budget)
        del built


def _achieved(stage, size, module, loader, base, layout, peaks, warmup, max_steps, budget) -> Iterator[dict]:
    what = "tokenizer step (quickstart)" if stage == "tokenizer" else f"generator step (c2i_fashion, size {size})"
    progress(f"roofline: {what}, {base['threads']} thread(s)")
    batch = next(iter(loader))
    try:
        flops = train_step_flops(module, batch)
    except Exception as e:  # noqa: BLE001 - recorded as the case's status
        yield dict(base, kind="achieved", what=what, status=f"failed to count FLOPs: {type(e).__name__}: {e}"[:200])
        return
    step = stepper(StepLoss(module), loader)
    ref = "conv" if stage == "tokenizer" else "matmul"
    for prec in STEP_PRECISIONS:
        bf16 = prec.startswith("bf16")
        try:
            sec, n, status = timed(lambda: step(bf16), warmup, max_steps, budget)
        except Exception as e:  # noqa: BLE001 - recorded as the case's status
            yield dict(base, kind="achieved", what=what, precision=prec, status=f"failed: {type(e).__name__}: {e}"[:200])
            continue
        gflops = flops / sec / 1e9
        key = "bf16" if bf16 else "fp32"
        yield dict(base, kind="achieved", what=what, precision=prec, layout=layout, gflop_per_step=flops / 1e9,
                   ms=1e3 * sec, steps=n, gflops=gflops, reference=f"{ref} peak, {key}",
                   of_peak=ratio(gflops, peaks.get((ref, key))), of_matmul=ratio(gflops, peaks.get(("matmul", key))),
                   status=status)


COLUMNS = [
    ("kind", "kind", "s"), ("what", "what", "s"), ("precision", "precision", "s"), ("threads", "threads", "i"),
    ("batch", "batch", "i"), ("gflop_per_step", "GFLOP/step", "f"), ("ms", "ms/step", "f"), ("steps", "steps", "i"),
    ("gflops", "GFLOP/s", "f"), ("reference", "reference", "s"), ("of_peak", "of peak", "x"),
    ("of_matmul", "of matmul", "x"), ("status", "status", "s"), ("cpu", "CPU", "s"), ("torch", "torch", "s")]

NOTES = [
    "peak rows: matmul = a @ b in the dtype itself, best of a few square-ish sizes (and the precision probe's "
    "2048x256x1024); conv = forward + backward (input and weight gradients) of each convolution shape the quickstart "
    "tokenizer runs (found by forward hooks on a real Tokenizer from experiments/quickstart.yaml, channels_last), "
    "alone; best shape, and the mix of all the calls of one forward (FLOPs by torch.utils.flop_counter). Each is the "
    "fastest of up to 10 calls after a warm-up; per-size rates are in roofline.json (detail).",
    "achieved rows: one training step (train_loss, backward, gradient clipping, AdamW; bf16 autocast = "
    "trainer.precision=bf16-mixed) of untrained cpu-scale models on emoji32; FLOPs per step from "
    "lab.metrics.measures.train_step_flops (FlopCounterMode, forward + backward, matmuls and convolutions, LPIPS "
    "included; the count runs record as flops_per_step), over the median step wall time. of peak: / the conv peak "
    "(tokenizer) or the matmul peak (generator) at the same precision and threads; issue 23's goals: generator >= 0.5 "
    "of the bf16 matmul peak (Zen 4) or fp32 (Zen 2), tokenizer >= 0.4 of the conv peak.",
    "1 thread, 16 images: one process of the 2-process layout trainer.devices=auto picks on 2 cores (the machine "
    "part measures the layouts themselves, DDP all-reduce included); 2 threads, 32 images: one process on both cores. "
    "Every case has a time budget (a bf16 step on a CPU that emulates bf16 is reported from its warm-up instead).",
]
