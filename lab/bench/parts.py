"""Performance figures behind ``python -m lab bench`` (``make bench``): one function per part, each returning
a list of row dicts measured side by side in one process.

- ``quantizers``: one training step of VQ (codebook 2^bits), LFQ and BSQ from 8 to 64 bits (Infinity Tab.3: LFQ
  runs out of memory from ~20 bits, BSQ stays flat to 64; the library's VQ grows with its codebook too).
- ``heads``: parameters and memory of the index head vs the bitwise head (Infinity's IVC), analytically,
  and the measured cost of the ones small enough to build.
- ``sampling``: images/s of next-scale vs raster next-token sampling (VAR), and what the KV cache buys.
- ``generator_train``: training throughput of the generator and the cost of bitwise self-correction's
  input/label preparation.
- ``training``: both stages' training loops at cpu scale: Lightning vs a minimal hand-written loop, cached
  encoder features vs encoding every step, data loading's share, torch.compile.
- ``machine``: fp32 vs bf16 autocast and one vs two processes for both stages, and what ``trainer.precision: auto``
  and ``trainer.devices: auto`` choose against the best measured (issue 12).
- ``roofline``: measured matmul and convolution peaks at 1 and 2 threads beside the achieved FLOP/s of both stages'
  training steps (issue 23; lab/bench/roofline.py).
- ``profile``: where one training step's time goes, per stage, by torch.profiler (issue 23; lab/bench/step_profile.py).
- ``inception``: the evaluation's Inception features per second by batch size, threads and memory layout
  (lab/bench/inception.py).

Timings are medians of wall-clock repeats after a warm-up; on a shared CPU they are noisy, so the ratios
(measured in the same run) are the figures to read, not the absolute milliseconds.
"""
from __future__ import annotations

import torch

from lab.bench.common import (INDEX_HEAD_MEM_FACTOR, LFQ_MEM_FACTOR, MAX_BUILT_INDEX_PARAMS, VQ_MEM_FACTOR, Settings,  # noqa: F401
                              fmt_cell, format_table, measure, progress, ratio, time_ms)
from lab.bench.families import COLUMNS as FAMILY_COLUMNS
from lab.bench.families import NOTES as FAMILY_NOTES
from lab.bench.families import bench_families
from lab.bench.inception import COLUMNS as INCEPTION_COLUMNS
from lab.bench.inception import NOTES as INCEPTION_NOTES
from lab.bench.inception import bench_inception
from lab.bench.attention import COLUMNS as ATTENTION_COLUMNS
from lab.bench.attention import NOTES as ATTENTION_NOTES
from lab.bench.attention import bench_attention
from lab.bench.machine import bench_machine
from lab.bench.roofline import COLUMNS as ROOFLINE_COLUMNS
from lab.bench.roofline import NOTES as ROOFLINE_NOTES
from lab.bench.roofline import bench_roofline
from lab.bench.step_profile import COLUMNS as PROFILE_COLUMNS
from lab.bench.step_profile import NOTES as PROFILE_NOTES
from lab.bench.step_profile import bench_profile
from lab.bench.training import bench_training
from lab.models.heads import bitwise_head_params, build_head, index_head_params
from lab.generation.correction import BitFlip, NoCorrection, teacher_forcing
from lab.generation.sampling import SampleOptions, sample_codes
from lab.models.tokenizer import Tokenizer
from lab.models.transformer import Transformer
from lab.quantizers import build_quantizer

