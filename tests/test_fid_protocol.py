"""The evaluation protocol (lab/metrics/fid_protocol.py): KID as torchmetrics defines it, the cached reference and scores,
floor / ceiling / normalized, random-code images, and the refusal of evaluations too small to mean anything."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lab.metrics import fid_protocol as P
from lab.core.registry import ConfigError


def _features(n: int, d: int = 64, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) + shift  # non-negative, like Inception pool3 features


def test_kid_of_a_set_against_itself_is_about_zero_and_against_a_shifted_set_positive():
    a = _features(300)
    b = _features(300, seed=1)  # another draw of the same distribution
    same, same_sd = P.kid(a, b, subsets=20, subset_size=100)
    shifted, _ = P.kid(a, _features(300, shift=0.3, seed=1), subsets=20, subset_size=100)
    assert abs(same) < 4 * same_sd + 1e-6  # unbiased: zero within its subset spread
    assert shifted > 50 * max(abs(same), same_sd)
    # the very same images: the cross term keeps the kernel's diagonal, which the unbiased self terms drop, so
    # KID is slightly negative (torchmetrics too), ~1/m of the kernel's diagonal excess, far below any shift
    itself = P.kid(a, a, subsets=5, subset_size=300)[0]
    assert -shifted / 10 < itself <= 0


class _Identity(nn.Module):
    """A 'feature extractor' handing torchmetrics the features we give it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_kid_matches_torchmetrics_on_the_same_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(120, d=32), _features(90, d=32, shift=0.05, seed=3)
    metric = KernelInceptionDistance(feature=_Identity(), subsets=7, subset_size=50)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    torch.manual_seed(11)  # torchmetrics draws its subsets from the global RNG, in the order ours are drawn
    ref_mean, ref_sd = metric.compute()
    mean, sd = P.kid(real, fake, subsets=7, subset_size=50, seed=11)
    assert mean == pytest.approx(float(ref_mean), rel=1e-5, abs=1e-9)
    assert sd == pytest.approx(float(ref_sd), rel=1e-4, abs=1e-9)


def test_fid_from_features_matches_the_metrics_module():
    from lab.metrics.fid import mean_cov, frechet_distance

    a, b = _features(200, d=16), _features(150, d=16, shift=0.1, seed=2)
    ours = P.fid(P.FeatureSet(a, "a"), P.FeatureSet(b, "b"))
    stats = [mean_cov(x.double().sum(0), x.double().T @ x.double(), x.shape[0]) for x in (a, b)]
    assert ours == pytest.approx(frechet_distance(*stats[0], *stats[1]), rel=1e-9)
    assert P.fid(P.FeatureSet(a, "a"), P.FeatureSet(a, "a")) == pytest.approx(0.0, abs=1e-6)


def test_normalized_floor_and_ceiling_arithmetic():
    assert P.normalized(30.0, 10.0, 110.0) == pytest.approx(0.2)
    assert P.normalized(10.0, 10.0, 110.0) == 0.0 and P.normalized(110.0, 10.0, 110.0) == 1.0
    assert P.normalized(5.0, 10.0, 110.0) == pytest.approx(-0.05)  # better than the floor: negative, kept
    assert P.normalized(50.0, 60.0, 60.0) is None and P.normalized(50.0, 70.0, 60.0) is None  # no scale
    assert P.normalized(float("nan"), 1.0, 2.0) is None
    main = {"fid": 40.0, "kid": 0.03, "kid_std": 0.002, "n": 300, "kid_subset_size": 300}
    floor = {"fid": 20.0, "kid": 0.001, "kid_std": 0.0005, "n": 300, "kid_subset_size": 300}
    ceiling = {"fid": 220.0, "kid": 0.251, "kid_std": 0.01, "n": 300, "kid_subset_size": 300}
    ref = {"split": "train", "count": 10000, "of": 60000}
    m = P.protocol_metrics("gfid", "kid", main, ref, floor=floor, ceiling=ceiling)
    assert m["gfid"] == 40.0 and m["kid"] == 0.03 and m["kid_std"] == 0.002
    assert (m["gfid_floor"], m["gfid_ceiling"], m["kid_floor"], m["kid_ceiling"]) == (20.0, 220.0, 0.001, 0.251)
    assert m["gfid_normalized"] == pytest.approx(0.1) and m["kid_normalized"] == pytest.approx(0.116)
    assert m["fid_reference"] == ref
    assert m["fid_note"].startswith("N=300 < 2048: FID biased upwards; compare KID")
    big = P.protocol_metrics("rfid", "rkid", {**main, "n": 5000}, ref, floor=floor)
    assert "fid_note" not in big and "rfid_normalized" not in big and big["rfid_floor"] == 20.0


