"""Prediction heads: ``IndexHead`` (softmax over the vocabulary), ``BitwiseHead`` (Infinity's IVC), ``DigitHead``
(a softmax over the levels of each code dimension: FSQ digits) and ``MaskedBitsHead`` (bits predicted from the
state and the token's visible bits, lab/models/masked_bits.py).

Labels come in the quantizer's own code kind (int64 indices (B, L) or float bits (B, L, d)) and each head
converts them to what it predicts, exactly: an index head on bit codes packs the bits; a bitwise head on
index codes predicts the index's binary expansion (ceil(log2 V) bits); a digit head on FSQ indices predicts
their digits (``lab.quantizers.codes``).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.core.registry import ConfigError, build
from lab.core.settings import LOSS_TAGS
from lab.models.categorical import sample_bits, sample_categorical
from lab.models.masked_bits import MaskedBitsHead
from lab.quantizers.codes import digits_to_index, index_to_digits, pack_bits, unpack_bits

INJECTED = ("width", "code_kind", "bits", "vocab_size", "levels")

Guide = Callable[[Tensor], Tensor]


@runtime_checkable
class Head(Protocol):
    """What every entry of ``HEADS`` provides. Built as ``HEADS[name](width=, code_kind=, bits=, vocab_size=,
    levels=, **yaml_kwargs)`` (``levels``: the quantizer's digit levels for a mixed-radix index (FSQ), else None);
    ``codes`` are the quantizer's own (int64 (B, L) indices or float (B, L, d) bits).

    Training and sampling take the transformer's states ``h`` (B, L, width), not logits: a head may need several
    passes (masked_bits: one per unmasking round) and its training inputs may depend on the targets."""

    code_kind: str
    bits: int
    vocab_size: int
    loss_name: str  # the name its loss is logged under (bits_bce, index_ce, ...): losses of different heads differ

    def __call__(self, h: Tensor) -> Tensor:
        """States (B, L, width) -> logits of the prediction from the states alone (masked_bits: every bit masked);
        what ``correct`` and ``bit_agreement`` score."""

    def loss(self, h: Tensor, codes: Tensor, logits: Tensor | None = None) -> Tensor:
        """Per-token training loss (B, L) from the states. ``logits``: ``self(h)`` where the caller has it already
        (saves a pass; a head whose loss is no function of them, masked_bits, ignores it)."""

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token accuracy (B, L) in {0, 1}: the whole token right."""

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token fraction of the token's bits predicted right (B, L)."""

    def sample(self, h: Tensor, *, guide: Guide | None, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Tensor:
        """Codes of the quantizer's kind (B, L[, d]) drawn from the states (temperature 0: greedy). ``guide`` maps
        logits of the rows of ``h`` (the conditional rows, then the unconditional ones under guidance) to the
        guided logits of the B conditional rows; None: ``h`` has B rows and no guidance."""


def human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def index_head_params(width: int, vocab_size: int) -> int:
    return width * vocab_size + vocab_size


def bitwise_head_params(width: int, bits: int) -> int:
    return width * bits + bits


class IndexHead(nn.Module):
    """Linear(width, V) + cross-entropy: the conventional classifier over the whole vocabulary."""

    loss_name = LOSS_TAGS["index"]

    def __init__(
        self, *, width: int, code_kind: str, bits: int, vocab_size: int, levels: Sequence[int] | None = None,
        max_params: int = 50_000_000, label_smoothing: float = 0.0,
    ):
        """levels (injected) is not used: an index head predicts the index itself."""
        super().__init__()
        V = vocab_size if code_kind == "index" else 2**bits
        n = index_head_params(width, V)
        if n > max_params:
            vocab = f"2^{bits} = {human(V)}" if V == 2**bits else f"{human(V)} (the product of the levels {list(levels or [])})"
            digits = ", head.name=digits (a softmax per dimension)" if levels else ""
            raise ConfigError(
                f"An index head over a vocabulary of {vocab} codes at width {width} needs "
                f"{human(n)} parameters ({width} x {human(V)}), above head.max_params={human(max_params)}; "
                f"the bitwise head needs {human(bitwise_head_params(width, bits))} ({width} x {bits}). "
                f"Use head.name=bitwise{digits}, fewer {'levels' if levels else 'bits'}, or raise head.max_params."
            )
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, V
        self.label_smoothing = label_smoothing
        self.proj = nn.Linear(width, V)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)  # (B, L, V)

    def targets(self, codes: Tensor) -> Tensor:
        return pack_bits(codes) if self.code_kind == "bits" else codes  # (B, L) int64

    def loss(self, h: Tensor, codes: Tensor, logits: Tensor | None = None) -> Tensor:
        """Per-token loss (B, L)."""
        logits = self(h) if logits is None else logits
        t = self.targets(codes)
        # rows (B*L, V), the vocabulary contiguous: on the strided (B, V, L) layout the loss took 2.1x as long (forward
        # and backward of 4,160 x 4,096 logits, one thread of an AMD EPYC Zen 4)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), t.flatten(), reduction="none", label_smoothing=self.label_smoothing)
        return ce.view(t.shape)

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token accuracy (B, L) in {0,1}: the argmax index equals the target (bit codes packed to their
        index). The per-bit agreement is ``bit_agreement``."""
        return (logits.argmax(-1) == self.targets(codes)).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token fraction of bits of the argmax index's binary expansion that match the target's (B, L)."""
        pred = unpack_bits(logits.argmax(-1), self.bits)
        return (pred == unpack_bits(self.targets(codes), self.bits)).float().mean(-1)

    @torch.no_grad()
    def sample(self, h: Tensor, *, guide: Guide | None = None, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Tensor:
        logits = _guided(self(h), guide)
        idx = sample_categorical(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        return unpack_bits(idx, self.bits) if self.code_kind == "bits" else idx


class BitwiseHead(nn.Module):
    """Infinity's infinite-vocabulary classifier: Linear(width, d) + mean binary cross-entropy over bits
    (equivalent to Infinity's Linear(C, 2d) with a 2-way softmax per bit)."""

    loss_name = LOSS_TAGS["bitwise"]

    def __init__(self, *, width: int, code_kind: str, bits: int, vocab_size: int, levels: Sequence[int] | None = None):
        """levels (injected) is not used: a bitwise head predicts the binary expansion of an index."""
        super().__init__()
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, vocab_size
        self.proj = nn.Linear(width, bits)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)  # (B, L, d)

    def targets(self, codes: Tensor) -> Tensor:
        return unpack_bits(codes, self.bits) if self.code_kind == "index" else codes  # (B, L, d) float

    def loss(self, h: Tensor, codes: Tensor, logits: Tensor | None = None) -> Tensor:
        logits = self(h) if logits is None else logits
        return F.binary_cross_entropy_with_logits(logits.float(), self.targets(codes), reduction="none").mean(-1)

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Whole-token accuracy (every bit right), (B, L)."""
        return ((logits > 0).float() == self.targets(codes)).all(-1).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        return ((logits > 0).float() == self.targets(codes)).float().mean(-1)

    @torch.no_grad()
    def sample(self, h: Tensor, *, guide: Guide | None = None, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Tensor:
        """Each bit is a 2-way categorical (logits [0, l]): temperature and top-p act per bit; top-k over two
        choices is either greedy (1) or nothing (0, 2)."""
        bits = sample_bits(_guided(self(h), guide), temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if self.code_kind == "index":  # the binary expansion may name an index past V: wrap it into range
            return pack_bits(bits) % self.vocab_size
        return bits


class DigitHead(nn.Module):
    """A softmax over the L_i levels of each code dimension, cross-entropy averaged over dimensions: the
    per-dimension head for FSQ digits (Mentzer et al. 2023). With every level 2 it is the bitwise head in
    Infinity's Linear(C, 2d) form (a 2-way cross-entropy per bit equals the BCE of the logit difference).
    On bit codes and on indices without levels (VQ) every dimension is a bit of the binary expansion."""

    loss_name = LOSS_TAGS["digits"]

    def __init__(self, *, width: int, code_kind: str, bits: int, vocab_size: int, levels: Sequence[int] | None = None):
        super().__init__()
        if levels and code_kind != "index":
            raise ConfigError(f"head.name=digits: levels {list(levels)} come with index codes (fsq), got {code_kind} codes")
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, vocab_size
        self.mixed = bool(levels)  # digits of a mixed-radix index (FSQ) rather than bits
        self.levels = tuple(int(x) for x in levels) if levels else (2,) * bits
        D, top = len(self.levels), max(self.levels)
        self.proj = nn.Linear(width, D * top)
        valid = torch.arange(top) < torch.tensor(self.levels).unsqueeze(-1)  # (D, Lmax): which level slots exist
        self.register_buffer("valid", valid, persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h).unflatten(-1, self.valid.shape)  # (B, L, D, Lmax); slots past L_i are masked on use

    def _masked(self, logits: Tensor) -> Tensor:
        return logits.float().masked_fill(~self.valid, float("-inf"))

    def targets(self, codes: Tensor) -> Tensor:
        """Codes -> digits (B, L, D) int64."""
        if self.code_kind == "bits":
            return codes.long()
        return index_to_digits(codes, self.levels) if self.mixed else unpack_bits(codes, self.bits).long()

    def to_codes(self, digits: Tensor) -> Tensor:
        if self.code_kind == "bits":
            return digits.float()
        if self.mixed:
            return digits_to_index(digits, self.levels)
        return pack_bits(digits) % self.vocab_size  # a binary expansion past V wraps into range, as the bitwise head

    def loss(self, h: Tensor, codes: Tensor, logits: Tensor | None = None) -> Tensor:
        logits = self(h) if logits is None else logits
        t = self.targets(codes)
        ce = F.cross_entropy(self._masked(logits).flatten(0, -2), t.flatten(), reduction="none")
        return ce.view(t.shape).mean(-1)

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        return (self._masked(logits).argmax(-1) == self.targets(codes)).all(-1).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-digit agreement for bits; for FSQ the bits of the predicted index's binary expansion (as the index
        head scores it, so the heads on one tokenizer compare)."""
        pred = self._masked(logits).argmax(-1)
        if not self.mixed:
            return (pred == self.targets(codes)).float().mean(-1)
        return (unpack_bits(self.to_codes(pred), self.bits) == unpack_bits(codes, self.bits)).float().mean(-1)

    @torch.no_grad()
    def sample(self, h: Tensor, *, guide: Guide | None = None, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Tensor:
        """Each dimension a categorical over its levels (guidance on the raw logits, then the unused slots
        masked); temperature, top-k and top-p per dimension."""
        logits = self._masked(_guided(self(h), guide))
        digits = sample_categorical(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        return self.to_codes(digits)


def _guided(logits: Tensor, guide: Guide | None) -> Tensor:
    return logits if guide is None else guide(logits)


HEADS = {"index": IndexHead, "bitwise": BitwiseHead, "digits": DigitHead, "masked_bits": MaskedBitsHead}


def build_head(node: dict, *, width: int, code_kind: str, bits: int, vocab_size: int,
               levels: Sequence[int] | None = None) -> Head:
    """``HEADS[node.name](**rest)`` with the quantizer's code kind, bits, vocabulary size and digit levels
    (``MultiScaleQuantizer.levels``: FSQ's, else None) injected."""
    return build(HEADS, node, "head", width=width, code_kind=code_kind, bits=bits, vocab_size=vocab_size,
                 levels=None if levels is None else [int(x) for x in levels])
