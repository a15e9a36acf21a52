"""A masked-bit head: a token's bits predicted from the transformer's state *and the token's visible bits*
(MaskGIT-style inside one token; MaskBit arXiv 2409.16211, BAR arXiv 2602.09024).

Infinity's bitwise head predicts the d bits of a token independently given the state. This head models their
dependence at a small cost: a per-token MLP reads the state and the visible bits (value +-1 or a mask flag per
bit) and gives logits for every bit,

    logits = Linear(width, d)(h) + MLP(Linear(width, hidden)(h) + Linear(2d, hidden)([v, m]))

where the first term is the bitwise head itself and the MLP's last layer starts at zero, so training starts
from the bitwise head. Training masks a random fraction of each token's bits (``mask_schedule``) and scores the
masked bits only. Sampling unmasks a token's bits in ``steps`` rounds: each round draws every masked bit
(guidance, temperature, top-k / top-p per bit, as the bitwise head) and keeps the most confident ones, d/steps
per round, which then become visible for the next round.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.core.registry import ConfigError
from lab.core.settings import LOSS_TAGS
from lab.models.categorical import sample_bits
from lab.quantizers.codes import pack_bits, unpack_bits

SCHEDULES = ("uniform", "cosine")


class MaskedBitsHead(nn.Module):
    loss_name = LOSS_TAGS["masked_bits"]

    def __init__(
        self, *, width: int, code_kind: str, bits: int, vocab_size: int, levels: Sequence[int] | None = None,
        steps: int = 4, mask_schedule: str = "uniform", mask_min: float = 0.0, mask_max: float = 1.0,
        hidden: int | None = None,
    ):
        """steps: unmasking rounds per token when sampling, 1..bits (1: every bit drawn at once from the state
        alone, the bitwise head's sampler). mask_schedule: the fraction r of a token's bits masked in training,
        ``uniform`` on [mask_min, mask_max] or ``cosine`` (MaskGIT: mask_min + (mask_max - mask_min) cos(pi u / 2),
        u uniform); at least one bit is always masked. hidden: the MLP's width (None: the transformer's width).
        levels (injected) is not used: the head predicts the bits of the code (an index's binary expansion)."""
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= bits:
            raise ConfigError(f"head.steps={steps!r}: masked_bits unmasks a token's {bits} bits in 1..{bits} rounds "
                              f"(at least one bit per round); give an integer in [1, {bits}].")
        if mask_schedule not in SCHEDULES:
            raise ConfigError(f"head.mask_schedule={mask_schedule!r}: valid: {', '.join(SCHEDULES)}.")
        if not (0.0 <= mask_min <= mask_max <= 1.0):
            raise ConfigError(f"head.mask_min={mask_min!r}, head.mask_max={mask_max!r}: the masked fraction of a "
                              "token's bits needs 0 <= mask_min <= mask_max <= 1.")
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, vocab_size
        self.steps, self.mask_schedule, self.mask_min, self.mask_max = steps, mask_schedule, float(mask_min), float(mask_max)
        hidden = hidden or width
        self.proj = nn.Linear(width, bits)  # the bitwise head's term
        self.ctx = nn.Linear(width, hidden)
        self.bits_in = nn.Linear(2 * bits, hidden, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bits))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    # --- the model ----------------------------------------------------------------------------------------------
    def logits_given(self, h: Tensor, bits: Tensor, visible: Tensor) -> Tensor:
        """Per-bit logits (B, L, d) from states (B, L, width), bits (B, L, d) in {0, 1} and which of them are
        visible (bool (B, L, d)); the values of the hidden bits are never read."""
        v = torch.where(visible, bits.to(h.dtype) * 2 - 1, torch.zeros((), dtype=h.dtype, device=h.device))
        x = self.ctx(h) + self.bits_in(torch.cat([v, (~visible).to(h.dtype)], -1))
        return self.proj(h) + self.mlp(x)

    def forward(self, h: Tensor) -> Tensor:
        """Logits with every bit masked (B, L, d): the prediction from the state alone."""
        shape = (*h.shape[:-1], self.bits)
        return self.logits_given(h, h.new_zeros(shape), torch.zeros(shape, dtype=torch.bool, device=h.device))

    def targets(self, codes: Tensor) -> Tensor:
        return unpack_bits(codes, self.bits) if self.code_kind == "index" else codes  # (B, L, d) float

    # --- training -----------------------------------------------------------------------------------------------
    def draw_visible(self, shape: tuple[int, int], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """bool (B, L, d): which bits are visible; per token a fraction r of the schedule is masked (>= 1 bit)."""
        d = self.bits
        u = torch.rand(shape, generator=generator, device=device)
        if self.mask_schedule == "cosine":
            u = torch.cos(u * math.pi / 2)
        r = self.mask_min + (self.mask_max - self.mask_min) * u
        n_masked = (r * d).ceil().clamp(1, d)  # (B, L)
        rank = torch.rand((*shape, d), generator=generator, device=device).argsort(-1).argsort(-1)  # random order
        return rank >= n_masked.unsqueeze(-1)

    def masked_loss(self, h: Tensor, codes: Tensor, visible: Tensor) -> Tensor:
        """Mean BCE over the hidden bits of each token (B, L), given which bits are visible."""
        t = self.targets(codes)
        bce = F.binary_cross_entropy_with_logits(self.logits_given(h, t, visible).float(), t, reduction="none")
        hidden = (~visible).float()
        return (bce * hidden).sum(-1) / hidden.sum(-1).clamp_min(1)

    def loss(self, h: Tensor, codes: Tensor, logits: Tensor | None = None) -> Tensor:
        """A fresh mask per call in training; in evaluation a fixed one (seed 0), so validation losses compare.
        ``logits`` are not used: the loss needs the targets' visible bits as input."""
        gen = None
        if not self.training:
            gen = torch.Generator(device=h.device).manual_seed(0)
        return self.masked_loss(h, codes, self.draw_visible(tuple(h.shape[:2]), h.device, gen))

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Whole-token accuracy of the prediction from the state alone (every bit masked), (B, L)."""
        return ((logits > 0).float() == self.targets(codes)).all(-1).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        return ((logits > 0).float() == self.targets(codes)).float().mean(-1)

    # --- sampling -----------------------------------------------------------------------------------------------
    def revealed_after(self, step: int) -> int:
        """How many bits of a token are fixed after round ``step`` (1..steps): d * step // steps, so every round
        fixes at least one bit (steps <= d) and the last fixes the rest."""
        return self.bits * step // self.steps

    @torch.no_grad()
    def sample(self, h: Tensor, *, guide: Callable[[Tensor], Tensor] | None = None, temperature: float, top_k: int,
               top_p: float, generator: torch.Generator | None) -> Tensor:
        """Bits drawn in ``steps`` rounds by confidence (the probability of the drawn value under the guided
        logits). The rows of ``h`` beyond the B that ``guide`` returns (the unconditional twins) see the same
        visible bits as their conditional rows."""
        guide = guide or (lambda x: x)
        rows, L, d = h.shape[0], h.shape[1], self.bits
        bits = h.new_zeros(rows, L, d)
        visible = torch.zeros(rows, L, d, dtype=torch.bool, device=h.device)
        for step in range(1, self.steps + 1):
            if step > 1:  # the conditional rows' bits, repeated for the unconditional twins
                reps = rows // bits.shape[0]
                lg = guide(self.logits_given(h, bits.repeat(reps, 1, 1), visible.repeat(reps, 1, 1)))
            else:
                lg = guide(self.logits_given(h, bits, visible))  # (B, L, d)
                bits, visible = bits[: lg.shape[0]], visible[: lg.shape[0]]
            draw = sample_bits(lg, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            conf = torch.where(draw > 0, torch.sigmoid(lg.float()), torch.sigmoid(-lg.float()))
            conf = conf.masked_fill(visible, -1.0)  # fixed bits are not drawn again
            n_new = self.revealed_after(step) - self.revealed_after(step - 1)
            pick = torch.zeros_like(visible).scatter(-1, conf.topk(n_new, dim=-1).indices, True)
            bits = torch.where(pick, draw, bits)
            visible = visible | pick
        if self.code_kind == "index":  # the binary expansion may name an index past V: wrap it, as the bitwise head
            return pack_bits(bits) % self.vocab_size
        return bits
