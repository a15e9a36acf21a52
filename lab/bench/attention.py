"""``make bench`` part ``attention``: the transformer's self-attention forward + backward with torch's own kernel
choice against its math kernel, per model size, batch, thread count and precision.

The generator's attention is about half of a training step (part ``profile``). Its sequences are short (130 tokens:
the scales 1, 2, 3, 4, 6, 8 and the start token) with a block-causal boolean mask; at this length torch's CPU flash
kernel is not the fastest under bf16. lab/models/transformer.py ``attention`` takes the math kernel for bf16 / fp16
on a CPU from what this part measures; ``ours`` is that choice, ``torch default`` what ``scaled_dot_product_attention``
picks by itself. ``max |diff|``: the largest output difference of ``ours`` from the fp32 math result on the same
inputs (bf16 rounding, ~1e-2 at these magnitudes, is the scale to read it against)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lab.bench.common import Settings, progress, ratio, time_ms
from lab.models.transformer import LADDER, Transformer, attention
from lab.runtime.machine import cpu_model, native_bf16

COLUMNS = [("size", "size", "s"), ("heads", "heads", "i"), ("batch", "batch", "i"), ("threads", "threads", "i"),
           ("precision", "precision", "s"), ("default_ms", "torch default ms", "f"), ("math_ms", "math ms", "f"),
           ("ours_ms", "ours ms", "f"), ("speedup", "default / ours", "x"), ("max_diff", "max |diff|", "f"),
           ("cpu", "CPU", "s")]
NOTES = ["One self-attention call of the generator's shape (batch x heads x 130 tokens x 64, the block-causal mask "
         "of the next-scale order), forward and the backward of its sum, median of the timed calls after a warm-up. "
         "ours = lab.models.transformer.attention (math kernel for bf16 on a CPU, torch's choice otherwise); "
         "default / ours > 1: ours is faster. On a CPU without native bf16 the bf16 rows emulate it and are skipped "
         "(trainer.precision: auto keeps such a CPU in fp32)."]


def _block_causal_mask() -> torch.Tensor:
    return Transformer(latent_dim=8, scales=(1, 2, 3, 4, 6, 8), num_classes=10, size="xs").mask


def bench_attention(s: Settings) -> Iterator[dict]:
    mask = _block_causal_mask()
    old = torch.get_num_threads()
    sizes = ("s",) if s.quick else ("xs", "s", "m")
    batches = (4,) if s.quick else (16, 32)
    threads_list = (1,) if s.quick else tuple(sorted({1, min(2, old) if old > 1 else 1, old}))
    timing = (replace(s, repeats=3, max_seconds=0.5) if s.quick
              else replace(s, repeats=15, max_seconds=max(2.0, s.max_seconds / 2)))
    precisions = ("fp32", "bf16") if native_bf16()[0] else ("fp32",)
    try:
        for size in sizes:
            _, width, heads = LADDER[size]
            for b in batches:
                gen = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(b, heads, mask.shape[0], width // heads, generator=gen) for _ in range(3))
                ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                for t in threads_list:
                    torch.set_num_threads(t)
                    for prec in precisions:
                        progress(f"attention: size {size}, batch {b}, {t} thread(s), {prec}")
                        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
                        leaves = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]

                        def step(fn):
                            out = fn(*leaves)
                            out.float().sum().backward()
                            return out

                        def default(a, b_, c):
                            return F.scaled_dot_product_attention(a, b_, c, attn_mask=mask)

                        def math(a, b_, c):
                            with sdpa_kernel(SDPBackend.MATH):
                                return F.scaled_dot_product_attention(a, b_, c, attn_mask=mask)

                        def ours(a, b_, c):
                            return attention(a, b_, c, mask)

                        ms = {name: time_ms(lambda fn=fn: step(fn), timing)[0]
                              for name, fn in (("default", default), ("math", math), ("ours", ours))}
                        with torch.no_grad():
                            diff = (ours(*[x.detach() for x in leaves]).float() - ref).abs().max().item()
                        yield dict(size=size, heads=heads, batch=b, threads=t, precision=prec,
                                   default_ms=ms["default"], math_ms=ms["math"], ours_ms=ms["ours"],
                                   speedup=ratio(ms["default"], ms["ours"]), max_diff=diff, cpu=cpu_model())
    finally:
        torch.set_num_threads(old)
