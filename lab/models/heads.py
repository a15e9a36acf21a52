"""Prediction heads: ``IndexHead`` (softmax over the vocabulary) and ``BitwiseHead`` (Infinity's IVC).

Labels come in the quantizer's own code kind (int64 indices (B, L) or float bits (B, L, d)) and each head
converts them to what it predicts, exactly: an index head on bit codes packs the bits; a bitwise head on
index codes predicts the index's binary expansion (ceil(log2 V) bits).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.core.registry import ConfigError, build
from lab.quantizers.codes import pack_bits, unpack_bits

INJECTED = ("width", "code_kind", "bits", "vocab_size")


@runtime_checkable
class Head(Protocol):
    """What every entry of ``HEADS`` provides. Built as ``HEADS[name](width=, code_kind=, bits=, vocab_size=,
    **yaml_kwargs)``; ``codes`` are the quantizer's own (int64 (B, L) indices or float (B, L, d) bits)."""

    code_kind: str
    bits: int
    vocab_size: int

    def __call__(self, h: Tensor) -> Tensor:
        """Transformer states (B, L, width) -> logits."""

    def loss(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token training loss (B, L)."""

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token accuracy (B, L) in {0, 1}: the whole token right."""

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token fraction of the token's bits predicted right (B, L)."""

    def sample(self, logits: Tensor, *, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Tensor:
        """Codes of the quantizer's kind drawn from the logits (temperature 0: greedy)."""


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

    def __init__(
        self, *, width: int, code_kind: str, bits: int, vocab_size: int,
        max_params: int = 50_000_000, label_smoothing: float = 0.0,
    ):
        super().__init__()
        V = vocab_size if code_kind == "index" else 2**bits
        n = index_head_params(width, V)
        if n > max_params:
            raise ConfigError(
                f"An index head over a vocabulary of 2^{bits} = {human(V)} codes at width {width} needs "
                f"{human(n)} parameters ({width} x {human(V)}), above head.max_params={human(max_params)}; "
                f"the bitwise head needs {human(bitwise_head_params(width, bits))} ({width} x {bits}). "
                "Use head.name=bitwise, fewer bits, or raise head.max_params."
            )
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, V
        self.label_smoothing = label_smoothing
        self.proj = nn.Linear(width, V)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)  # (B, L, V)

    def targets(self, codes: Tensor) -> Tensor:
        return pack_bits(codes) if self.code_kind == "bits" else codes  # (B, L) int64

    def loss(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token loss (B, L)."""
        t = self.targets(codes)
        return F.cross_entropy(logits.transpose(1, 2).float(), t, reduction="none", label_smoothing=self.label_smoothing)

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token accuracy (B, L) in {0,1}: the argmax index equals the target (bit codes packed to their
        index). The per-bit agreement is ``bit_agreement``."""
        return (logits.argmax(-1) == self.targets(codes)).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Per-token fraction of bits of the argmax index's binary expansion that match the target's (B, L)."""
        pred = unpack_bits(logits.argmax(-1), self.bits)
        return (pred == unpack_bits(self.targets(codes), self.bits)).float().mean(-1)

    @torch.no_grad()
    def sample(self, logits: Tensor, *, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
        idx = sample_categorical(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        return unpack_bits(idx, self.bits) if self.code_kind == "bits" else idx


class BitwiseHead(nn.Module):
    """Infinity's infinite-vocabulary classifier: Linear(width, d) + mean binary cross-entropy over bits
    (equivalent to Infinity's Linear(C, 2d) with a 2-way softmax per bit)."""

    def __init__(self, *, width: int, code_kind: str, bits: int, vocab_size: int):
        super().__init__()
        self.code_kind, self.bits, self.vocab_size = code_kind, bits, vocab_size
        self.proj = nn.Linear(width, bits)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)  # (B, L, d)

    def targets(self, codes: Tensor) -> Tensor:
        return unpack_bits(codes, self.bits) if self.code_kind == "index" else codes  # (B, L, d) float

    def loss(self, logits: Tensor, codes: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), self.targets(codes), reduction="none").mean(-1)

    def correct(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Whole-token accuracy (every bit right), (B, L)."""
        return ((logits > 0).float() == self.targets(codes)).all(-1).float()

    def bit_agreement(self, logits: Tensor, codes: Tensor) -> Tensor:
        return ((logits > 0).float() == self.targets(codes)).float().mean(-1)

    @torch.no_grad()
    def sample(self, logits: Tensor, *, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
        """Each bit is a 2-way categorical (logits [0, l]): temperature and top-p act per bit; top-k over two
        choices is either greedy (1) or nothing (0, 2)."""
        two = torch.stack([torch.zeros_like(logits), logits], -1)  # (B, L, d, 2)
        bits = sample_categorical(two, temperature=temperature, top_k=top_k if top_k == 1 else 0, top_p=top_p, generator=generator)
        bits = bits.float()
        if self.code_kind == "index":  # the binary expansion may name an index past V: wrap it into range
            return pack_bits(bits) % self.vocab_size
        return bits


def sample_categorical(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """Sample the last dimension. temperature 0 is greedy; top_k 0 and top_p 1 disable the filters."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


HEADS = {"index": IndexHead, "bitwise": BitwiseHead}


def build_head(node: dict, *, width: int, code_kind: str, bits: int, vocab_size: int) -> Head:
    """``HEADS[node.name](**rest)`` with the quantizer's code kind, bits and vocabulary size injected."""
    return build(HEADS, node, "head", width=width, code_kind=code_kind, bits=bits, vocab_size=vocab_size)
