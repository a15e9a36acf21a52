"""F9's measurement: how far a tokenizer's labels move under noise (Infinity's motivation for bitwise labels).

``label_noise_sensitivity`` adds Gaussian noise relative to the encoder features' RMS, re-quantizes, and reports
``label_moves``: the share of index labels that change against the share of bits that flip (``LABEL_NOISE_KEYS``,
metrics.json ``label_noise.<sigma>.<key>``), for the findings' like-with-like contrast of VQ and BSQ.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from lab.quantizers.codes import unpack_bits


# The entries of ``label_noise_sensitivity`` per noise level (metrics.json ``label_noise.<sigma>.<key>``), each a
# mean over every token of every scale.
LABEL_NOISE_KEYS = {
    "index_change": "fraction of tokens whose label changes at all (VQ: the nearest code; bits: any bit flips)",
    "bit_flip": "fraction of the label's bits that flip (VQ: of the index's binary expansion)",
    "bits_moved": "bits the label moves per token, the Hamming distance old -> new (= bit_flip x bits)",
    "bits_moved_if_changed": "bits moved per token whose label changed (None when none did); for VQ the numbering "
                             "of the codes is arbitrary, so this is what a bitwise head on VQ codes sees, not geometry",
    "bits": "the label's width in bits (log2 of the vocabulary, rounded up)",
}


def label_moves(clean: Sequence[Tensor], moved: Sequence[Tensor], code_kind: str, bits: int) -> dict[str, float | None]:
    """How far labels move between two quantizations of the same tokens, pooled over scales (``LABEL_NOISE_KEYS``).

    ``clean`` / ``moved``: per scale, index codes ``int64 (B, h, w)`` (``code_kind`` "index") or bit codes
    ``(B, h, w, d)`` in {0, 1} ("bits"); ``bits``: d, or the width of the indices' binary expansion."""
    def as_bits(c: Tensor) -> Tensor:
        return unpack_bits(c, bits) if code_kind == "index" else c

    changed = hamming = tokens = 0.0
    for a, b in zip(clean, moved, strict=True):
        if code_kind == "index":
            change_Bhw = a != b
            diff_Bhwd = as_bits(a) != as_bits(b)
        else:
            diff_Bhwd = a != b
            change_Bhw = diff_Bhwd.any(-1)
        changed += float(change_Bhw.sum())
        hamming += float(diff_Bhwd.sum())
        tokens += change_Bhw.numel()
    return {"index_change": changed / tokens, "bit_flip": hamming / tokens / bits, "bits_moved": hamming / tokens,
            "bits_moved_if_changed": hamming / changed if changed else None, "bits": float(bits)}


def _codes(quantizer: Any, f: Tensor) -> list[Tensor]:
    codes = quantizer(f).codes
    return [codes] if isinstance(codes, Tensor) else list(codes)


@torch.no_grad()
def label_noise_sensitivity(msq: Any, f: Tensor, sigmas: Iterable[float], seed: int = 0) -> dict:
    """Infinity's motivation for bitwise labels, measured on one tokenizer: add Gaussian noise of ``sigma`` x
    RMS(f) to the continuous encoder features ``f (B, C, h, w)``, re-quantize with ``msq`` (a MultiScaleQuantizer,
    or a single quantizer), and measure how far the labels move (``label_moves``). The same relative noise given
    to an index-wise tokenizer (VQ) and to a bitwise one (BSQ) of equal vocabulary is the like-with-like contrast
    of the findings' F9: VQ's ``index_change`` (a softmax head loses the whole label) against BSQ's ``bit_flip``
    (a bitwise head loses that share of its bits) and ``bits_moved_if_changed``. -> {sigma: {key: value}}."""
    clean = _codes(msq, f)
    rms = f.pow(2).mean().sqrt()
    g = torch.Generator(device=f.device).manual_seed(seed)
    out = {}
    for sigma in sigmas:
        noisy = _codes(msq, f + float(sigma) * rms * torch.randn(f.shape, generator=g, device=f.device, dtype=f.dtype))
        out[f"{float(sigma):g}"] = label_moves(clean, noisy, msq.code_kind, msq.bits)
    return out
