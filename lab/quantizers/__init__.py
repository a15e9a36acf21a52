"""Quantizers behind one interface: ``QuantOut(z_q, codes, loss, stats)``, ``codes_to_latent``,
``code_kind`` ("index" | "bits"; FSQ gives indices with a digits view) and ``bits`` (log2 of the vocabulary)."""
from __future__ import annotations

from typing import Any, Mapping


from lab.quantizers.base import Quantizer, QuantOut
from lab.quantizers.bsq import BSQ
from lab.quantizers.fsq import FSQ
from lab.quantizers.lfq import LFQ
from lab.quantizers.vq import VQ
from lab.core.registry import build

QUANTIZERS = {"vq": VQ, "lfq": LFQ, "bsq": BSQ, "fsq": FSQ}


def build_quantizer(node: Mapping[str, Any], dim: int | None = None) -> Quantizer:
    """Build ``QUANTIZERS[node.name](**rest)``; ``dim`` (the latent width) is set by the tokenizer."""
    extra = {"dim": dim} if dim is not None else {}
    return build(QUANTIZERS, node, "quantizer", **extra)


__all__ = ["QUANTIZERS", "QuantOut", "Quantizer", "build_quantizer", "BSQ", "FSQ", "LFQ", "VQ"]
