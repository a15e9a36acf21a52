"""Index-wise vector quantization (VQ-VAE / VAR) through vector-quantize-pytorch's ``VectorQuantize``.

Exposes the usual cures for codebook collapse (LlamaGen Tab.2, VAR's tokenizer): a low code dimension
(``code_dim``, projected from the latent), cosine similarity (l2-normalised codes), k-means
initialisation and dead-code expiry.
"""
from __future__ import annotations

from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from lab.codes import bits_for_vocab
from lab.quantizers.base import QuantOut, to_channels_first


class VQ(nn.Module):
    code_kind = "index"

    def __init__(
        self,
        *,
        dim: int = 16,
        codebook_size: int = 4096,
        code_dim: int | None = 8,
        commitment_weight: float = 0.25,
        decay: float = 0.9,
        use_cosine_sim: bool = True,
        kmeans_init: bool = True,
        dead_code_threshold: float = 1.0,
    ):
        """dead_code_threshold: codes whose EMA usage falls below this many hits are re-seeded from the batch."""
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            codebook_dim=code_dim or dim,
            commitment_weight=commitment_weight,
            decay=decay,
            use_cosine_sim=use_cosine_sim,
            kmeans_init=kmeans_init,
            threshold_ema_dead_code=dead_code_threshold,
            accept_image_fmap=True,
        )

    @property
    def bits(self) -> int:
        return bits_for_vocab(self.codebook_size)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def forward(self, z_BChw: Tensor) -> QuantOut:
        z_q, index_Bhw, loss = self.vq(z_BChw.float())
        return QuantOut(z_q, index_Bhw, loss.sum(), {})

    def codes_to_latent(self, index_Bhw: Tensor) -> Tensor:
        """int64 (B, h, w) -> latent (B, C, h, w)."""
        codes_Bhwc = self.vq.codebook[index_Bhw]  # (B, h, w, code_dim)
        return to_channels_first(self.vq.project_out(codes_Bhwc))
