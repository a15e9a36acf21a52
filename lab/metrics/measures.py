"""Image and token measures: PSNR, SSIM, codebook usage, bit and level entropy, FLOPs, parameter and memory
accounting. (LPIPS: ``lab.metrics.lpips``; Inception features and FID: ``lab.metrics.fid``.)

Images everywhere are float tensors ``(B, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from typing import Sequence

import torch
from torch import Tensor, nn

from lab.quantizers.codes import index_to_digits

__all__ = [
    "psnr", "ssim", "codebook_stats", "bit_entropy", "level_entropy", "count_params",
    "peak_memory_mb", "reset_peak_memory",
]


# ----------------------------------------------------------------------------------------------- PSNR / SSIM
def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB for images in [-1, 1] (data range 2), computed per image and averaged over the batch.

    An exact reconstruction has infinite PSNR (as in torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = x.detach().float(), y.detach().float()
    return peak_signal_noise_ratio(x, y, data_range=2.0, dim=(1, 2, 3), reduction="elementwise_mean")


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """SSIM (11x11 Gaussian window) for images in [-1, 1] (data range 2), averaged over the batch."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = x.detach().float(), y.detach().float()
    return structural_similarity_index_measure(x, y, data_range=2.0, reduction="elementwise_mean")


# ------------------------------------------------------------------------------------------------------ codes
def codebook_stats(codes: Tensor, codebook_size: int) -> dict:
    """``{"usage": fraction of the codebook used, "perplexity": exp(entropy of the code histogram)}``.

    Perplexity is ``codebook_size`` for a uniform histogram and 1 when a single code is used."""
    codes = codes.detach().reshape(-1).long()
    if codes.numel() == 0:
        return {"usage": 0.0, "perplexity": 0.0}
    if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
        raise ValueError(f"codes outside [0, {codebook_size}): min {int(codes.min())}, max {int(codes.max())}")
    hist = codes.unique(return_counts=True)[1].double()  # the used codes only: no (codebook_size,) histogram (FSQ to 2^62)
    p = hist / hist.sum()
    entropy = -(p * p.log()).sum()
    return {"usage": float(hist.numel()) / codebook_size, "perplexity": float(entropy.exp())}


def bit_entropy(bits: Tensor) -> Tensor:
    """Mean over the last dim of the binary entropy (bits, 0..1) of each bit's marginal frequency of ones.

    ``bits`` is ``(..., d)`` in {0, 1} (a ±1 sign code works too: positive counts as 1). 1 means every bit is
    balanced; 0 means every bit is constant."""
    ones = (bits.detach() > 0).reshape(-1, bits.shape[-1]).double().mean(dim=0)
    h = torch.zeros_like(ones)
    m = (ones > 0) & (ones < 1)
    p = ones[m]
    h[m] = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return h.mean().float()


def level_entropy(index: Tensor, levels: Sequence[int]) -> list[float]:
    """Per digit of a mixed-radix code (FSQ): the entropy of its level histogram over ``index`` (any shape),
    normalised by log2(L_i): 1 when the dimension uses its levels evenly, 0 when it is constant."""
    digits = index_to_digits(index.detach().reshape(-1), levels)  # (N, D)
    out = []
    for i, L in enumerate(levels):
        p = torch.bincount(digits[:, i], minlength=int(L)).double()
        p = p[p > 0] / p.sum().clamp_min(1)
        out.append(float(-(p * p.log2()).sum()) / math.log2(int(L)))
    return out


# ------------------------------------------------------------------------------------------ params / memory
def train_step_flops(module: nn.Module, batch: dict) -> int:
    """FLOPs of one training step (forward and backward of ``module.train_loss(batch)``, a loss or a tuple
    starting with it), counted by
    ``torch.utils.flop_counter`` (matmuls and convolutions, the terms that scale). Leaves the RNG, the
    gradients, the training mode and the state as they were: a training forward moves a VQ codebook's EMA and
    may re-seed its dead codes, and the run's sample grids are drawn after this count."""
    from torch.utils.flop_counter import FlopCounterMode

    was = module.training
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.train()
    try:
        with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
            loss = module.train_loss(batch)
            loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was)
        with torch.no_grad():
            for k, v in module.state_dict().items():
                v.copy_(state[k])
    return int(counter.get_total_flops())



def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters; ``trainable_only`` counts those with ``requires_grad``."""
    total = 0
    for p in module.parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            continue
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel()
    return total


def _cuda_device(device) -> torch.device | None:
    """The CUDA device meant by ``device`` (None: the current one when CUDA is in use), else None for CPU."""
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None
    device = torch.device(device)
    return device if device.type == "cuda" else None


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory_mb(device=None) -> float:
    """Peak memory in MiB: CUDA ``max_memory_allocated``; on CPU the process's peak resident set size.

    On Linux the CPU figure is ``VmHWM`` (which ``reset_peak_memory`` can reset), else ``getrusage`` max RSS."""
    cuda = _cuda_device(device)
    if cuda is not None:
        return torch.cuda.max_memory_allocated(cuda) / 2**20
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def reset_peak_memory(device=None) -> None:
    """Reset the peak counter: CUDA peak stats, or on Linux the process's ``VmHWM`` (``/proc/self/clear_refs``).

    Elsewhere the CPU peak cannot be reset and keeps covering the whole process."""
    cuda = _cuda_device(device)
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
        return
    if os.path.exists("/proc/self/clear_refs"):
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        except OSError:
            pass
