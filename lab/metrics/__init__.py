"""Metrics: image and token measures (``measures.py``: PSNR, SSIM, codebook usage, bit entropy, parameter and
memory accounting), LPIPS with its offline weights (``lpips.py``), Inception features and FID (``fid.py``), and
the FID/KID protocol with its floor and ceiling (``fid_protocol.py``). A tokenizer's final evaluation is
``lab.evaluation``."""
from lab.metrics.fid import FID, InceptionFeatures  # noqa: F401
from lab.metrics.lpips import LPIPS  # noqa: F401
from lab.metrics.measures import (bit_entropy, codebook_stats, count_params, peak_memory_mb,  # noqa: F401
                                  reset_peak_memory, psnr, ssim)
