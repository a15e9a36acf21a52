"""Exact conversions between bit codes and integer indices (the one place they live).

Convention: bits (..., d) in {0, 1} as float32, most significant bit first, so that
``index = sum_i bits[..., i] * 2 ** (d - 1 - i)``. This matches vector-quantize-pytorch's LFQ.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_PACK_BITS = 62  # int64 holds 63 magnitude bits; keep one spare so sums never overflow


def bits_for_vocab(vocab_size: int) -> int:
    """Number of bits needed to write every index of a vocabulary of ``vocab_size`` codes."""
    if vocab_size < 2:
        raise ValueError(f"a vocabulary needs at least 2 codes, got {vocab_size}")
    return max(1, math.ceil(math.log2(vocab_size)))


def _weights(d: int, device: torch.device) -> Tensor:
    if not 1 <= d <= MAX_PACK_BITS:
        raise ValueError(f"can pack 1..{MAX_PACK_BITS} bits into an int64 index, got {d}")
    return 2 ** torch.arange(d - 1, -1, -1, device=device, dtype=torch.int64)  # (d,)


def pack_bits(bits: Tensor) -> Tensor:
    """bits (..., d) in {0,1} -> int64 index (...)."""
    w = _weights(bits.shape[-1], bits.device)
    return (bits.to(torch.int64) * w).sum(-1)


def unpack_bits(index: Tensor, d: int) -> Tensor:
    """int64 index (...) -> float32 bits (..., d), most significant first."""
    w = _weights(d, index.device)
    return ((index.to(torch.int64).unsqueeze(-1) & w) != 0).to(torch.float32)
