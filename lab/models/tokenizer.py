"""Conv encoder/decoder (GroupNorm residual blocks) around a multi-scale quantizer.

    x (B,3,H,W) -> Encoder -> f (B,C,h,w) -> MultiScaleQuantizer -> f_hat -> Decoder -> x_hat
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from lab.quantizers import build_quantizer
from lab.quantizers.multiscale import MultiScaleOut, MultiScaleQuantizer


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4) if c >= 8 else 1, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    """Image (B,3,H,W) -> latent (B,C,H/2^(L-1),W/2^(L-1)), L = len(channel_mult)."""

    def __init__(self, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int, latent_dim: int,
                 mid_blocks: int = 1):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, w))
                c = w
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c) for _ in range(mid_blocks)]
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latent (B,C,h,w) -> image (B,3,h*2^(L-1),w*2^(L-1)); mirror of the encoder with nearest upsampling."""

    def __init__(self, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int, latent_dim: int,
                 mid_blocks: int = 1):
        super().__init__()
        widths = [channels * m for m in reversed(channel_mult)]
        c = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, c, 3, padding=1)]
        layers += [ResBlock(c, c) for _ in range(mid_blocks)]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, w))
                c = w
            if i < len(widths) - 1:  # narrow to the next level's width while upsampling: the conv runs at 2x
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, widths[i + 1], 3, padding=1)]
                c = widths[i + 1]
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# Bumped whenever the default architecture changes: cached tokenizers (runs/_tokenizers/<hash>) are keyed on it.
ARCH_VERSION = 2


class TokenizerOut(NamedTuple):
    x_hat: Tensor  # (B,3,H,W)
    quant: MultiScaleOut
    f: Tensor  # encoder output (B,C,h,w)
    prefix_len: Tensor  # int64 (B,): how many scales each reconstruction used


class Tokenizer(nn.Module):
    """Multi-scale tokenizer. ``quantizer`` is a component node (``{name: bsq, bits: 16}``)."""

    def __init__(
        self,
        *,
        quantizer: Mapping[str, Any],
        channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 8),
        num_res_blocks: int = 1,
        mid_blocks: int = 1,
        latent_dim: int = 16,
        scales: Sequence[int] = (1, 2, 3, 4, 6, 8),
        up_mode: str = "bicubic",
        phi_count: int = 4,
        phi_ratio: float = 0.5,
        learn_gain: bool = True,
        prefix_prob: float = 0.25,
        channels_last: bool = True,
    ):
        """prefix_prob: during training, the fraction of the batch decoded from a random prefix of the scales
        (scales 1..k, k uniform below K) instead of all of them, so the decoder learns partial sums and the
        encoder is pushed to put coarse content in the coarse scales.
        channels_last: keep conv weights and activations NHWC (about 10% faster on CPU, faster on GPUs too)."""
        super().__init__()
        arch = dict(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks, latent_dim=latent_dim,
                    mid_blocks=mid_blocks)
        self.encoder = Encoder(**arch)
        self.decoder = Decoder(**arch)
        self.downsample = 2 ** (len(channel_mult) - 1)
        self.latent_dim = latent_dim
        self.prefix_prob = prefix_prob
        self.msq = MultiScaleQuantizer(
            build_quantizer(quantizer, dim=latent_dim), dim=latent_dim, scales=scales, up_mode=up_mode,
            phi_count=phi_count, phi_ratio=phi_ratio, learn_gain=learn_gain,
        )
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def scales(self) -> list[int]:
        return self.msq.scales

    def check_image_size(self, size: int) -> None:
        if size // self.downsample != self.msq.size:
            raise ValueError(
                f"image size {size} with {self.downsample}x downsampling gives a {size // self.downsample}x"
                f"{size // self.downsample} latent, but the last scale is {self.msq.size}: set tokenizer.scales "
                f"to end at {size // self.downsample} or change loader.image_size / tokenizer.channel_mult."
            )

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(self._layout(x))

    def decode(self, f_hat: Tensor) -> Tensor:
        return self.decoder(f_hat)

    def forward(self, x: Tensor, *, prefix_prob: float | None = None) -> TokenizerOut:
        f = self.encode(x)
        p = self.prefix_prob if prefix_prob is None else prefix_prob
        K = self.msq.num_scales
        use_prefix = self.training and p > 0 and K > 1
        quant = self.msq(f, keep_prefixes=use_prefix)
        B = x.shape[0]
        prefix_len = torch.full((B,), K, dtype=torch.long, device=x.device)
        f_dec = quant.f_hat
        if use_prefix:
            n = int(round(p * B))
            if n > 0:
                prefix_len[:n] = torch.randint(1, K, (n,), device=x.device)
                stack = torch.stack(quant.prefixes, 0)  # (K, B, C, h, w)
                f_dec = stack[prefix_len - 1, torch.arange(B, device=x.device)]
        return TokenizerOut(self.decoder(f_dec), quant, f, prefix_len)

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Eval-mode codes per scale, f_hat and the encoder features f."""
        f = self.encode(x)
        q = self.msq(f)
        return q.codes, q.f_hat, f

    @torch.no_grad()
    def decode_prefixes(self, x: Tensor) -> list[Tensor]:
        """Reconstructions from the first k scales, k = 1..K (for the progressive grid and per-scale PSNR)."""
        q = self.msq(self.encode(x), keep_prefixes=True)
        return [self.decoder(p) for p in q.prefixes]
