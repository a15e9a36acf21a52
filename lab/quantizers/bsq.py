"""Binary spherical quantization (BSQ-ViT, arXiv 2406.07548; Infinity's bitwise tokenizer).

Project to ``bits`` channels, l2-normalise, quantize each channel to ``sign(u)/sqrt(d)`` with a
straight-through gradient. The entropy term of MAGVIT-v2 (``E[H(q)] - gamma * H[E q]``) factorises over
bits because the code is a product of independent signs, so it costs O(d) per position instead of the
O(2^d) of a materialised codebook: memory grows linearly in ``bits`` and 64 bits train fine.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.quantizers.codes import pack_bits
from lab.quantizers.base import (BIT_MARGINAL, Projection, QuantOut, binary_entropy, distributed, global_mean,
                                 to_channels_last)


class BSQ(nn.Module):
    code_kind = "bits"

    def __init__(
        self,
        *,
        dim: int = 16,
        bits: int = 16,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        commitment_weight: float = 0.25,
        inv_temperature: float = 1.0,
        sync_entropy: bool = True,
    ):
        """dim: latent channels in; bits: d = log2(vocabulary).

        sync_entropy: under data-parallel training, estimate each bit's marginal (the diversity term
        ``H[E q]``) over the global batch, all processes together, instead of each process's shard. A coarse
        scale has one token per image, so a shard of 8 images gives an 8-sample estimate and its bits can
        collapse (measured: two processes of 8 images each drove scale 1's bit entropy to 0.08; the same 16
        images in one process kept 0.995). After DDP's gradient averaging the gradient is exactly that of the
        global term; inside a MultiScaleQuantizer every scale's marginals travel in one all-reduce per step.

        inv_temperature sets the soft assignment used only by the entropy term:
        p(bit=1) = sigmoid(4 * inv_temperature * sqrt(d) * u) for the normalised input u, i.e. the
        distance-softmax between the two codes +-1/sqrt(d) of each bit, with the temperature expressed
        per bit so that one value works at every d.
        """
        super().__init__()
        if bits < 1:
            raise ValueError(f"bsq needs bits >= 1, got {bits}")
        self.dim, self.bits = dim, bits
        self.entropy_weight = entropy_weight
        self.diversity_gamma = diversity_gamma
        self.commitment_weight = commitment_weight
        self.inv_temperature = inv_temperature
        self.sync_entropy = sync_entropy
        self.defer_sync = False  # set by MultiScaleQuantizer while it runs its scales
        self.project_in = Projection(dim, bits)
        self.project_out = Projection(bits, dim)

    @property
    def vocab_size(self) -> int:
        return 2**self.bits

    def forward(self, z_BChw: Tensor) -> QuantOut:
        u = F.normalize(self.project_in(z_BChw).float(), dim=1)  # (B, d, h, w) on the unit sphere
        q = torch.where(u > 0, 1.0, -1.0) / math.sqrt(self.bits)
        z_q = u + (q - u).detach()  # straight-through
        bits_Bhwd = to_channels_last((u > 0).float())

        loss = u.new_zeros(())
        stats = {}
        if self.entropy_weight > 0:
            p = torch.sigmoid(4 * self.inv_temperature * math.sqrt(self.bits) * u)  # P(bit = 1), (B, d, h, w)
            per_sample = binary_entropy(p).mean()
            marginal = p.mean(dim=(0, 2, 3))  # of each bit over the batch
            loss = loss + self.entropy_weight * per_sample
            stats["per_sample_entropy"] = per_sample.detach()
            if not (self.sync_entropy and self.training and torch.is_grad_enabled() and distributed()):
                loss = loss + self.diversity_loss(marginal, stats)
            elif self.defer_sync:  # the caller adds diversity_loss after one all-reduce for every scale's marginal
                stats[BIT_MARGINAL] = marginal
            else:
                loss = loss + self.diversity_loss(global_mean(marginal), stats)
        loss = loss + self.commitment(u, q, stats)
        return QuantOut(self.project_out(z_q), bits_Bhwd, loss, stats)

    def diversity_loss(self, marginal: Tensor, stats: dict) -> Tensor:
        """``-weight * gamma * H[E q]`` from the bits' marginals (d,), which may be global (see sync_entropy)."""
        batch = binary_entropy(marginal).mean()
        stats["batch_entropy"] = batch.detach()
        return -self.entropy_weight * self.diversity_gamma * batch

    def commitment(self, u: Tensor, q: Tensor, stats: dict) -> Tensor:
        if self.commitment_weight <= 0:
            return u.new_zeros(())
        commit = (u - q).pow(2).sum(1).mean()  # squared distance on the sphere, per position
        stats["commitment"] = commit.detach()
        return self.commitment_weight * commit

    def codes_to_latent(self, bits_Bhwd: Tensor) -> Tensor:
        """bits (B, h, w, d) -> latent (B, C, h, w)."""
        q = (bits_Bhwd.float() * 2 - 1) / math.sqrt(self.bits)
        return self.project_out(q.permute(0, 3, 1, 2).contiguous())

    def codes_to_index(self, bits_Bhwd: Tensor) -> Tensor:
        return pack_bits(bits_Bhwd)
