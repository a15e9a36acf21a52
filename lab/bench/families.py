"""``make bench`` part ``families``: what the two newer families cost beside the ones they compete with.

- heads: the masked-bit head (MaskBit / BAR) and the per-dimension (digits) head against the bitwise head on the
  same states and codes: parameters, one training step of the head (forward + backward), and the sampling time
  per image of the whole next-scale sampler (size-s transformer, KV cache, 16-bit BSQ; masked-bit at its
  ``steps`` unmasking rounds).
- quantizers: FSQ's training step time and memory beside BSQ's at matched code counts.

Ratios are measured side by side in one process; the issue's goals are masked-bit training <= 1.3x and
sampling <= 2x the bitwise head at steps = 4.
"""
from __future__ import annotations

import torch

from lab.bench.common import Settings, measure, progress, ratio, time_ms
from lab.generation.sampling import SampleOptions, sample_codes
from lab.models.heads import build_head
from lab.models.tokenizer import Tokenizer
from lab.models.transformer import Transformer
from lab.quantizers import build_quantizer

# (label, quantizer node, bits it matches): FSQ levels the FSQ paper gives for about 2^8, 2^10, 2^12, 2^16
FSQ_VS_BSQ = (("2^8", [8, 6, 5], 8), ("2^10", [8, 5, 5, 5], 10), ("2^12", [7, 5, 5, 5, 5], 12),
              ("2^16", [8, 8, 8, 5, 5, 5], 16))
HEADS = ("bitwise", "masked_bits", "digits")


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def bench_families(s: Settings) -> list[dict]:
    rows: list[dict] = []
    rows += _heads_train(s)
    rows += _generator_step(s)
    rows += _heads_sampling(s)
    rows += _fsq(s)
    return rows


def _heads_train(s: Settings) -> list[dict]:
    B, L, W, bits = (4, 130, 256, 16) if s.quick else (64, 130, 256, 16)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(B, L, W, generator=gen).to(s.device).requires_grad_(True)
    codes = torch.randint(0, 2, (B, L, bits), generator=gen).float().to(s.device)
    out, base = [], None
    for name in HEADS:
        progress(f"families: {name} head training step")
        head = build_head({"name": name}, width=W, code_kind="bits", bits=bits, vocab_size=2**bits).to(s.device).train()

        def step(head=head):
            head.loss(h, codes).mean().backward()
            h.grad = None
            for p in head.parameters():
                p.grad = None

        r = measure(step, s)
        base = r["ms"] if name == "bitwise" else base
        out.append(dict(item="head train step", name=name, setting=f"({B} x {L}) tokens, width {W}, {bits} bits",
                        params=_count(head), ms=r["ms"], n=r["n"], peak_mb=r["peak_mb"], vs_bitwise=ratio(r["ms"], base)))
    return out


def _generator_step(s: Settings) -> list[dict]:
    """The training step the goal is about: size-s transformer + head, forward + backward + AdamW, 16-bit codes."""
    B = 8 if s.quick else 32
    torch.manual_seed(0)
    tok = Tokenizer(quantizer={"name": "bsq", "bits": 16}).to(s.device).eval()
    out, base = [], None
    for name in HEADS:
        progress(f"families: size-s generator step with the {name} head")
        model = Transformer(latent_dim=tok.latent_dim, scales=tok.msq.scales, num_classes=10, size="s", cond="class")
        model = model.to(s.device).train()
        head = build_head({"name": name}, width=model.width, code_kind="bits", bits=16, vocab_size=2**16).to(s.device).train()
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        x = torch.randn(B, model.L - 1, tok.latent_dim, device=s.device)
        bits = torch.randint(0, 2, (B, model.L, 16), device=s.device).float()
        labels = torch.randint(0, 10, (B,), device=s.device)

        def step(model=model, head=head, opt=opt):
            h = model(x, model.condition(labels=labels, drop=torch.zeros(B, dtype=torch.bool, device=s.device)))
            loss = head.loss(h, bits).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # AdamW's state allocated outside the measurement
        r = measure(step, s)
        base = r["ms"] if name == "bitwise" else base
        out.append(dict(item="generator train step", name=name, setting=f"size s + head, batch {B}, 130 tokens",
                        params=_count(head), ms=r["ms"], n=r["n"], peak_mb=r["peak_mb"], vs_bitwise=ratio(r["ms"], base)))
    return out


