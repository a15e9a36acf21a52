"""The one return type and helpers shared by every quantizer."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Protocol, runtime_checkable

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


@runtime_checkable
class Quantizer(Protocol):
    """What every entry of ``QUANTIZERS`` provides (an ``nn.Module``; built with ``dim=`` the latent width and the
    YAML node's keyword arguments). The multi-scale quantizer and everything above it use only these."""

    code_kind: str  # "index": int64 codes (B, h, w); "bits": float32 codes (B, h, w, d) in {0, 1}
    bits: int  # log2 of the vocabulary (the code's width in bits)
    vocab_size: int

    def __call__(self, z: Tensor) -> QuantOut:
        """(B, C, h, w) latent -> QuantOut(z_q, codes, loss, stats)."""

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """Codes -> the quantized latent (B, C, h, w) that ``z_q`` would be (no gradient path)."""


BIT_MARGINAL = "bit_marginal"  # stats key: a scale's batch statistics left for the caller to reduce (below)


@runtime_checkable
class SyncsBatchStatistics(Protocol):
    """The one optional capability ``MultiScaleQuantizer`` uses beyond ``Quantizer``: a quantizer whose loss needs
    statistics of the whole batch reduced over processes (BSQ's entropy term needs every bit's marginal) leaves
    them in ``stats[BIT_MARGINAL]`` while ``defer_sync`` is set, and the multi-scale quantizer reduces every
    scale's at once (one all-reduce instead of one per scale) and adds ``diversity_loss(marginal, stats)``.
    A quantizer without it computes its whole loss itself."""

    defer_sync: bool

    def diversity_loss(self, marginal: Tensor, stats: dict) -> Tensor:
        """The loss term of the reduced ``marginal`` (it may add its own logging scalars to ``stats``)."""


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


_local_only = False


@contextmanager
def local_statistics() -> Iterator[None]:
    """Within this block ``global_mean`` does not communicate: for work that one process does alone while a
    process group exists (e.g. rank 0 measuring a training step after ``fit``), which would otherwise wait
    forever for the other processes."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


def local_only() -> bool:
    """Whether the caller is inside ``local_statistics`` (a wrapped library that communicates on its own, e.g.
    vector-quantize-pytorch's LFQ, must then be kept from it)."""
    return _local_only


def distributed() -> bool:
    """Whether ``global_mean`` would communicate (a process group of 2+ and not ``local_statistics``)."""
    import torch.distributed as dist

    return not _local_only and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the processes of the default process group (``x`` itself when not distributed
    or inside ``local_statistics``). Every process must call it equally often, with the same shape.

    Meant for a loss that every process computes identically from the global value, under DDP's gradient
    averaging: the gradient passes to the local ``x`` unchanged (straight-through), and the average of the
    processes' gradients is then exactly the gradient of the global loss. So only the forward communicates:
    one all-reduce, none in the backward."""
    if not distributed():
        return x
    import torch.distributed as dist

    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total / dist.get_world_size() - x).detach()
