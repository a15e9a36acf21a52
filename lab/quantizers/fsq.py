"""Finite scalar quantization (Mentzer et al., arXiv 2309.15505) through vector-quantize-pytorch's ``FSQ``.

Project to D = len(levels) channels; the library bounds each channel (tanh) and rounds it to ``levels[i]``
values in [-1, 1] with a straight-through gradient. The codebook is implicit: prod(levels) codes, no auxiliary
loss, nothing materialised (the library's own index path builds a prod(levels) x D table and int32 indices, so
we take only its bound-and-round and keep the index <-> digits maps in ``lab.quantizers.codes``: exact to
2^62 codes). BSQ is the case of every level 2 on the unit sphere.

Codes are indices (``code_kind = "index"``); ``codes_to_digits`` gives the level index of every dimension,
the form a per-dimension head predicts.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ as _FSQ

from lab.quantizers.base import Projection, QuantOut, to_channels_first, to_channels_last
from lab.quantizers.codes import bits_for_vocab, check_levels, digits_to_index, index_to_digits


class FSQ(nn.Module):
    code_kind = "index"

    def __init__(self, *, dim: int = 16, levels: Sequence[int] = (8, 5, 5, 5), preserve_symmetry: bool | None = None):
        """dim: latent channels in; levels: the number of values of each code dimension (vocabulary = product).

        preserve_symmetry: the library's symmetric rounding (levels 2k/(L-1) - 1, arXiv 2411.19842 sec. 3.2),
        which it requires when a level is 2; None turns it on exactly then, else the paper's rounding."""
        super().__init__()
        self.levels = check_levels(levels)
        self.dim = dim
        self.codebook_size = math.prod(self.levels)
        if preserve_symmetry is None:
            preserve_symmetry = 2 in self.levels
        elif 2 in self.levels and not preserve_symmetry:
            raise ValueError(f"levels {list(self.levels)} have a level of 2, which needs preserve_symmetry: true")
        self.preserve_symmetry = bool(preserve_symmetry)
        D = len(self.levels)
        self.fsq = _FSQ(levels=list(self.levels), dim=D, return_indices=False, preserve_symmetry=self.preserve_symmetry)
        self.project_in = Projection(dim, D)
        self.project_out = Projection(D, dim)
        L = torch.tensor(self.levels, dtype=torch.float32)
        self.register_buffer("_L", L, persistent=False)

    @property
    def bits(self) -> int:
        return bits_for_vocab(self.codebook_size)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    # value in [-1, 1] <-> digit in [0, L): the inverse of the library's rounding grid
    def _to_digits(self, v: Tensor) -> Tensor:
        L = self._L
        if self.preserve_symmetry:
            return ((v + 1) * (L - 1) / 2).round().long()
        half = torch.div(L, 2, rounding_mode="floor")
        return (v * half + half).round().long()

    def _to_values(self, digits: Tensor) -> Tensor:
        L = self._L
        d = digits.float()
        if self.preserve_symmetry:
            return d * 2 / (L - 1) - 1
        half = torch.div(L, 2, rounding_mode="floor")
        return (d - half) / half

    def forward(self, z_BChw: Tensor) -> QuantOut:
        u = to_channels_last(self.project_in(z_BChw).float())  # (B, h, w, D)
        q = self.fsq.quantize(u)  # bounded and rounded, straight-through
        digits = self._to_digits(q.detach())  # (B, h, w, D)
        index_Bhw = digits_to_index(digits, self.levels)
        stats = self.level_stats(digits.reshape(-1, len(self.levels)), index_Bhw)
        return QuantOut(self.project_out(to_channels_first(q)), index_Bhw, q.new_zeros(()), stats)

    @torch.no_grad()
    def level_stats(self, digits_ND: Tensor, index: Tensor) -> dict:
        """Batch usage (distinct codes / vocabulary) and each dimension's level entropy normalised by log2(L_i)
        (1: every level equally used), their mean as ``level_entropy``."""
        ent = []
        for i, L in enumerate(self.levels):
            p = torch.bincount(digits_ND[:, i], minlength=L).double()
            p = p / p.sum().clamp_min(1)
            ent.append(-(p * p.clamp_min(1e-12).log2()).sum() / math.log2(L))
        stats = {f"level_entropy_{i}": e.float() for i, e in enumerate(ent)}
        stats["level_entropy"] = torch.stack(ent).mean().float()
        stats["codebook_usage"] = index.new_tensor(index.unique().numel(), dtype=torch.float32) / self.codebook_size
        return stats

    def codes_to_digits(self, index: Tensor) -> Tensor:
        """int64 index (...) -> int64 level indices (..., D)."""
        return index_to_digits(index, self.levels)

    def digits_to_codes(self, digits: Tensor) -> Tensor:
        return digits_to_index(digits, self.levels)

    def codes_to_latent(self, index_Bhw: Tensor) -> Tensor:
        """int64 (B, h, w) -> latent (B, C, h, w)."""
        return self.project_out(to_channels_first(self._to_values(self.codes_to_digits(index_Bhw))))

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, vocab_size={self.codebook_size}, preserve_symmetry={self.preserve_symmetry}"
