"""Self-correction strategies and the teacher-forced inputs/labels they rewrite.

Where it sits (Infinity, ``bitwise_self_correction.py::flip_requant``): in the generator's training step
(``GeneratorModule`` in lab/train/generator.py calls ``teacher_forcing`` below). With the tokenizer frozen, the
encoder features ``f`` are quantized scale by scale. A strategy corrupts the codes of scale k; the prefix
sum ``f_hat`` that feeds the next scale's input is rebuilt from the corrupted codes. With
``requantize: true`` the labels of later scales are re-quantized against that corrupted ``f_hat`` (they then
say how to *correct* the mistake: Infinity's BSC); with ``requantize: false`` the labels stay the clean ones
(the "random flip only" row of Infinity Tab.7). The transformer never knows which is on.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from lab.core.registry import ConfigError
from lab.quantizers.multiscale import MultiScaleQuantizer


def check_compatible(correction, code_kind: str, quantizer: str = "") -> None:
    """The one rule that ties a correction to a quantizer: a strategy works on the code kinds it lists
    (``code_kinds``); bitflip, for one, needs bit codes. Raises a ConfigError naming the alternatives."""
    kinds = getattr(correction, "code_kinds", ("index", "bits"))
    if code_kind in kinds:
        return
    name = next((k for k, v in CORRECTIONS.items() if isinstance(correction, v)), type(correction).__name__)
    fits = [k for k, v in CORRECTIONS.items() if code_kind in getattr(v, "code_kinds", ())]
    which = f"quantizer '{quantizer}' gives" if quantizer else "the quantizer gives"
    raise ConfigError(
        f"correction.name={name} needs {' or '.join({'bits': 'bit'}.get(k, k) for k in kinds)} codes, but {which} {'indices' if code_kind == 'index' else code_kind}; "
        f"use correction.name={' or '.join(k for k in fits if k != 'none')} (or a bit quantizer: lfq, bsq)."
    )


class NoCorrection:
    requantize = False
    code_kinds = ("index", "bits")

    def applies(self, k: int) -> bool:
        return False

    def corrupt(self, codes: Tensor, k: int, code_kind: str, vocab_size: int, generator: torch.Generator | None) -> Tensor:
        return codes


class _Random:
    code_kinds = ("index", "bits")

    def __init__(self, *, p_max: float = 0.3, requantize: bool = True, scales: Sequence[int] | None = None,
                 p_step: float = 0.01):
        """p_max: the flip rate of a scale is drawn per batch uniformly from {0, p_step, ..., p_max}.
        scales: the scale indices (0-based) it applies to; None = every scale."""
        if not 0 <= p_max <= 1:
            raise ValueError(f"p_max must be in [0, 1], got {p_max}")
        self.p_max, self.requantize, self.p_step = p_max, requantize, p_step
        self.scales = None if scales is None else {int(s) for s in scales}

    def applies(self, k: int) -> bool:
        return self.p_max > 0 and (self.scales is None or k in self.scales)

    def draw_p(self, generator: torch.Generator | None) -> float:
        n = int(round(self.p_max / self.p_step))
        return float(torch.randint(0, n + 1, (), generator=generator)) * self.p_step


class BitFlip(_Random):
    """Flip a random fraction p of the bits of scale k (Infinity's bitwise self-correction)."""

    code_kinds = ("bits",)

    def corrupt(self, codes, k, code_kind, vocab_size, generator=None, p: float | None = None):
        check_compatible(self, code_kind)
        p = self.draw_p(generator) if p is None else p
        flip = torch.rand(codes.shape, generator=generator).to(codes.device) < p
        return torch.where(flip, 1.0 - codes, codes)


class RandomIndex(_Random):
    """Replace a random fraction p of the codes of scale k by uniformly random codes (works for index codes,
    and for bit codes by redrawing whole tokens)."""

    def corrupt(self, codes, k, code_kind, vocab_size, generator=None, p: float | None = None):
        p = self.draw_p(generator) if p is None else p
        shape = codes.shape if code_kind == "index" else codes.shape[:-1]
        hit = torch.rand(shape, generator=generator).to(codes.device) < p
        if code_kind == "index":
            rnd = torch.randint(0, vocab_size, shape, generator=generator).to(codes.device)
            return torch.where(hit, rnd, codes)
        rnd = torch.randint(0, 2, codes.shape, generator=generator).to(codes.device).float()
        return torch.where(hit.unsqueeze(-1), rnd, codes)


CORRECTIONS = {"none": NoCorrection, "bitflip": BitFlip, "random_index": RandomIndex}


class TeacherForcing(NamedTuple):
    inputs: list  # per scale k >= 1: down(f_hat_{<k}, s_k), (B, C, s_k, s_k); scale 0 has the start token
    labels: list  # per scale: codes (B, s_k, s_k) or (B, s_k, s_k, d)
    f_hat: Tensor  # the final (possibly corrupted) reconstruction of the features


@torch.no_grad()
def teacher_forcing(msq: MultiScaleQuantizer, f: Tensor, strategy=None, generator: torch.Generator | None = None) -> TeacherForcing:
    """Inputs and labels of every scale from encoder features ``f`` (B, C, H, W) under a correction strategy."""
    strategy = strategy or NoCorrection()
    f_in = torch.zeros_like(f)  # prefix sum that builds the inputs (corrupted when a strategy is on)
    f_clean = torch.zeros_like(f)  # clean prefix sum, for the labels when not re-quantizing
    inputs, labels = [], []
    for k in range(msq.num_scales):
        if k > 0:
            inputs.append(msq.down(f_in, msq.scales[k]))
        codes, add = msq.quantize_scale(f, f_in if strategy.requantize else f_clean, k)
        labels.append(codes)
        f_clean = f_clean + add
        if strategy.applies(k):
            bad = strategy.corrupt(codes, k, msq.code_kind, msq.vocab_size, generator)
            f_in = f_in + msq.contribution(msq.scale_latent(bad), k)
        else:
            f_in = f_in + add  # a scale's contribution depends on its codes only
    return TeacherForcing(inputs, labels, f_in)
