"""Sampling scale by scale with a KV cache (VAR/Infinity), or token by token for the raster baseline.

Per step: the head turns the transformer's states into codes (in one pass, or several: masked_bits), and at
every pass: logits -> classifier-free guidance on logits ``g*cond + (1-g)*uncond`` (g: ``guidance``) (constant, or growing
linearly from 1 at the first scale to ``guidance`` at the last) -> temperature, top-k / top-p (per bit for the
bitwise head) -> codes -> ``f_hat += phi_k(up(codes_to_latent(codes)))`` -> the next scale's input.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass

import torch
from torch import Tensor, nn

from lab.core.settings import SampleSettings
from lab.quantizers.multiscale import MultiScaleQuantizer
from lab.models.transformer import Cond, Transformer


@dataclass
class SampleOptions:
    guidance: float = 1.0  # classifier-free guidance scale (1: off)
    guidance_schedule: str = "constant"  # constant | linear
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    use_cache: bool = True
    cfg: InitVar[float | None] = None  # deprecated name of ``guidance`` (until 0.2)
    cfg_schedule: InitVar[str | None] = None  # deprecated name of ``guidance_schedule`` (until 0.2)

    @classmethod
    def of(cls, sample: SampleSettings, **kw) -> "SampleOptions":
        """A run's ``sample:`` settings as options, with keyword overrides (``guidance=3.0``, ``seed=1``, ...): the
        one place where a config's sampling settings become ``SampleOptions``."""
        base = dict(guidance=sample.guidance, guidance_schedule=sample.guidance_schedule,
                    temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p)
        return cls(**{**base, **kw})

    def __post_init__(self, cfg: float | None, cfg_schedule: str | None) -> None:
        if cfg is not None:
            self.guidance = cfg
        if cfg_schedule is not None:
            self.guidance_schedule = cfg_schedule


def guidance_at(opts: SampleOptions, k: int, K: int) -> float:
    """The guidance scale at scale k of K (``guidance_schedule``)."""
    if opts.guidance_schedule == "linear":
        return 1.0 + (opts.guidance - 1.0) * k / max(1, K - 1)
    if opts.guidance_schedule != "constant":
        raise ValueError(f"unknown guidance_schedule '{opts.guidance_schedule}'; valid: constant, linear")
    return opts.guidance


def _cat_cond(a: Cond, b: Cond) -> Cond:
    ctx = None if a.ctx is None else _pad_cat(a.ctx, b.ctx)
    mask = None if a.ctx_mask is None else _pad_cat(a.ctx_mask, b.ctx_mask)
    return Cond(torch.cat([a.c, b.c]), ctx, mask)


def _pad_cat(x: Tensor, y: Tensor) -> Tensor:
    T = max(x.shape[1], y.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, T - t.shape[1]) if t.ndim == 3 else (0, T - t.shape[1]))
    return torch.cat([pad(x), pad(y)])


def make_cond(model: Transformer, *, labels=None, text=None, batch_size: int, guided: bool) -> Cond:
    """Conditional batch, followed by its unconditional (null) twin when CFG is on."""
    cond = model.condition(labels=labels, text=text, batch_size=batch_size)
    if not guided:
        return cond
    drop = torch.ones(batch_size, dtype=torch.bool, device=cond.c.device)
    return _cat_cond(cond, model.condition(labels=labels, text=text, drop=drop, batch_size=batch_size))


def _guide(logits: Tensor, B: int, w: float, guided: bool) -> Tensor:
    if not guided:
        return logits
    cond, uncond = logits[:B], logits[B:]
    return w * cond + (1 - w) * uncond


def _guide_fn(B: int, w: float, guided: bool):
    """The guidance a head applies to each pass's logits: rows [0, B) conditional, [B, 2B) unconditional."""
    return lambda logits: _guide(logits, B, w, guided)


