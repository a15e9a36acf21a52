"""Multi-scale residual quantization (VAR, arXiv 2404.02905; Infinity's multiscale BSQ).

    f_hat = 0
    for k, s_k in enumerate(scales):
        r_k = down(f - f_hat, s_k)                  # area interpolation
        codes_k, q_k = quantizer(r_k)
        f_hat += phi_k(up(gain_k * q_k, H))         # bicubic up, VAR refinement phi

Gradients follow Infinity's tokenizer: each scale is straight-through on its own and the residual that
feeds the next scale is detached, so the decoder's loss reaches the encoder through every scale.

Spreading information across scales (a next-scale generator needs it): fixed-norm bit codes (BSQ, LFQ)
cannot match the encoder's magnitude, so the first scales would carry almost nothing. ``learn_gain``
gives every scale a learned magnitude, initialised from data on the first batch (ActNorm-style) to the
ratio of the residual's RMS to the code's RMS. The tokenizer additionally decodes random scale prefixes
(see ``lab.models.tokenizer``) so the decoder learns partial sums.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.quantizers.base import BIT_MARGINAL, QuantOut, SyncsBatchStatistics, global_mean


class Phi(nn.Module):
    """VAR's refinement ``(1 - r) * x + r * conv3x3(x)``."""

    def __init__(self, dim: int, ratio: float = 0.5):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return (1 - self.ratio) * x + self.ratio * self.conv(x)


class MultiScaleOut(NamedTuple):
    f_hat: Tensor  # (B, C, H, W) sum of every scale's contribution
    codes: list  # per scale: int64 (B, s, s) or float bits (B, s, s, d)
    loss: Tensor  # mean over scales of the quantizer losses
    stats: list  # per scale stats dicts
    prefixes: list  # f_hat after scale k (k = 0..K-1), only when asked for


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self,
        quantizer: nn.Module,
        *,
        dim: int,
        scales: Sequence[int] = (1, 2, 3, 4, 6, 8),
        up_mode: str = "bicubic",
        phi_count: int = 4,
        phi_ratio: float = 0.5,
        learn_gain: bool = True,
    ):
        super().__init__()
        self.quantizer = quantizer
        self.scales = [int(s) for s in scales]
        if sorted(self.scales) != self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be strictly increasing, got {self.scales}")
        self.size = self.scales[-1]
        self.up_mode = up_mode
        self.phis = nn.ModuleList([Phi(dim, phi_ratio) for _ in range(phi_count)])
        self.learn_gain = learn_gain
        self.log_gain = nn.Parameter(torch.zeros(len(self.scales)))
        self.register_buffer("gain_initialised", torch.tensor(not learn_gain))

    # --- properties shared with the generator -------------------------------------------------
    @property
    def code_kind(self) -> str:
        return self.quantizer.code_kind

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @property
    def vocab_size(self) -> int:
        return int(self.quantizer.vocab_size)

    @property
    def levels(self) -> tuple[int, ...] | None:
        """The level count of each digit of a mixed-radix index code (FSQ), None for other quantizers."""
        return getattr(self.quantizer, "levels", None)

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def tokens_per_scale(self) -> list[int]:
        return [s * s for s in self.scales]

    # --- building blocks ----------------------------------------------------------------------
    def down(self, x: Tensor, size: int) -> Tensor:
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")

    def up(self, x: Tensor) -> Tensor:
        if x.shape[-1] == self.size:
            return x
        if self.up_mode in ("bicubic", "bilinear"):
            return F.interpolate(x, size=(self.size, self.size), mode=self.up_mode, align_corners=False)
        return F.interpolate(x, size=(self.size, self.size), mode=self.up_mode)

    def phi(self, k: int) -> nn.Module:
        if len(self.phis) == 0:
            return nn.Identity()
        # VAR shares a few phi convs across scales: scale k uses the one nearest its relative depth
        idx = round(k / max(1, self.num_scales - 1) * (len(self.phis) - 1))
        return self.phis[idx]

    def gain(self, k: int) -> Tensor:
        return self.log_gain[k].exp() if self.learn_gain else self.log_gain.new_ones(())

    def contribution(self, z_q: Tensor, k: int) -> Tensor:
        """What scale k adds to f_hat: ``phi_k(up(gain_k * z_q))``, (B, C, H, W)."""
        return self.phi(k)(self.up(self.gain(k) * z_q))

    # --- forward / decode ---------------------------------------------------------------------
    def forward(self, f: Tensor, *, keep_prefixes: bool = False) -> MultiScaleOut:
        defer = isinstance(self.quantizer, SyncsBatchStatistics)  # BSQ: one all-reduce of the marginals of all scales
        if defer:
            self.quantizer.defer_sync = True
        try:
            f_hat, loss, codes, stats, prefixes = self._run_scales(f, keep_prefixes)
        finally:
            if defer:
                self.quantizer.defer_sync = False
        pending = [k for k, st in enumerate(stats) if BIT_MARGINAL in st] if defer else []
        if pending:
            marginals = global_mean(torch.stack([stats[k].pop(BIT_MARGINAL) for k in pending]))
            for k, m in zip(pending, marginals):
                loss = loss + self.quantizer.diversity_loss(m, stats[k])
        if self.training and self.learn_gain:
            self.gain_initialised.fill_(True)
        return MultiScaleOut(f_hat, codes, loss / len(self.scales), stats, prefixes)

    def _run_scales(self, f: Tensor, keep_prefixes: bool) -> tuple[Tensor, Tensor, list, list, list]:
        f_hat = torch.zeros_like(f)
        codes, stats, prefixes = [], [], []
        loss = f.new_zeros(())
        for k, s in enumerate(self.scales):
            r = self.down(f - f_hat.detach(), s)
            out: QuantOut = self.quantizer(r)
            if self.training and not bool(self.gain_initialised) and self.learn_gain:
                with torch.no_grad():  # ActNorm-style data init of this scale's magnitude
                    ratio = r.pow(2).mean().sqrt() / out.z_q.pow(2).mean().sqrt().clamp_min(1e-8)
                    ratio = global_mean(ratio)  # every rank starts from the same gain
                    self.log_gain[k] = ratio.clamp_min(1e-4).log()
            f_hat = f_hat + self.contribution(out.z_q, k)
            codes.append(out.codes)
            stats.append(out.stats)
            loss = loss + out.loss
            if keep_prefixes:
                prefixes.append(f_hat)
        return f_hat, loss, codes, stats, prefixes

    def scale_latent(self, codes: Tensor) -> Tensor:
        """The codes of one scale -> their quantized latent at that scale's size (before ``contribution``)."""
        return self.quantizer.codes_to_latent(codes)

    def codes_to_latent(self, codes: Sequence[Tensor]) -> Tensor:
        """Per-scale codes (the first len(codes) scales) -> f_hat (B, C, H, W)."""
        f_hat = None
        for k, c in enumerate(codes):
            add = self.contribution(self.scale_latent(c), k)
            f_hat = add if f_hat is None else f_hat + add
        return f_hat

    def quantize_scale(self, f: Tensor, f_hat: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Quantize the residual ``f - f_hat`` at scale k: (codes_k, contribution_k). Used by self-correction."""
        out = self.quantizer(self.down(f - f_hat, self.scales[k]))
        return out.codes, self.contribution(out.z_q, k)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, up_mode={self.up_mode!r}, learn_gain={self.learn_gain}"
