"""The one return type and helpers shared by every quantizer."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class QuantOut(NamedTuple):
    """What every quantizer returns.

    z_q:   (B, C, h, w) quantized latent (straight-through: gradients reach the input)
    codes: int64 (B, h, w) indices for ``code_kind == "index"``, float32 (B, h, w, d) bits in {0,1} for "bits"
    loss:  scalar auxiliary loss (commitment, entropy, ...), already weighted
    stats: detached scalars for logging
    """

    z_q: Tensor
    codes: Tensor
    loss: Tensor
    stats: dict


def binary_entropy(p: Tensor) -> Tensor:
    """Entropy in bits of Bernoulli(p), elementwise; safe at 0 and 1."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def to_channels_last(z_BChw: Tensor) -> Tensor:
    return z_BChw.permute(0, 2, 3, 1)  # (B, h, w, C)


def to_channels_first(z_BhwC: Tensor) -> Tensor:
    return z_BhwC.permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)


class Projection(nn.Module):
    """1x1 projection between the latent width and the code width (identity when they agree)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)
