"""Lookup-free quantization (MAGVIT-v2, arXiv 2310.05737) through vector-quantize-pytorch's ``LFQ``.

The library's entropy term builds a (tokens x 2^d) distance matrix against the whole implicit codebook,
so memory grows as 2^bits: fine to ~16 bits, out of memory beyond ~20 (Infinity Tab.3). That is the
behaviour the tokenizer ablation measures, so we wrap it as it is.
"""
from __future__ import annotations

import vector_quantize_pytorch.lookup_free_quantization as _library
from torch import Tensor, nn
from vector_quantize_pytorch import LFQ as _LFQ

from lab.quantizers.codes import pack_bits, unpack_bits
from lab.quantizers.base import QuantOut, local_only


def _install_local_guard() -> None:
    """The library all-reduces its batch entropy in every training forward once a process group of 2+ exists
    (``maybe_distributed_mean``). Under ``local_statistics`` (rank 0 alone, e.g. counting a step's FLOPs after
    ``fit``) that all-reduce waited forever for a rank that had moved on: the process hung. Wrapped once, at
    import: inside ``local_statistics`` the batch entropy stays this process's own."""
    original = _library.maybe_distributed_mean
    if getattr(original, "bitlab_guarded", False):
        return

    def guarded(t: Tensor) -> Tensor:
        return t if local_only() else original(t)

    guarded.bitlab_guarded = True  # type: ignore[attr-defined]
    _library.maybe_distributed_mean = guarded


_install_local_guard()


class LFQ(nn.Module):
    code_kind = "bits"

    def __init__(
        self,
        *,
        dim: int = 16,
        bits: int = 16,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        commitment_weight: float = 0.25,
        inv_temperature: float = 100.0,
    ):
        super().__init__()
        if not 1 <= bits <= 30:
            raise ValueError(f"lfq materialises a 2^bits codebook; bits must be in 1..30, got {bits}")
        self.dim, self.bits = dim, bits
        self.inv_temperature = inv_temperature
        self.lfq = _LFQ(
            dim=dim,
            codebook_size=2**bits,
            entropy_loss_weight=entropy_weight,
            diversity_gamma=diversity_gamma,
            commitment_loss_weight=commitment_weight,
        )

    @property
    def vocab_size(self) -> int:
        return 2**self.bits

    def forward(self, z_BChw: Tensor) -> QuantOut:
        (z_q, index_Bhw, loss), parts = self.lfq(
            z_BChw.float(), inv_temperature=self.inv_temperature, return_loss_breakdown=True
        )
        stats = {
            "per_sample_entropy": parts.per_sample_entropy.detach(),
            "batch_entropy": parts.batch_entropy.detach(),
            "commitment": parts.commitment.detach(),
        }
        return QuantOut(z_q, unpack_bits(index_Bhw, self.bits), loss, stats)

    def codes_to_latent(self, bits_Bhwd: Tensor) -> Tensor:
        """bits (B, h, w, d) -> latent (B, C, h, w), via the library's own index -> code map."""
        return self.lfq.indices_to_codes(pack_bits(bits_Bhwd))

    def codes_to_index(self, bits_Bhwd: Tensor) -> Tensor:
        return pack_bits(bits_Bhwd)