# ------------------------------------------------------------------------------------------ 1. quantizers
def bench_quantizers(s: Settings) -> list[dict]:
    """One training step (forward + backward, loss = z_q.square().mean() + aux loss) of VQ (a 2^bits codebook),
    LFQ and BSQ on the same latent batch (B, 16, 8, 8) at each number of bits."""
    shape = (8, 16, 8, 8) if s.quick else (64, 16, 8, 8)
    bits_list = (8, 12, 20, 64) if s.quick else (8, 12, 16, 18, 20, 32, 64)
    tokens = shape[0] * shape[2] * shape[3]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(s.device).requires_grad_(True)
    rows = []
    for bits in bits_list:
        ms = {}
        for name in ("vq", "lfq", "bsq"):
            progress(f"quantizers: {name} {bits} bits")
            node = {"name": name, "codebook_size": 2**bits} if name == "vq" else {"name": name, "bits": bits}
            row = dict(quantizer=name, bits=bits, tokens=tokens)
            try:
                with torch.device("meta"):  # the constructor's checks, without allocating a 2^bits codebook
                    build_quantizer(node, dim=shape[1])
            except ValueError as e:
                rows.append(dict(row, ms_per_step=None, n=0, peak_mb=None, status="unsupported", note=str(e)))
                continue
            factor = {"lfq": LFQ_MEM_FACTOR, "vq": VQ_MEM_FACTOR}.get(name, 0.0)
            estimate = factor * tokens * 2**bits * 4 + (2**bits * bits * 4 if factor else 0.0)
            if estimate > s.budget_bytes:
                r = measure(lambda: None, s, estimate)
            else:
                q = build_quantizer(node, dim=shape[1]).to(s.device).train()

                def step(q=q):
                    out = q(x)
                    (out.z_q.square().mean() + out.loss).backward()
                    x.grad = None
                    for p in q.parameters():
                        p.grad = None

                r = measure(step, s, estimate)
                del q
            rows.append(dict(row, ms_per_step=r["ms"], n=r["n"], peak_mb=r["peak_mb"], status=r["status"]))
            ms[name] = r["ms"]
        for row in rows[-3:-1]:
            row["over_bsq"] = ratio(ms.get(row["quantizer"]), ms.get("bsq"))
    return rows


# ------------------------------------------------------------------------------------------ 2. heads
def bench_heads(s: Settings) -> list[dict]:
    """Index head Linear(W, 2^d) + CE vs bitwise head Linear(W, d) + BCE: parameters and weight bytes computed
    analytically (the large index heads are never allocated); forward + backward of a (64, 130) token batch
    for the heads that fit (index head <= 50M parameters and its logits within the memory budget)."""
    B, L = (4, 130) if s.quick else (64, 130)
    bits_list = (8, 12, 32, 64) if s.quick else (8, 12, 16, 20, 24, 32, 48, 64)
    max_built = 2_000_000 if s.quick else MAX_BUILT_INDEX_PARAMS
    gen = torch.Generator().manual_seed(0)
    rows = []
    for width in (256, 2048):
        h = torch.randn(B, L, width, generator=gen).to(s.device).requires_grad_(True)
        for bits in bits_list:
            n_idx, n_bit = index_head_params(width, 2**bits), bitwise_head_params(width, bits)
            row = dict(width=width, bits=bits, index_params=n_idx, bitwise_params=n_bit, index_over_bitwise=n_idx / n_bit,
                       index_fp32_bytes=4 * n_idx, index_bf16_bytes=2 * n_idx,
                       bitwise_fp32_bytes=4 * n_bit, bitwise_bf16_bytes=2 * n_bit)
            codes = torch.randint(0, 2, (B, L, bits), generator=gen).float().to(s.device)
            for kind in ("bitwise", "index"):
                progress(f"heads: {kind} width {width} bits {bits}")
                if kind == "index" and n_idx > max_built:
                    row.update(index_ms=None, index_peak_mb=None, index_status=f"not built: {fmt_cell(n_idx, 'h')} params > {fmt_cell(max_built, 'h')}")
                    continue
                estimate = B * L * 2**bits * 4 * INDEX_HEAD_MEM_FACTOR if kind == "index" else 0.0
                if estimate > s.budget_bytes:
                    r = measure(lambda: None, s, estimate)
                else:
                    head = build_head({"name": kind}, width=width, code_kind="bits", bits=bits, vocab_size=2**bits).to(s.device)

                    def step(head=head, codes=codes):
                        head.loss(h, codes).mean().backward()
                        h.grad = None
                        for p in head.parameters():
                            p.grad = None

                    r = measure(step, s, estimate)
                    del head
                row.update({f"{kind}_ms": r["ms"], f"{kind}_peak_mb": r["peak_mb"], f"{kind}_status": r["status"]})
            row["index_over_bitwise_ms"] = ratio(row["index_ms"], row["bitwise_ms"])
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ 3. sampling
def _generator(tok, order: str, size: str, device: str):
    msq = tok.msq
    model = Transformer(latent_dim=tok.latent_dim, scales=msq.scales, num_classes=10, size=size, cond="class", order=order)
    head = build_head({"name": "bitwise"}, width=model.width, code_kind=msq.code_kind, bits=msq.bits, vocab_size=2**msq.bits)
    return model.to(device), head.to(device)


