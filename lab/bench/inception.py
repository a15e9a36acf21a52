"""``make bench`` part ``inception``: the evaluation's Inception features (lab/metrics/fid.py ``InceptionFeatures``)
per second at each batch size, thread count and memory layout, against the contiguous layout at batch 64.

A suite's first evaluation on a machine computes 5,000 reference images' features and every run computes those of
its N generated images, its floor and its ceiling, so Inception's images/s is most of an evaluation's time. Each
case feeds the same 32x32 images (the datasets' size: the 299x299 resize is part of the cost) through the frozen
TorchScript graph; ``channels_last`` hands the graph its resized batch in that layout (oneDNN's preferred one for
CPU convolutions; what runs use on a CPU since this part measured it faster on a Zen 4 and a Zen 3); ``max |diff|``
is the largest feature difference from the contiguous path on the same images (the
features of a layout change only by the convolutions' summation order)."""
from __future__ import annotations

import time
from typing import Iterator

import torch

from lab.bench.common import Settings, progress, ratio
from lab.metrics.fid import InceptionFeatures
from lab.runtime.machine import cpu_model

DEFAULT_BATCH = 64  # lab.metrics.fid_protocol's reference, floor and ceiling (generated images: the loader's batch)

COLUMNS = [("threads", "threads", "i"), ("batch", "batch", "i"), ("layout", "layout", "s"),
           ("images_per_s", "images/s", "f"), ("images", "images timed", "i"), ("vs_default", "x default", "x"),
           ("max_diff", "max |diff|", "f"), ("cpu", "CPU", "s")]
NOTES = ["Inception-v3 pool3 features of 32x32 images (resized to 299x299 inside, as for every FID/KID here), fp32, "
         "no autograd, on the CPU. x default: images/s over the contiguous layout at the process's threads and batch 64 "
         "(the reference, floor and ceiling's batch; runs use channels_last on a CPU; --quick: its first row) measured in the same part; max |diff|: the largest feature difference from that path on the same images (features are "
         "O(1); FID's noise floor, results/eval_noise, is orders of magnitude above what such a difference moves).",
         "Every case times whole batches, after a warm-up batch, until it has spent its budget or its images (at "
         "least one batch)."]


def _rate(fn, images: torch.Tensor, batch: int, budget_s: float) -> tuple[float, int]:
    fn(images[:batch])  # warm-up (oneDNN primitives are created for this shape)
    done, t0 = 0, time.perf_counter()
    while done == 0 or (time.perf_counter() - t0 < budget_s and done + batch <= len(images)):
        fn(images[done:done + batch])
        done += batch
    return done / (time.perf_counter() - t0), done


def bench_inception(s: Settings) -> Iterator[dict]:
    old = torch.get_num_threads()  # what a run's evaluation uses
    threads_list = (old,) if s.quick else tuple(sorted({1, old}))
    batches = (16,) if s.quick else (16, DEFAULT_BATCH)  # (a case's warm-up batch at 1 thread takes ~15 s)
    budget = 2.0 if s.quick else max(8.0, s.max_seconds)
    images = torch.rand(32 if s.quick else 256, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exts = {lay: InceptionFeatures(batch_size=10_000, channels_last=lay == "channels_last")  # (batches chosen here)
            for lay in ("contiguous", "channels_last")}
    cases = [(t, b, lay) for t in threads_list for b in batches for lay in ("contiguous", "channels_last")]
    cases.sort(key=lambda c: (c[0] != old, c[1] != (16 if s.quick else DEFAULT_BATCH)))  # the default row first
    base, ref_feats = None, None
    try:
        ref_feats = exts["contiguous"](images[:16])
        for t, b, lay in cases:  # each row as it is measured: an interrupted part keeps what it measured
            progress(f"inception: {t} thread(s), batch {b}, {lay}")
            torch.set_num_threads(t)
            fn = exts[lay]
            rate, n = _rate(fn, images, b, budget)
            diff = (fn(images[:16]) - ref_feats).abs().max().item()
            base = base or rate  # the first row: the process's threads, batch 64 (quick: 16), contiguous
            yield dict(threads=t, batch=b, layout=lay, images_per_s=rate, images=n, vs_default=ratio(rate, base),
                       max_diff=diff, cpu=cpu_model())
    finally:
        torch.set_num_threads(old)