def _run(model: Transformer, x_tokens: Tensor | None, cond: Cond, cache, start: int, n: int, use_cache: bool, prefix: Tensor | None):
    """Hidden states of positions [start, start+n), cached or recomputed from scratch."""
    if use_cache:
        return model.step(x_tokens, cond, cache, start, n), None
    seq = x_tokens if prefix is None else (prefix if x_tokens is None else torch.cat([prefix, x_tokens], 1))
    end = start + n
    x = model._embed(seq, cond, 0, end)
    mask = model.mask[:end, :end]
    for blk in model.blocks:
        x = blk(x, cond, mask)
    return model._out(x, cond)[:, start:end], seq


@torch.no_grad()
def sample_codes(model: Transformer, head: nn.Module, msq: MultiScaleQuantizer, *, labels=None, text=None,
                 batch_size: int, opts: SampleOptions) -> tuple[list[Tensor], Tensor]:
    """Generate per-scale codes and the feature map f_hat (B, C, H, W)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    guided = opts.guidance != 1.0 and model.cond_kind != "none"
    B = batch_size
    cond = make_cond(model, labels=labels, text=text, batch_size=B, guided=guided)
    K = msq.num_scales
    cache = model.new_cache()
    f_hat = torch.zeros(B, model.inp.in_features, msq.size, msq.size, device=device)
    codes_all: list[Tensor] = []
    prefix = None
    sample_kw = dict(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, generator=gen)
    start = 0
    if model.order == "scale":
        for k, s in enumerate(msq.scales):
            x_tok = None
            if k > 0:
                x_tok = msq.down(f_hat, s).flatten(2).transpose(1, 2)  # (B, s*s, C)
                if guided:
                    x_tok = torch.cat([x_tok, x_tok])
            h, prefix = _run(model, x_tok, cond, cache, start, s * s, opts.use_cache, prefix)
            start += s * s
            guide = _guide_fn(B, guidance_at(opts, k, K), guided)
            flat = head.sample(h, guide=guide, **sample_kw)  # (B, s*s) or (B, s*s, d)
            codes = flat.reshape(B, s, s, *flat.shape[2:])
            codes_all.append(codes)
            f_hat = f_hat + msq.contribution(msq.scale_latent(codes), k)
        return codes_all, f_hat
    # raster: one token at a time over the same multi-scale token set
    x_tok = None
    flat_codes: list[Tensor] = []
    for t in range(model.L):
        k = int(model.scale_of[t])
        h, prefix = _run(model, x_tok, cond, cache, t, 1, opts.use_cache, prefix)
        code = head.sample(h, guide=_guide_fn(B, guidance_at(opts, k, K), guided), **sample_kw)  # (B, 1) or (B, 1, d)
        flat_codes.append(code)
        x_tok = token_latent(msq, code, k)
        if guided:
            x_tok = torch.cat([x_tok, x_tok])
    flat = torch.cat(flat_codes, 1)
    i = 0
    for k, s in enumerate(msq.scales):
        codes = flat[:, i : i + s * s].reshape(B, s, s, *flat.shape[2:])
        i += s * s
        codes_all.append(codes)
        f_hat = f_hat + msq.contribution(msq.scale_latent(codes), k)
    return codes_all, f_hat


def scale_token_latents(msq: MultiScaleQuantizer, codes: Tensor, k: int) -> Tensor:
    """Raster inputs: the gain-scaled quantizer latent of every token of scale k, (B, s*s, C)."""
    return (msq.gain(k) * msq.scale_latent(codes)).flatten(2).transpose(1, 2)


def token_latent(msq: MultiScaleQuantizer, code: Tensor, k: int) -> Tensor:
    """Raster input for one sampled token per sample: code (B, 1[, d]) -> (B, 1, C)."""
    return scale_token_latents(msq, code.reshape(code.shape[0], 1, 1, *code.shape[2:]), k)


@torch.no_grad()
def sample_images(model, head, tokenizer, *, labels=None, text=None, batch_size: int, opts: SampleOptions) -> Tensor:
    _, f_hat = sample_codes(model, head, tokenizer.msq, labels=labels, text=text, batch_size=batch_size, opts=opts)
    return tokenizer.decode(f_hat).clamp(-1, 1)