def bench_sampling(s: Settings) -> list[dict]:
    """Images/s of sampling codes and decoding them (untrained tokenizer with 16-bit BSQ, scales 1..8 =
    130 tokens; untrained size-s class-conditional transformer with a bitwise head; no CFG): next-scale
    (6 steps) vs raster next-token (130 steps) with the KV cache, and next-scale without it."""
    torch.manual_seed(0)
    tok = Tokenizer(quantizer={"name": "bsq", "bits": 16}).to(s.device).eval()
    gens = {order: _generator(tok, order, "s", s.device) for order in ("scale", "raster")}
    batches = (1, 4) if s.quick else (1, 8, 32)
    uncached_batch = batches[-1] if s.quick else 8
    cases = [(o, True, b) for b in batches for o in ("raster", "scale")] + [("scale", False, uncached_batch)]
    rows, raster_ips, cached_ms, decode_ms = [], {}, {}, {}
    for order, use_cache, B in cases:
        progress(f"sampling: {order} cache={use_cache} batch {B}")
        model, head = gens[order]
        labels = (torch.arange(B) % 10).to(s.device)
        opts = SampleOptions(use_cache=use_cache)

        @torch.no_grad()
        def run():
            _, f_hat = sample_codes(model, head, tok.msq, labels=labels, batch_size=B, opts=opts)
            return tok.decode(f_hat)

        ms, n = time_ms(run, s)
        if B not in decode_ms:  # the decoder's share, the same for both orders
            f_hat = torch.randn(B, tok.latent_dim, tok.msq.size, tok.msq.size, device=s.device)
            decode_ms[B] = time_ms(torch.no_grad()(lambda: tok.decode(f_hat)), s)[0]
        ips = B / (ms / 1e3)
        row = dict(order=order, use_cache=use_cache, batch=B, steps=len(tok.scales) if order == "scale" else model.L,
                   ms_per_batch=ms, n=n, images_per_s=ips, decode_ms=decode_ms[B])
        if order == "raster":
            raster_ips[B] = ips
        else:
            row["vs_raster"] = ratio(ips, raster_ips.get(B))
        if order == "scale" and use_cache:
            cached_ms[B] = ms
        if not use_cache:
            row["cache_speedup"] = ratio(ms, cached_ms.get(B))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ 4. generator_train
def bench_generator_train(s: Settings) -> list[dict]:
    """One optimisation step (forward + backward + AdamW) of the next-scale transformer + bitwise head on
    random teacher-forced inputs (B, L-1, 16) and bit labels (B, L, 16); then the input/label preparation
    ``teacher_forcing`` on cached features (B, 16, 8, 8) without and with bitwise self-correction."""
    B = 8 if s.quick else 64
    torch.manual_seed(0)
    tok = Tokenizer(quantizer={"name": "bsq", "bits": 16}).to(s.device).eval()
    rows, step_ms = [], {}
    for size in ("xs", "s"):
        progress(f"generator_train: size {size}")
        model, head = _generator(tok, "scale", size, s.device)
        model.train()
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        L = model.L
        x = torch.randn(B, L - 1, tok.latent_dim, device=s.device)
        bits = torch.randint(0, 2, (B, L, 16), device=s.device).float()
        labels = torch.randint(0, 10, (B,), device=s.device)

        def step(model=model, head=head, opt=opt, x=x, bits=bits):
            drop = torch.rand(B, device=s.device) < model.cond_dropout
            h = model(x, model.condition(labels=labels, drop=drop))
            loss = head.loss(h, bits).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # AdamW allocates its state on the first step: keep that out of the peak
        r = measure(step, s)
        step_ms[size] = r["ms"]
        rows.append(dict(item="train step", size=size, correction="", batch=B, params=sum(p.numel() for p in params),
                         ms=r["ms"], n=r["n"], tokens_per_s=B * L / (r["ms"] / 1e3), images_per_s=B / (r["ms"] / 1e3),
                         peak_mb=r["peak_mb"]))
    f = torch.randn(B, tok.latent_dim, tok.msq.size, tok.msq.size, device=s.device)
    strategies = {"none": NoCorrection(), "bitflip": BitFlip(requantize=True), "bitflip, no requant": BitFlip(requantize=False)}
    none_ms = None
    for name, strategy in strategies.items():
        progress(f"generator_train: teacher_forcing {name}")
        g = torch.Generator().manual_seed(0)
        r = measure(lambda: teacher_forcing(tok.msq, f, strategy, generator=g), s)
        none_ms = r["ms"] if name == "none" else none_ms
        rows.append(dict(item="teacher_forcing", size="", correction=name, batch=B, ms=r["ms"], n=r["n"],
                         images_per_s=B / (r["ms"] / 1e3), peak_mb=r["peak_mb"], vs_none=ratio(r["ms"], none_ms),
                         pct_of_s_step=100 * r["ms"] / (r["ms"] + step_ms["s"])))
    return rows


