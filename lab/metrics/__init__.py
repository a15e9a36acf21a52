"""Metrics: image and token measures (``measures.py``: PSNR, SSIM, LPIPS, FID features, codebook usage, bit
entropy), the FID/KID protocol with its floor and ceiling (``fid_protocol.py``), and a tokenizer's final
evaluation (``evaluate.py``)."""
from lab.metrics.measures import (FID, LPIPS, InceptionFeatures, bit_entropy, codebook_stats, count_params,  # noqa: F401
                                  peak_memory_mb, psnr, reset_peak_memory, ssim)
