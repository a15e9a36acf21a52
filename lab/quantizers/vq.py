"""Index-wise vector quantization (VQ-VAE / VAR) through vector-quantize-pytorch's ``VectorQuantize``.

Exposes the usual cures for codebook collapse (LlamaGen Tab.2, VAR's tokenizer): a low code dimension
(``code_dim``, projected from the latent), cosine similarity (l2-normalised codes), k-means
initialisation and dead-code expiry.

Several processes (DDP): the codebook's EMA statistics and its k-means start are each process's own
(``sync_codebook=False``) and rank 0's win, since DDP broadcasts buffers from rank 0 before every forward. The library
would otherwise decide at construction whether to all-reduce them, from whether a process group already existed:
the second tokenizer of one two-process suite invocation would then train with other arithmetic than the first,
and rank 0 alone (counting a step's FLOPs after ``fit``) would wait forever in that all-reduce.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from lab.quantizers.codes import bits_for_vocab
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
        if not 2 <= codebook_size <= 2**30:
            raise ValueError(f"vq materialises its codebook; codebook_size must be in 2..2^30, got {codebook_size} "
                             "(for larger vocabularies use bsq, whose cost is linear in bits)")
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
            sync_codebook=False,  # see the module docstring
        )

    @property
    def bits(self) -> int:
        return bits_for_vocab(self.codebook_size)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def forward(self, z_BChw: Tensor) -> QuantOut:
        if not self.training:
            return self._nearest(z_BChw)
        z_q, index_Bhw, loss = self.vq(z_BChw.float())
        return QuantOut(z_q, index_Bhw, loss.sum(), {})

    @torch.no_grad()
    def _nearest(self, z_BChw: Tensor, rows: int = 4096) -> QuantOut:
        """Inference: the library's eval-mode lookup (its loss is zero there) as one matmul + argmax per chunk.
        The library builds a one-hot (N, codebook) matrix and a batched einsum even in eval, which made the
        generator stage, which quantizes every scale of every batch, ~6x slower with VQ than with BSQ."""
        B, C, h, w = z_BChw.shape
        x = z_BChw.float().permute(0, 2, 3, 1).reshape(-1, C)
        x = self.vq._codebook.transform_input(self.vq.project_in(x))  # l2-normalised under cosine similarity
        embed = self.vq.codebook.to(x.dtype)  # (codebook_size, code_dim)
        if self.vq._codebook.use_cosine_sim:
            index = torch.cat([(xc @ embed.T).argmax(-1) for xc in x.split(rows)])
        else:
            index = torch.cat([torch.cdist(xc, embed).argmin(-1) for xc in x.split(rows)])
        index_Bhw = index.reshape(B, h, w)
        z_q = self.codes_to_latent(index_Bhw)
        return QuantOut(z_q, index_Bhw, z_q.new_zeros(()), {})

    def codes_to_latent(self, index_Bhw: Tensor) -> Tensor:
        """int64 (B, h, w) -> latent (B, C, h, w)."""
        codes_Bhwc = self.vq.codebook[index_Bhw]  # (B, h, w, code_dim)
        return to_channels_first(self.vq.project_out(codes_Bhwc))
