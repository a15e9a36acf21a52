"""Final evaluation of a tokenizer: the numbers that go into ``metrics.json``.

PSNR / SSIM / LPIPS on validation batches, rFID and rKID of the reconstructions of ``eval.fid_samples`` validation
images against the whole validation split (``lab.metrics.fid_protocol``; its floor: the same real images), and per
scale: the PSNR of the reconstruction from the first k scales and the bit entropy (LFQ, BSQ) or code
usage and perplexity (VQ) of scale k. A naive baseline measured on the same images sits beside them:
bicubic down-sampling to the latent size and back up.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lab.core.settings import EvalSettings
from lab.metrics import fid_protocol as P
from lab.metrics.lpips import LPIPS
from lab.metrics.measures import bit_entropy, codebook_stats, level_entropy, psnr, ssim
from lab.models.tokenizer import Tokenizer


def bicubic_baseline(x: Tensor, size: int) -> Tensor:
    small = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


def _batches(loader: Iterable, limit: int) -> Iterable[dict]:
    for i, batch in enumerate(loader):
        if i >= limit:
            break
        yield batch


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer, val_loader: Iterable, *, batches: int, fid_samples: int, lpips: LPIPS, device: Any = "cpu",
    protocol: EvalSettings | None = None,
) -> dict:
    """The tokenizer's metrics.json entries. ``protocol``: the run's ``eval`` section (``EvalSettings``: the reference
    limit and the KID settings, ``lab.metrics.fid_protocol.options``; None: the protocol's defaults). The reference of rFID is the whole split of ``val_loader``
    (its ``dataset.images``), limited to ``eval.fid_reference_limit`` images."""
    t_eval = time.time()
    tokenizer.eval().to(device)
    lpips = lpips.to(device)
    K = tokenizer.msq.num_scales
    sums = {k: 0.0 for k in ("psnr", "ssim", "lpips", "baseline_psnr", "baseline_lpips")}
    prefix_psnr = [0.0] * K
    codes_per_scale: list[list[Tensor]] = [[] for _ in range(K)]
    n_batches = 0
    extractor = P.InceptionFeatures().to(device) if fid_samples > 0 else None
    fid_real: list[Tensor] = []  # uint8 originals of the reconstructed images (the floor; the reference fallback)
    fid_feats: list[Tensor] = []  # Inception features of the reconstructions, batch by batch
    seen_fid = 0
    for i, batch in enumerate(val_loader):
        x = batch["image"].to(device)
        in_metric_batches = i < batches
        need_fid = extractor is not None and seen_fid < fid_samples
        if not in_metric_batches and not need_fid:
            break
        q = tokenizer.msq(tokenizer.encode(x), keep_prefixes=in_metric_batches)
        x_hat = tokenizer.decode(q.f_hat).clamp(-1, 1)
        if need_fid:
            take = min(x.shape[0], fid_samples - seen_fid)
            fid_real.append(P.to_uint8(x[:take]).cpu())
            fid_feats.append(extractor(x_hat[:take]).cpu())
            seen_fid += take
        if not in_metric_batches:
            continue
        n_batches += 1
        base = bicubic_baseline(x, tokenizer.msq.size)
        sums["psnr"] += float(psnr(x_hat, x))
        sums["ssim"] += float(ssim(x_hat, x))
        sums["lpips"] += float(lpips(x_hat, x).mean())
        sums["baseline_psnr"] += float(psnr(base, x))
        sums["baseline_lpips"] += float(lpips(base, x).mean())
        for k, f_prefix in enumerate(q.prefixes):
            prefix_psnr[k] += float(psnr(tokenizer.decode(f_prefix).clamp(-1, 1), x))
            codes_per_scale[k].append(q.codes[k].cpu())
    if n_batches == 0:
        raise RuntimeError("the validation split yielded no batches: nothing to evaluate")
    metrics: dict[str, Any] = {k: v / n_batches for k, v in sums.items()}
    per_scale: dict[str, Any] = {"scale": tokenizer.scales, "prefix_psnr": [v / n_batches for v in prefix_psnr]}
    if tokenizer.msq.code_kind == "bits":
        ent = [float(bit_entropy(torch.cat(c).reshape(-1, tokenizer.msq.bits))) for c in codes_per_scale]
        per_scale["bit_entropy"] = ent
        metrics["bit_entropy"] = sum(ent) / len(ent)
    else:
        V = tokenizer.msq.vocab_size
        st = [codebook_stats(torch.cat(c), V) for c in codes_per_scale]
        per_scale["codebook_usage"] = [s["usage"] for s in st]
        per_scale["perplexity"] = [s["perplexity"] for s in st]
        metrics["codebook_usage"] = codebook_stats(torch.cat([torch.cat(c).flatten() for c in codes_per_scale]), V)["usage"]
        if tokenizer.msq.levels:  # FSQ: how evenly each dimension uses its levels
            per_dim = [level_entropy(torch.cat(c), tokenizer.msq.levels) for c in codes_per_scale]
            per_scale["level_entropy"] = [sum(e) / len(e) for e in per_dim]
            metrics["level_entropy"] = sum(per_scale["level_entropy"]) / len(per_dim)
            metrics["level_entropy_per_dim"] = level_entropy(torch.cat([torch.cat(c).flatten() for c in codes_per_scale]),
                                                             tokenizer.msq.levels)
    metrics["per_scale"] = per_scale
    if extractor is not None:
        metrics.update(_rfid(torch.cat(fid_feats), torch.cat(fid_real), val_loader, protocol, device))
        metrics["fid_samples"] = seen_fid
    metrics["lpips_size"] = lpips.resize_to
    metrics["eval_time_s"] = time.time() - t_eval
    return metrics


def _rfid(recon_feats: Tensor, real: Tensor, val_loader: Any, protocol: EvalSettings | None, device: Any) -> dict:
    """rFID / rKID of the reconstructions and their floor (the originals: what a perfect tokenizer scores), both
    against the reference of the evaluated split."""
    opts = P.options(protocol)
    kid_kw = {"kid_subsets": opts["kid_subsets"], "kid_subset_size": opts["kid_subset_size"]}
    split = getattr(val_loader, "dataset", None)
    images = getattr(split, "images", None)
    what = f"the floor: {real.shape[0]} validation images"
    if images is None:  # a plain iterable of batches: the evaluated images are all there is
        images, name = real, "validation (the evaluated images)"
        floor_feats = P.features_of(real, device=device, what=what)
    else:
        name = "validation"
        floor_feats = P.prefix_features(images, real.shape[0], device=device, what=what)
        if floor_feats.key != P.images_key(real):  # not the split's first images (a shuffled loader): by value
            floor_feats = P.features_of(real, device=device, what=what)
    ref, info = P.reference(images, split=name, limit=opts["fid_reference_limit"], device=device)
    floor = P.cached_score(floor_feats, ref, **kid_kw)
    main = P.score(P.FeatureSet(recon_feats, "reconstructed"), ref, **kid_kw)
    return P.protocol_metrics("rfid", "rkid", main, info, floor=floor, kid_subsets=opts["kid_subsets"])


def format_per_scale(per_scale: Mapping[str, Any]) -> str:
    keys = [k for k in per_scale if k != "scale"]
    lines = ["scale " + " ".join(f"{k:>14}" for k in keys)]
    for i, s in enumerate(per_scale["scale"]):
        lines.append(f"{s:>5} " + " ".join(f"{per_scale[k][i]:>14.4f}" for k in keys))
    return "\n".join(lines)