# ------------------------------------------------------------------------------------------ 5. training loops


# ------------------------------------------------------------------------------------------ 6. precision and layout


# ------------------------------------------------------------------------------------------ tables
# (key, header, format) per column; formats: s str, i int, h human count, b bytes, f float, x ratio
PARTS: dict[str, dict] = {
    "quantizers": dict(fn=bench_quantizers, columns=[
        ("quantizer", "quantizer", "s"), ("bits", "bits", "i"), ("tokens", "tokens", "i"),
        ("ms_per_step", "ms/step", "f"), ("n", "n", "i"), ("peak_mb", "peak MiB", "f"),
        ("over_bsq", "time / bsq", "x"), ("status", "status", "s")],
        notes=["One training step (forward + backward) on the same (B, 16, 8, 8) latent batch; peak MiB is the "
               "tensor memory the step allocates (lab.bench.parts.peak_bytes).",
               "LFQ (vector-quantize-pytorch) materialises a 2^bits codebook and a tokens x 2^bits distance "
               f"matrix: cases whose estimate (tokens * 2^bits * 4 B * {LFQ_MEM_FACTOR:g}) exceeds the budget "
               "are skipped; above 30 bits it cannot be built. Infinity Tab.3: LFQ OOM from ~20 bits, BSQ flat to 64.",
               "VQ (vector-quantize-pytorch's VectorQuantize, cosine similarity, code dim 8, EMA updates) with a 2^bits "
               "codebook: its training step holds tokens x codebook distance and one-hot tensors, so time and memory grow "
               f"with the codebook (skipped above the budget, estimate factor {VQ_MEM_FACTOR:g})."]),
    "heads": dict(fn=bench_heads, columns=[
        ("width", "width", "i"), ("bits", "bits", "i"), ("index_params", "index params", "h"),
        ("bitwise_params", "bitwise params", "h"), ("index_over_bitwise", "index/bitwise", "x"),
        ("index_fp32_bytes", "index fp32", "b"), ("index_bf16_bytes", "index bf16", "b"),
        ("bitwise_fp32_bytes", "bitwise fp32", "b"), ("bitwise_bf16_bytes", "bitwise bf16", "b"),
        ("index_ms", "index ms", "f"), ("index_peak_mb", "index peak MiB", "f"), ("bitwise_ms", "bitwise ms", "f"),
        ("bitwise_peak_mb", "bitwise peak MiB", "f"), ("index_over_bitwise_ms", "index/bitwise ms", "x"),
        ("index_status", "index status", "s")],
        notes=["Parameters and weight bytes are analytic: index = W * 2^d + 2^d, bitwise = W * d + d.",
               "Infinity's headline (width 2048, d = 32): index head 2048 * 2^32 = 8.8T parameters vs bitwise "
               "2 * 32 * 2048 = 0.13M. Infinity's IVC is Linear(C, 2d) with a 2-way softmax per bit; ours is the "
               "equivalent Linear(C, d) with BCE, so our bitwise count (65.6K) is half of theirs.",
               "ms / peak MiB: forward + backward of a (B x 130)-token batch, B = 64 (quick: 4) (loss and input gradient), for index heads "
               "<= 50M parameters whose logits fit the memory budget."]),
    "sampling": dict(fn=bench_sampling, columns=[
        ("order", "order", "s"), ("use_cache", "KV cache", "s"), ("batch", "batch", "i"), ("steps", "steps", "i"),
        ("ms_per_batch", "latency ms/batch", "f"), ("n", "n", "i"), ("decode_ms", "of which decode ms", "f"),
        ("images_per_s", "images/s", "f"),
        ("vs_raster", "x raster", "x"), ("cache_speedup", "cached speed-up", "x")],
        notes=["Codes sampled with lab.generation.sampling.sample_codes and decoded; untrained models (speed does not depend "
               "on the weights), transformer size s, 16-bit BSQ, bitwise head, no CFG.",
               "of which decode ms: the decoder alone on the same batch (shared by both orders). x raster: images/s relative to raster next-token sampling at the same batch; cached speed-up: "
               "next-scale with the KV cache vs without it at the same batch."]),
    "training": dict(fn=bench_training, columns=[
        ("stage", "stage", "s"), ("size", "size", "s"), ("batch", "batch", "i"), ("loop", "loop", "s"),
        ("ms_per_step", "ms/step", "f"), ("images_per_s", "images/s", "f"), ("tokens_per_s", "tokens/s", "f"),
        ("vs_minimal", "x minimal", "x"), ("data_pct", "data % of step", "f"), ("cache_speedup", "cache speed-up", "x"),
        ("compile_speedup", "compile speed-up", "x"), ("bf16_speedup", "bf16 speed-up", "x"), ("status", "status", "s")],
        notes=["cpu-scale settings of quickstart (tokenizer) and c2i_fashion (generator, xs and s) on 1,024 emoji32 "
               "images; untrained models. minimal: a hand-written loop (same train_loss, AdamW, clipping); lightning: "
               "the Trainer exactly as runs build it (TensorBoard, checkpoints, progress bar), validation off.",
               "x minimal: Lightning's time per step over the minimal loop's (target <= 1.2). data %: iterating the "
               "DataLoader alone, as a share of the step. cache speed-up: the generator step encoding its images "
               "every step over the step reading cached features. compile speed-up: minimal loop without / with "
               "torch.compile of the transformer (after its compilation)."]),
    "machine": dict(fn=bench_machine, columns=[
        ("stage", "stage", "s"), ("size", "size", "s"), ("layout", "layout (global batch 32)", "s"),
        ("precision", "precision", "s"), ("ms_per_step", "ms/step", "f"), ("steps", "timed steps", "i"),
        ("images_per_s", "images/s", "f"), ("bf16_speedup", "bf16 speed-up", "x"), ("vs_best", "/ best", "x"),
        ("status", "status", "s")],
        notes=["Each stage's training step (minimal loop: train_loss, AdamW, clipping; untrained cpu-scale models on "
               "emoji32: the quickstart's tokenizer, c2i_fashion's transformer on cached features) at a global batch of 32: "
               "one process on every core, or two DDP processes (gloo, spawned) of 16 images on one core each, in fp32 "
               "and under bf16 autocast (trainer.precision=bf16-mixed), fp32 and bf16 steps taken in turn (a busy "
               "machine's load falls on both alike). ms/step: the median wall time of one global step.",
               "auto rows: the precision lab.runtime.machine.resolve_precision('auto') picks here, and the layout "
               "trainer.devices=auto picks (lab.runtime.machine.cpu_processes), over the best measured; issue 12's target <= 1.05.",
               "Every case stops after its time budget (16 s of timed steps for both precisions; a warm-up that overruns it is reported "
               "instead), so the part ends in bounded time on a CPU that emulates bf16. The probe row is the cached "
               "start-up probe of trainer.precision=auto."]),
    "families": dict(fn=bench_families, columns=FAMILY_COLUMNS, notes=FAMILY_NOTES),
    "generator_train": dict(fn=bench_generator_train, columns=[
        ("item", "item", "s"), ("size", "size", "s"), ("correction", "correction", "s"), ("batch", "batch", "i"),
        ("params", "params", "h"), ("ms", "ms", "f"), ("n", "n", "i"), ("tokens_per_s", "tokens/s", "f"),
        ("images_per_s", "images/s", "f"), ("peak_mb", "peak MiB", "f"), ("vs_none", "x none", "x"),
        ("pct_of_s_step", "% of s step", "f")],
        notes=["train step: forward + backward + AdamW of transformer + bitwise head on random inputs (130 tokens/image).",
               "teacher_forcing: inputs and labels from cached features under a correction (bitflip = Infinity's "
               "bitwise self-correction with re-quantization); % of s step = its share of (preparation + size-s step)."]),
    "roofline": dict(fn=bench_roofline, columns=ROOFLINE_COLUMNS, notes=ROOFLINE_NOTES),
    "profile": dict(fn=bench_profile, columns=PROFILE_COLUMNS, notes=PROFILE_NOTES),
    "inception": dict(fn=bench_inception, columns=INCEPTION_COLUMNS, notes=INCEPTION_NOTES),
    "attention": dict(fn=bench_attention, columns=ATTENTION_COLUMNS, notes=ATTENTION_NOTES),
}
