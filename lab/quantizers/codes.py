"""Exact conversions between the forms a code takes (the one place they live).

- ``"index"``: int64 (...) in [0, V).
- ``"bits"``: float32 (..., d) in {0, 1}, most significant bit first, so that
  ``index = sum_i bits[..., i] * 2 ** (d - 1 - i)``. This matches vector-quantize-pytorch's LFQ.
- ``"digits"``: int64 (..., D), one level index per dimension of a mixed-radix code (FSQ: digit i in
  [0, levels[i])), most significant first, so that with every level 2 the digits are the bits.
  ``index = sum_i digits[..., i] * prod(levels[i+1:])``.
A quantizer's ``code_kind`` is "index" or "bits" (what flows through the pipeline); FSQ's codes are indices and
its digits are their exact view (``index_to_digits``), the form a per-dimension head predicts.
"""
from __future__ import annotations

import math
from typing import Sequence

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


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """``levels`` as a tuple, or a ValueError: at least one dimension, every level >= 2, and a vocabulary (their
    product) that an int64 index holds (at most 2^MAX_PACK_BITS codes)."""
    levels = tuple(int(x) for x in levels)
    if not levels:
        raise ValueError("levels is empty: give one level count per dimension, e.g. [8, 5, 5, 5]")
    if min(levels) < 2:
        raise ValueError(f"every level must be >= 2 (a dimension with one level carries nothing), got {list(levels)}")
    V = math.prod(levels)
    if V > 2**MAX_PACK_BITS:
        raise ValueError(f"levels {list(levels)} give a vocabulary of {V} codes, above the 2^{MAX_PACK_BITS} an int64 "
                         "index holds; use fewer dimensions or levels")
    return levels


def _radix(levels: Sequence[int], device: torch.device) -> Tensor:
    w = [1]
    for L in reversed(levels[1:]):
        w.insert(0, w[0] * int(L))
    return torch.tensor(w, dtype=torch.int64, device=device)  # (D,) place values, most significant first


def digits_to_index(digits: Tensor, levels: Sequence[int]) -> Tensor:
    """digits (..., D) with digit i in [0, levels[i]) -> int64 index (...)."""
    return (digits.to(torch.int64) * _radix(levels, digits.device)).sum(-1)


def index_to_digits(index: Tensor, levels: Sequence[int]) -> Tensor:
    """int64 index (...) in [0, prod(levels)) -> int64 digits (..., D), most significant first."""
    L = torch.tensor([int(x) for x in levels], dtype=torch.int64, device=index.device)
    return (index.to(torch.int64).unsqueeze(-1) // _radix(levels, index.device)) % L