def _heads_sampling(s: Settings) -> list[dict]:
    torch.manual_seed(0)
    B = 4 if s.quick else 16
    tok = Tokenizer(quantizer={"name": "bsq", "bits": 16}).to(s.device).eval()
    model = Transformer(latent_dim=tok.latent_dim, scales=tok.msq.scales, num_classes=10, size="s", cond="class").to(s.device)
    labels = (torch.arange(B) % 10).to(s.device)
    out, base = [], None
    for name in HEADS:
        progress(f"families: {name} head sampling")
        head = build_head({"name": name}, width=model.width, code_kind="bits", bits=16, vocab_size=2**16).to(s.device).eval()

        @torch.no_grad()
        def run(head=head):
            sample_codes(model, head, tok.msq, labels=labels, batch_size=B, opts=SampleOptions(seed=0))

        ms, n = time_ms(run, s)
        per_image = ms / B
        base = per_image if name == "bitwise" else base
        steps = getattr(head, "steps", 1)
        out.append(dict(item="sampling per image", name=name, setting=f"size s, batch {B}, next-scale, KV cache"
                        + (f", {steps} unmasking rounds" if name == "masked_bits" else ""),
                        params=_count(head), ms=per_image, n=n, vs_bitwise=ratio(per_image, base)))
    return out


def _fsq(s: Settings) -> list[dict]:
    shape = (8, 16, 8, 8) if s.quick else (64, 16, 8, 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(s.device).requires_grad_(True)
    out = []
    for label, levels, bits in FSQ_VS_BSQ:
        ms = {}
        for node in ({"name": "bsq", "bits": bits}, {"name": "fsq", "levels": levels}):
            progress(f"families: {node['name']} {label}")
            q = build_quantizer(node, dim=shape[1]).to(s.device).train()

            def step(q=q):
                o = q(x)
                (o.z_q.square().mean() + o.loss).backward()
                x.grad = None
                for p in q.parameters():
                    p.grad = None

            r = measure(step, s)
            ms[node["name"]] = r["ms"]
            out.append(dict(item="quantizer train step", name=node["name"], setting=f"{label} codes"
                            + (f" (levels {levels})" if node["name"] == "fsq" else ""),
                            params=_count(q), ms=r["ms"], n=r["n"], peak_mb=r["peak_mb"]))
        out[-1]["vs_bsq"] = ratio(ms["fsq"], ms["bsq"])
    return out


COLUMNS = [("item", "item", "s"), ("name", "name", "s"), ("setting", "setting", "s"), ("params", "params", "h"),
           ("ms", "ms", "f"), ("n", "n", "i"), ("peak_mb", "peak MiB", "f"), ("vs_bitwise", "x bitwise", "x"),
           ("vs_bsq", "x bsq", "x")]
NOTES = ["generator train step: the step the training goal is about (untrained size-s transformer and the head, "
         "forward + backward + AdamW); params: the head's.",
         "head train step: the head alone, forward + backward of its loss on random states and bit codes (the "
         "masked-bit head draws its mask per token from its schedule, as in training).",
         "sampling per image: the whole next-scale sampler (untrained size-s transformer with its KV cache, 16-bit "
         "BSQ, class labels, guidance 1) divided by the batch; the masked-bit head runs its unmasking rounds per scale.",
         "quantizer train step: forward + backward of the quantizer alone on a (B, 16, 8, 8) latent, FSQ at the "
         "levels the FSQ paper lists for each code count beside BSQ of the same bits.",
         "Goals (issue on the families): masked-bit training <= 1.3x and sampling <= 2x the bitwise head at 4 rounds."]