def test_reference_subset_is_seeded_nested_and_whole_when_unlimited():
    a, b = P.reference_subset(1000, 100), P.reference_subset(1000, 100)
    assert torch.equal(a, b) and a.numel() == 100 and a.unique().numel() == 100
    assert torch.equal(P.reference_subset(1000, 300)[:100], a)  # a larger reference extends a smaller one
    assert torch.equal(P.reference_subset(50, None), torch.arange(50))
    assert torch.equal(P.reference_subset(50, 80), torch.arange(50))


def test_features_and_scores_are_cached_by_the_exact_images(tmp_path, monkeypatch):
    calls = []

    def fake_inception(images, **kw):
        calls.append(images.shape[0])
        return images.float().flatten(1)[:, :8] / 255 + 0.01 * torch.arange(8)

    monkeypatch.setattr(P, "fid_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(P, "inception_features", fake_inception)
    imgs = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref, info = P.reference(imgs, split="train", data="toy", limit=30)
    assert info == {"split": "train", "count": 30, "of": 40, "data": "toy"} and calls == [30]
    again, _ = P.reference(imgs, split="train", data="toy", limit=30)
    assert calls == [30] and torch.equal(again.features, ref.features) and again.key == ref.key  # from the cache
    floats = imgs[:12].float() / 127.5 - 1  # the same pixels as [-1, 1] floats: the same entry
    f1 = P.features_of(imgs[:12])
    f2 = P.features_of(floats)
    assert calls == [30, 12] and f1.key == f2.key
    other = imgs[:12].clone()
    other[0, 0, 0, 0] ^= 1  # one pixel differs: another entry
    assert P.features_of(other).key != f1.key and calls == [30, 12, 12]
    # a split's prefix: the floor at N = 5, then at N = 20, computes each image once, keyed like features_of
    p5 = P.prefix_features(imgs, 5)
    p20 = P.prefix_features(imgs, 20)
    assert calls[-2:] == [5, 15] and p20.key == P.images_key(imgs[:20]) and p5.key == P.images_key(imgs[:5])
    assert torch.equal(p20.features[:5], p5.features) and P.prefix_features(imgs, 12).key == f1.key
    calls.clear()
    s1 = P.cached_score(f1, ref, kid_subsets=3, kid_subset_size=10)
    s2 = P.cached_score(f1, ref, kid_subsets=3, kid_subset_size=10)
    assert s1 == s2 and len(list((tmp_path / "scores").glob("*.json"))) == 1 and calls == []
    assert set(s1) == {"fid", "kid", "kid_std", "n", "kid_subset_size"} and s1["n"] == 12


@pytest.mark.parametrize("quantizer", [{"name": "bsq", "bits": 8}, {"name": "vq", "codebook_size": 64, "kmeans_init": False}])
def test_random_code_images_decode_uniform_codes(quantizer):
    from lab.models.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer(quantizer=quantizer).eval()
    a = P.random_code_images(tok, 5, seed=0, batch_size=3)
    b = P.random_code_images(tok, 5, seed=0, batch_size=3)
    assert a.dtype == torch.uint8 and a.shape == (5, 3, 32, 32) and torch.equal(a, b)  # seeded: a cacheable key
    assert not torch.equal(a, P.random_code_images(tok, 5, seed=1))


def test_too_small_evaluations_are_refused():
    P.check_eval_size(0, 5)  # no FID: fine
    P.check_eval_size(300, 12)  # 12 images: allowed (flagged in fid_note)
    with pytest.raises(ConfigError, match="eval.fid_samples=300.*split of 7 images"):
        P.check_eval_size(300, 7)
    with pytest.raises(ConfigError, match="at least 10"):
        P.check_eval_size(4, 1000)
    assert P.fid_note(3000, 10000) is None
    assert "reference of 500" in P.fid_note(3000, 500)
    assert math.isfinite(P.kid(_features(12), _features(12, seed=1), subsets=2)[0])


@pytest.mark.parametrize("override, key", [("eval.fid_samples=5", "eval.fid_samples=5"),
                                           ("eval.fid_reference_limit=3", "eval.fid_reference_limit=3"),
                                           ("eval.kid_subsets=0", "eval.kid_subsets=0")])
def test_the_config_check_refuses_evaluations_too_small(override, key):
    from lab.config import load_experiment

    with pytest.raises(ConfigError, match=key):
        load_experiment("quickstart", [override])
    load_experiment("quickstart", ["eval.fid_samples=0", "eval.fid_reference_limit=null"])  # off / whole split: fine


def test_noise_study_writes_a_csv_and_report_from_cached_features(tmp_path, monkeypatch):
    """`python -m lab noise` at a tiny size (stand-in features: the statistics, the resampling and the files are
    under test, not Inception): one row per N, sd over resamples, the command and the machine in report.md."""
    import csv

    from lab.__main__ import main

    calls = []

    def fake_inception(images, **kw):
        calls.append(images.shape[0])
        return images.float().mean(1)[:, 8:24:4, 8:24:4].flatten(1) / 255  # 16 central pixels as "features"

    monkeypatch.setattr(P, "fid_cache_dir", lambda: tmp_path / "fid")
    monkeypatch.setattr(P, "inception_features", fake_inception)
    out = tmp_path / "noise"
    args = ["noise", "--data", "fashion_mnist", "--data-limit", "96", "--sizes", "10,20,40,500", "--resamples", "4",
            "--reference-limit", "64", "--kid-subsets", "5", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["lab", *args])  # what report.md quotes as the command
    main(args)
    assert calls == [64, 96]  # the reference and the pool (the largest N, capped at the split), once each
    rows = list(csv.DictReader(open(out / "fashion_mnist.csv")))
    assert [int(r["n"]) for r in rows] == [10, 20, 40] and {r["set"] for r in rows} == {"real (validation)"}
    fid = [float(r["fid_mean"]) for r in rows]
    assert all(float(r["fid_sd"]) >= 0 and int(r["resamples"]) == 4 for r in rows)
    assert fid[0] > fid[-1] > 0  # FID's small-N bias: larger at N = 10 than at N = 40
    text = (out / "report.md").read_text()
    assert "python -m lab noise --data fashion_mnist" in text and "| real (validation) | 20 | 4 |" in text
    main(args)  # again: every feature from the cache
    assert calls == [64, 96]


def test_a_checkouts_older_fid_cache_is_adopted_entry_by_entry(tmp_path, monkeypatch):
    """A user cache that already exists still gains the entries a checkout's .cache/fid has (and keeps its own)."""
    from lab.metrics import fid_protocol as P

    monkeypatch.delenv("BITLAB_CACHE", raising=False)
    monkeypatch.delenv("BITLAB_FID_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    legacy = tmp_path / "checkout" / "fid"
    (legacy / "features").mkdir(parents=True)
    (legacy / "features" / "prefix-abc.pt").write_bytes(b"old")
    monkeypatch.setattr(P, "cache_root", lambda: tmp_path / "checkout")
    d = tmp_path / "user" / "bitlab" / "fid" / P.extractor_id()
    (d / "features").mkdir(parents=True)
    (d / "features" / "own.pt").write_bytes(b"mine")
    P._adopt.cache_clear()
    assert P.fid_cache_dir() == d
    assert (d / "features" / "prefix-abc.pt").read_bytes() == b"old" and (d / "features" / "own.pt").read_bytes() == b"mine"
