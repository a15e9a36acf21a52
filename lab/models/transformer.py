"""Next-scale (and raster next-token) autoregressive transformer with a KV cache.

Sequence layout (VAR/Infinity): position 0 is the start token (the condition); the tokens of scale k >= 1
are ``down(f_hat_{<k}, s_k)`` projected to the model width. The output at the tokens of scale k predicts
the codes of scale k. Attention is block-causal: a token of scale k sees every token of scales <= k.
``order: raster`` is the next-token baseline over the same token set: plain causal attention, the input
of token t is the latent of code t-1. Pre-norm blocks with adaptive LayerNorm on the condition (DiT/VAR
adaLN-Zero); class, text (cross-attention to frozen MiniLM token states) or no conditioning.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lab.models.text import TEXT_DIM

# name -> (depth, width, heads): width grows with depth, shaped like Infinity's Tab.6 ladder
LADDER = {"xs": (3, 128, 2), "s": (4, 256, 4), "m": (6, 320, 5), "l": (8, 384, 6)}
INJECTED = ("latent_dim", "scales", "num_classes")
CONDS = ("class", "text", "none")
ORDERS = ("scale", "raster")


class Cond(NamedTuple):
    c: Tensor  # (B, W) pooled condition: start token and adaLN input
    ctx: Tensor | None  # (B, T, W) text token states for cross-attention
    ctx_mask: Tensor | None  # (B, T) True where a text token is present


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """``scaled_dot_product_attention``, with its math kernel for bf16 / fp16 on a CPU: there torch picks its
    flash kernel, which at these sequence lengths (130 tokens) took about twice as long forward + backward as the
    math kernel (``make bench`` part ``attention``: 2.0-2.3x at 4 heads on an AMD EPYC Zen 4, 1 and 2 threads),
    while in fp32 the two are within 10 % and the choice is left to torch. The math kernel computes reduced
    precision in fp32 internally; results differ from the flash kernel's at bf16 rounding."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: dict | None = None) -> Tensor:
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, L, hs)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        out = attention(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, W))


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        B, L, W = x.shape
        T = ctx.shape[1]
        q = self.q(x).view(B, L, self.heads, W // self.heads).transpose(1, 2)
        k, v = self.kv(ctx).view(B, T, 2, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, ctx_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, L, W))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, cross: bool, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads)
        self.cross = CrossAttention(width, heads) if cross else None
        self.norm_x = nn.LayerNorm(width, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, cond: Cond, mask: Tensor | None = None, cache: dict | None = None) -> Tensor:
        s1, c1, g1, s2, c2, g2 = self.ada(cond.c).chunk(6, -1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, c1), mask, cache)
        if self.cross is not None:
            x = x + self.cross(self.norm_x(x), cond.ctx, cond.ctx_mask)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, c2))


