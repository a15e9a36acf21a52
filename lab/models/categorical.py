"""Sampling a categorical distribution from logits (temperature, top-k, top-p), shared by every head."""
from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """Sample the last dimension. temperature 0 is greedy; top_k 0 and top_p 1 disable the filters."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def sample_bits(logits: Tensor, *, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> Tensor:
    """Bits (..., d) as float from per-bit logits (..., d): each bit a 2-way categorical (logits [0, l]), so
    temperature and top-p act per bit; top-k over two choices is either greedy (1) or nothing (0, 2)."""
    two = torch.stack([torch.zeros_like(logits), logits], -1)  # (..., d, 2)
    return sample_categorical(two, temperature=temperature, top_k=top_k if top_k == 1 else 0, top_p=top_p,
                              generator=generator).float()
