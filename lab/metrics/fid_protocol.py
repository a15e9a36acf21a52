"""The evaluation protocol of rFID and gFID (issue 13): a cached reference, KID beside FID, a floor and a ceiling.

* **Reference**: the Inception features of a whole real split (generators: the training split; tokenizers: the
  evaluated validation split), or a seeded subset of ``eval.fid_reference_limit`` images of it where the split is
  too large for the machine (Inception runs at ~6.5 images/s on 2 CPU cores). The features themselves (not just
  mean and covariance: KID needs them) are cached under ``fid_cache_dir()/features`` keyed by a hash of the exact
  uint8 images, so every run on the same data pays for them once.
* **KID** (Binkowski et al. 2018) as torchmetrics' ``KernelInceptionDistance`` defines it: the unbiased MMD^2 with
  the polynomial kernel ``(x.y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size`` images
  of each set; the sd is over those subsets (``unbiased=False``, as torchmetrics). It is unbiased in N, unlike FID,
  whose bias grows as 1/N: at N < 2048 the covariance is not even full rank.
* **Floor**: N held-out real images scored against the same reference (what a perfect model would score at this
  N); **ceiling**: N images decoded by the same tokenizer from uniformly random codes (what a model that learned
  nothing would score). ``normalized = (score - floor) / (ceiling - floor)``: 0 real, 1 noise. Both are cached
  (features by their images, scores by features + reference + KID settings), so a suite computes them once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lab.core.settings import EvalSettings
from lab.core.registry import ConfigError
from lab.metrics.fid import InceptionFeatures, fid_model_path, mean_cov
from lab.runtime.files import atomic_torch_save, atomic_write, cache_root, exclusive
from lab.runtime.progress import Progress, phase

CHUNK = 512  # images per saved step of a growing feature cache
MIN_SAMPLES = 10  # below this FID and KID mean nothing: refused
FULL_RANK = 2048  # the Inception feature width: fewer images give a rank-deficient covariance, FID biased upwards
DEFAULTS = {"fid_reference_limit": None, "kid_subsets": 100, "kid_subset_size": 1000}


# --------------------------------------------------------------------------------------------------- features
@functools.lru_cache(maxsize=1)
def extractor_id() -> str:
    """The first 12 hex digits of the Inception weights' SHA-256: features cached under another extractor are
    never mixed with these."""
    h = hashlib.sha256()
    with open(fid_model_path(), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def fid_cache_dir() -> Path:
    """Where Inception features and scores are cached, keyed inside by the images, N and the KID settings:
    ``$BITLAB_CACHE/fid`` when set, else the user's cache (``$BITLAB_FID_CACHE``, or
    ``$XDG_CACHE_HOME/bitlab/fid/<extractor weights hash>``, default ``~/.cache/...``), which every checkout of
    the user shares: the expensive reference (~13 min for 5,000 images on 2 cores) is paid once per machine.
    A checkout's older ``.cache/fid`` is adopted (copied) the first time."""
    if os.environ.get("BITLAB_CACHE"):
        return cache_root() / "fid"
    if os.environ.get("BITLAB_FID_CACHE"):
        return Path(os.environ["BITLAB_FID_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "bitlab" / "fid" / extractor_id()
    _adopt(cache_root() / "fid", d)
    return d


@functools.lru_cache(maxsize=None)
def _adopt(legacy: Path, d: Path) -> None:
    """Copy a checkout's older cache entries that the user cache lacks (once per process; entries are keyed by
    their content, so an entry present in both is the same)."""
    if not legacy.is_dir():
        return
    for f in legacy.rglob("*"):
        if f.is_file() and not f.name.endswith(".lock") and ".tmp" not in f.name:
            target = d / f.relative_to(legacy)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 (B, 3, H, W) as InceptionFeatures quantises them (uint8 passes through)."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def images_key(images: Tensor) -> str:
    """A hash of the exact uint8 pixels and their shape (the order matters only through the result: never)."""
    u8 = to_uint8(images).cpu().contiguous()
    h = hashlib.sha1(str(tuple(u8.shape)).encode())
    h.update(u8.numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass
class FeatureSet:
    """Inception features ``(n, 2048)`` float32 on the CPU, the hash of their images, and (lazily) mean/covariance."""

    features: Tensor
    key: str
    _stats: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    _sqrt: Tensor | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def stats(self) -> tuple[Tensor, Tensor]:
        if self._stats is None:
            f = self.features.double()
            self._stats = mean_cov(f.sum(0), f.T @ f, self.n)
        return self._stats

    def sqrt_cov(self) -> Tensor:
        """The symmetric square root of the covariance (cached: a reference's is reused by every FID against it)."""
        if self._sqrt is None:
            import scipy.linalg

            sigma = self.stats()[1]
            # LAPACK's relatively robust representations driver: ~8x faster than torch.linalg.eigh's on 2048x2048
            w, v = scipy.linalg.eigh(((sigma + sigma.T) / 2).numpy(), driver="evr")
            w, v = torch.from_numpy(w), torch.from_numpy(v)
            self._sqrt = (v * w.clamp_min(0).sqrt()) @ v.T
        return self._sqrt

    def subset(self, idx: Tensor) -> "FeatureSet":
        """Rows ``idx`` (a resample for the noise study); its key names the parent and the rows."""
        h = hashlib.sha1(self.key.encode() + idx.cpu().numpy().astype("int64").tobytes()).hexdigest()[:20]
        return FeatureSet(self.features[idx], h)


def inception_features(images: Tensor, *, device: Any = "cpu", batch_size: int = 64, what: str = "",
                       progress: Progress | None = None) -> Tensor:
    """Features of uint8 or [-1, 1] images, in chunks of 256, with a progress count and ETA for large sets
    (``progress``: a caller's count that spans several calls)."""
    extractor = InceptionFeatures(batch_size=batch_size).to(device)
    n, out = images.shape[0], []
    own = progress is None and n > 256
    if own:
        progress = Progress(f"Inception features{' of ' + what if what else ''}", n)
    try:
        for i in range(0, n, 256):
            out.append(extractor(images[i:i + 256].to(device)).cpu())
            if progress is not None:
                progress.update(min(256, n - i))
    finally:
        if own:
            progress.close()
    return torch.cat(out).float()


def features_of(images: Tensor, *, device: Any = "cpu", what: str = "", cache: bool = True) -> FeatureSet:
    """Features of ``images``, cached under ``fid_cache_dir()/features/<hash>-<n>.pt`` (another process computing
    the same entry meanwhile is waited for, not duplicated)."""
    u8 = to_uint8(images).cpu()
    key = images_key(u8)
    if not cache:
        return FeatureSet(inception_features(u8, device=device, what=what), key)

    path = fid_cache_dir() / "features" / f"{key}-{u8.shape[0]}.pt"
    with exclusive(path.with_name(path.name + ".lock"), waiting=f"waiting for another process computing {path}"):
        if path.is_file():
            return FeatureSet(torch.load(path, map_location="cpu").float(), key)
        if u8.shape[0] > 256:
            phase(f"computing the Inception features of {u8.shape[0]:,} images ({what}) once, cached in {path}")
        feats = inception_features(u8, device=device, what=what)
        atomic_torch_save(feats, path)
    return FeatureSet(feats, key)


def prefix_features(images: Tensor, n: int, *, device: Any = "cpu", what: str = "") -> FeatureSet:
    """Features of ``images[:n]`` (a split in its fixed order: the held-out images of a floor, the noise study's
    pool) from one growing cache entry per split, ``features/prefix-<hash of the whole split>.pt``: a floor at
    N = 500 and a later one at N = 2000, or the noise study's pool, compute each image once."""
    u8 = to_uint8(images).cpu()
    n = min(int(n), u8.shape[0])

    path = fid_cache_dir() / "features" / f"prefix-{images_key(u8)}.pt"
    with exclusive(path.with_name(path.name + ".lock"), waiting=f"waiting for another process computing {path}"):
        have = torch.load(path, map_location="cpu").float() if path.is_file() else None
        m = 0 if have is None else have.shape[0]
        if m < n:
            phase(f"computing the Inception features of {n - m:,} images ({what}) once, cached in {path}"
                  + (f" ({m:,} were cached)" if m else ""))
            # saved every CHUNK images: an interrupted computation (a killed run, a sweep stopped) keeps its progress
            with Progress(f"Inception features of {what}" if what else "Inception features", n - m) as progress:
                for start in range(m, n, CHUNK):
                    new = inception_features(u8[start:min(start + CHUNK, n)], device=device, what=what, progress=progress)
                    have = new if have is None else torch.cat([have, new])
                    atomic_torch_save(have, path)
    return FeatureSet(have[:n].clone(), images_key(u8[:n]))


def reference_permutation(n_total: int, seed: int = 0) -> Tensor:
    """The fixed seeded order in which a split's images enter a limited reference."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))


def reference_subset(n_total: int, limit: int | None, seed: int = 0) -> Tensor:
    """Indices of the reference: every image, or the first ``limit`` of ``reference_permutation``."""
    if limit is None or limit >= n_total:
        return torch.arange(n_total)
    return reference_permutation(n_total, seed)[:limit]


def reference(images: Tensor, *, split: str, data: str = "", limit: int | None = None, device: Any = "cpu"
              ) -> tuple[FeatureSet, dict]:
    """The reference features of a real split (``images``: all of it, uint8) and what metrics.json records of it:
    ``{"split", "count", "of"[, "data"]}``."""
    n_total = images.shape[0]
    if limit is None or limit >= n_total:
        idx = torch.arange(n_total)
        feats = features_of(images, device=device, what=f"{data} {split} (reference)".strip())
    else:
        # the first ``limit`` images of one fixed seeded permutation of the split, from a growing cache: a reference
        # of 5,000 images is the start of the one of 10,000, so raising the limit computes only the new images
        perm = reference_permutation(n_total)
        idx = perm[:limit]
        feats = prefix_features(images[perm], limit, device=device, what=f"{data} {split} (reference)".strip())
    info = {"split": split, "count": int(idx.numel()), "of": int(n_total)} | ({"data": data} if data else {})
    return feats, info


# ------------------------------------------------------------------------------------------------ FID and KID
def fid(ref: FeatureSet, other: FeatureSet) -> float:
    """The Frechet distance between the two sets' Gaussians, ``lab.metrics.fid.frechet_distance``'s formula
    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (R S2 R)^(1/2)`` with ``R = S1^(1/2)`` of ``ref`` computed once per
    reference (one 2048x2048 eigenproblem per FID instead of two)."""
    if ref.n < 2 or other.n < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {ref.n} and {other.n}")
    (mu1, s1), (mu2, s2), root = ref.stats(), other.stats(), ref.sqrt_cov()
    inner = root @ s2 @ root
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    d = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)
    return max(d, 0.0)  # a set against itself: ~-1e-5 of round-off


def _poly_mmd(x: Tensor, y: Tensor, degree: int, coef: float) -> float:
    """torchmetrics' ``poly_mmd``: unbiased MMD^2 with kernel (x.y/d + coef)^degree. The products run in float32
    (2x faster than float64 on a CPU), the kernel powers and sums in float64."""
    m, gamma = x.shape[0], 1.0 / x.shape[1]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return ((a @ b.T).double() * gamma + coef) ** degree

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    diag = kxx.diagonal().sum() + kyy.diagonal().sum()
    return float((kxx.sum() + kyy.sum() - diag) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def kid(real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        degree: int = 3, coef: float = 1.0) -> tuple[float, float]:
    """KID (mean, sd over subsets) of two feature sets, as torchmetrics' ``KernelInceptionDistance.compute``
    (draw order included: with ``torch.manual_seed(seed)`` torchmetrics draws the same subsets). ``subset_size``
    is capped at the smaller set."""
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {real.shape[0]} and {fake.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    real, fake = real.float(), fake.float()
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=g)[:m]]
        f = fake[torch.randperm(fake.shape[0], generator=g)[:m]]
        scores.append(_poly_mmd(r, f, degree, coef))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), float(s.std(unbiased=False)) if len(scores) > 1 else 0.0


def score(fake: FeatureSet, ref: FeatureSet, *, kid_subsets: int = 100, kid_subset_size: int = 1000,
          seed: int = 0) -> dict:
    """``{"fid", "kid", "kid_std", "kid_subset_size", "n"}`` of ``fake`` against ``ref``."""
    k, k_sd = kid(ref.features, fake.features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": fid(ref, fake), "kid": k, "kid_std": k_sd, "n": fake.n,
            "kid_subset_size": min(kid_subset_size, fake.n, ref.n)}


def cached_score(fake: FeatureSet, ref: FeatureSet, **kid_kw) -> dict:
    """``score`` stored under ``fid_cache_dir()/scores`` keyed by both sets' images and the KID settings: a floor
    or a ceiling is computed once per suite, not once per run."""
    key = hashlib.sha1(json.dumps([fake.key, fake.n, ref.key, ref.n, sorted(kid_kw.items())]).encode()).hexdigest()[:20]
    path = fid_cache_dir() / "scores" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # a damaged entry: compute it again
            pass
    out = score(fake, ref, **kid_kw)

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out)))
    return out


def normalized(value: float, floor: float, ceiling: float) -> float | None:
    """``(value - floor) / (ceiling - floor)``: 0 = as good as real images, 1 = as bad as random codes. None when
    the ceiling does not lie above the floor (an untrained tokenizer can decode random codes to real-looking
    blur): no scale to place the value on."""
    span = ceiling - floor
    if not all(math.isfinite(v) for v in (value, floor, ceiling)) or span <= 0:
        return None
    return (value - floor) / span


# ------------------------------------------------------------------------------------------ ceiling, checks
@torch.no_grad()
def random_code_images(tokenizer: Any, n: int, *, seed: int = 0, batch_size: int = 64, device: Any = "cpu") -> Tensor:
    """``n`` images (uint8) decoded by ``tokenizer`` from codes drawn uniformly at random at every scale (uniform
    bits for bit codes, uniform indices for index codes), through the multi-scale quantizer's
    ``codes_to_latent``, the path the sampler takes."""
    msq = tokenizer.msq
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        if msq.code_kind == "bits":
            codes = [torch.randint(0, 2, (b, s, s, msq.bits), generator=g).float() for s in msq.scales]
        else:
            V = msq.vocab_size
            codes = [torch.randint(0, V, (b, s, s), generator=g) for s in msq.scales]
        f_hat = msq.codes_to_latent([c.to(device) for c in codes])
        out.append(to_uint8(tokenizer.decode(f_hat).clamp(-1, 1)).cpu())
    return torch.cat(out)


def options(ev: EvalSettings | None) -> dict:
    """The protocol's settings (``DEFAULTS``' keys) from the run's ``eval`` section; the defaults without one."""
    return dict(DEFAULTS) if ev is None else {k: getattr(ev, k) for k in DEFAULTS}


def check_eval_size(fid_samples: int, available: int, split: str = "validation") -> None:
    """Refuse an FID that cannot mean anything: fewer than ``MIN_SAMPLES`` images (0 = no FID is fine)."""
    n = min(int(fid_samples), int(available))
    if 0 < int(fid_samples) and n < MIN_SAMPLES:
        raise ConfigError(
            f"eval.fid_samples={fid_samples} with a {split} split of {available} images gives FID/KID over {n} "
            f"images; at least {MIN_SAMPLES} are needed (2048 for a full-rank FID), and a larger eval.fid_samples "
            f"cannot add {split} images. Hold out more images for {split}: raise data.val_fraction (the share held "
            "out, e.g. data.val_fraction=0.2) or data.limit (when set), or set eval.fid_samples=0 to skip FID."
        )


def fid_note(n: int, ref_n: int) -> str | None:
    """The warning that goes into metrics.json (``fid_note``) and the log when N is below FID's full rank."""
    notes = []
    if n < FULL_RANK:
        notes.append(f"N={n} < {FULL_RANK}: FID biased upwards; compare KID")
    if ref_n < FULL_RANK:
        notes.append(f"reference of {ref_n} images < {FULL_RANK}")
    if not notes:
        return None
    return "; ".join(notes)


def protocol_metrics(fid_name: str, kid_name: str, main: dict, ref_info: dict, *, floor: dict | None = None,
                     ceiling: dict | None = None, kid_subsets: int = 100) -> dict:
    """metrics.json entries: ``<fid_name>``, ``<kid_name>`` (+ ``_std``), ``_floor``, ``_ceiling``,
    ``_normalized`` where given, ``fid_reference`` and ``fid_note``."""
    m: dict[str, Any] = {fid_name: main["fid"], kid_name: main["kid"], f"{kid_name}_std": main["kid_std"],
                         "kid_subsets": kid_subsets, "kid_subset_size": main["kid_subset_size"],
                         "fid_reference": ref_info}
    for tag, b in (("floor", floor), ("ceiling", ceiling)):
        if b is not None:
            m[f"{fid_name}_{tag}"], m[f"{kid_name}_{tag}"] = b["fid"], b["kid"]
    if floor is not None and ceiling is not None:
        m[f"{fid_name}_normalized"] = normalized(main["fid"], floor["fid"], ceiling["fid"])
        m[f"{kid_name}_normalized"] = normalized(main["kid"], floor["kid"], ceiling["kid"])
    note = fid_note(main["n"], ref_info["count"])
    if note:
        m["fid_note"] = note
        print(f"warning: {fid_name}: {note}", flush=True)
    return m