class Transformer(nn.Module):
    def __init__(
        self,
        *,
        latent_dim: int,
        scales: Sequence[int],
        num_classes: int,
        size: str = "s",
        depth: int | None = None,
        width: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cond: str = "class",
        cond_dropout: float = 0.1,
        order: str = "scale",
    ):
        """size picks (depth, width, heads) from LADDER; depth/width/heads override it one by one.
        cond_dropout: probability of replacing the condition by the null one in training (for CFG)."""
        super().__init__()
        if size not in LADDER:
            raise ValueError(f"unknown generator.size '{size}'; valid: {', '.join(LADDER)}")
        if cond not in CONDS:
            raise ValueError(f"unknown generator.cond '{cond}'; valid: {', '.join(CONDS)}")
        if order not in ORDERS:
            raise ValueError(f"unknown generator.order '{order}'; valid: {', '.join(ORDERS)}")
        d0, w0, h0 = LADDER[size]
        self.depth, self.width, self.heads = depth or d0, width or w0, heads or h0
        if self.width % self.heads:
            raise ValueError(f"generator width {self.width} is not divisible by heads {self.heads}")
        W = self.width
        self.scales = [int(s) for s in scales]
        self.order, self.cond_kind, self.cond_dropout = order, cond, cond_dropout
        self.num_classes = num_classes
        sizes = [s * s for s in self.scales]
        self.L = sum(sizes)
        scale_of = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
        self.register_buffer("scale_of", scale_of, persistent=False)  # (L,)
        if order == "scale":
            mask = scale_of[None, :] <= scale_of[:, None]  # block-causal: key scale <= query scale
        else:
            mask = torch.ones(self.L, self.L, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)
        self.pos = nn.Parameter(torch.randn(1, self.L, W) * 0.02)
        self.level = nn.Embedding(len(self.scales), W)
        self.inp = nn.Linear(latent_dim, W)
        if cond == "class":
            if num_classes < 1:
                raise ValueError("generator.cond=class needs a dataset with class labels; use cond=none or text")
            self.class_emb = nn.Embedding(num_classes + 1, W)  # the last one is the null class
        elif cond == "text":
            self.text_proj = nn.Linear(TEXT_DIM, W)
            self.pool_proj = nn.Linear(TEXT_DIM, W)
            self.null_ctx = nn.Parameter(torch.randn(1, 1, W) * 0.02)  # the learned null caption
            self.null_c = nn.Parameter(torch.randn(W) * 0.02)
        else:
            self.null_c = nn.Parameter(torch.randn(W) * 0.02)
        self.blocks = nn.ModuleList(
            Block(W, self.heads, mlp_ratio, cross=cond == "text", dropout=dropout) for _ in range(self.depth)
        )
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear) and not (m.weight.abs().sum() == 0):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- conditioning ------------------------------------------------------------------------
    def condition(self, *, labels: Tensor | None = None, text: tuple[Tensor, Tensor] | None = None,
                  drop: Tensor | None = None, batch_size: int | None = None) -> Cond:
        """drop (B,) bool: use the null condition for these samples (label dropout / CFG's unconditional half)."""
        if self.cond_kind == "class":
            idx = labels.clone()
            if drop is not None:
                idx[drop] = self.num_classes
            return Cond(self.class_emb(idx), None, None)
        if self.cond_kind == "text":
            states, mask = text
            B = states.shape[0]
            m = mask.float().unsqueeze(-1)
            pooled = (states * m).sum(1) / m.sum(1).clamp_min(1)
            c = self.pool_proj(pooled)
            ctx = self.text_proj(states)
            ctx_mask = mask.clone()
            if drop is not None and drop.any():
                c = torch.where(drop[:, None], self.null_c.expand(B, -1), c)
                null = torch.zeros_like(ctx)
                null[:, :1] = self.null_ctx
                ctx = torch.where(drop[:, None, None], null, ctx)
                only_first = torch.zeros_like(ctx_mask)
                only_first[:, 0] = True
                ctx_mask = torch.where(drop[:, None], only_first, ctx_mask)
            return Cond(c, ctx, ctx_mask)
        B = batch_size if batch_size is not None else (labels.shape[0] if labels is not None else 1)
        return Cond(self.null_c.expand(B, -1), None, None)

    # --- forward -------------------------------------------------------------------------------
    def _embed(self, x_tokens: Tensor | None, cond: Cond, start: int, n: int) -> Tensor:
        parts = []
        if start == 0:
            parts.append(cond.c.unsqueeze(1))  # the start token
        if x_tokens is not None and x_tokens.shape[1] > 0:
            parts.append(self.inp(x_tokens))
        x = torch.cat(parts, 1)
        assert x.shape[1] == n, (x.shape, n)
        return x + self.pos[:, start : start + n] + self.level(self.scale_of[start : start + n])

    def _out(self, x: Tensor, cond: Cond) -> Tensor:
        shift, scale = self.ada_out(cond.c).chunk(2, -1)
        return modulate(self.norm_out(x), shift, scale)

    def forward(self, x_tokens: Tensor, cond: Cond) -> Tensor:
        """x_tokens (B, L-1, latent_dim): the inputs after the start token -> hidden states (B, L, W)."""
        x = self._embed(x_tokens, cond, 0, self.L)
        for blk in self.blocks:
            x = blk(x, cond, self.mask)
        return self._out(x, cond)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def step(self, x_tokens: Tensor | None, cond: Cond, cache: list[dict], start: int, n: int) -> Tensor:
        """Cached forward of positions [start, start+n): they attend to everything cached and to each other,
        which is exactly the block-causal mask when the n tokens are one whole scale (or one raster token)."""
        x = self._embed(x_tokens, cond, start, n)
        for blk, c in zip(self.blocks, cache):
            x = blk(x, cond, None, c)
        return self._out(x, cond)
