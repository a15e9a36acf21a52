"""Generator pieces without data: no leak across scales, KV cache == recompute, CFG, heads, corrections."""
from __future__ import annotations


import pytest
import torch

from lab.quantizers.codes import pack_bits, unpack_bits
from lab.generation.correction import CORRECTIONS, BitFlip, NoCorrection, RandomIndex, teacher_forcing
from lab.models.heads import HEADS, BitwiseHead, IndexHead, build_head, sample_categorical
from lab.quantizers import build_quantizer
from lab.quantizers.multiscale import MultiScaleQuantizer
from lab.core.registry import ConfigError
from lab.generation.sampling import SampleOptions, make_cond, sample_codes
from lab.models.transformer import Transformer

SCALES = (1, 2, 3, 4)
QUANT = {"bsq": {"name": "bsq", "bits": 8}, "lfq": {"name": "lfq", "bits": 8},
         "vq": {"name": "vq", "codebook_size": 32, "kmeans_init": False}}


def make_msq(kind: str, dim: int = 8) -> MultiScaleQuantizer:
    torch.manual_seed(0)
    msq = MultiScaleQuantizer(build_quantizer(QUANT[kind], dim=dim), dim=dim, scales=SCALES)
    msq.train()
    msq(torch.randn(16, dim, 4, 4))  # initialise gains / codebook from data
    return msq.eval()


def make_model(cond="class", order="scale", dim=8) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(latent_dim=dim, scales=SCALES, num_classes=5, size="xs", width=32, heads=2, depth=2,
                    cond=cond, order=order).eval()
    for p in m.parameters():  # adaLN-Zero starts every block as identity: perturb so the test means something
        p.data.add_(torch.randn_like(p) * 0.05)
    return m


def _text(B, T=5):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(B, T, 384, generator=g), mask


def _cond(model, B):
    if model.cond_kind == "text":
        return model.condition(text=_text(B))
    return model.condition(labels=torch.arange(B) % 5, batch_size=B)


@pytest.mark.parametrize("cond", ["class", "text", "none"])
def test_no_information_leaks_across_scales(cond):
    """Changing the inputs of scale k+1 leaves the outputs of scales <= k unchanged, exactly."""
    model = make_model(cond)
    B, L = 3, model.L
    x = torch.randn(B, L - 1, 8)
    c = _cond(model, B)
    h = model(x, c)
    starts = torch.tensor([0] + [s * s for s in SCALES]).cumsum(0)  # scale k occupies [starts[k], starts[k+1])
    for k in range(1, len(SCALES)):
        x2 = x.clone()
        a = int(starts[k]) - 1  # first input token of scale k (after the start token)
        x2[:, a:] = torch.randn_like(x2[:, a:])  # scale k and everything after it
        h2 = model(x2, c)
        assert torch.equal(h[:, : int(starts[k])], h2[:, : int(starts[k])]), f"scale {k} leaked backwards"
        assert not torch.allclose(h[:, int(starts[k]) :], h2[:, int(starts[k]) :])


def test_raster_is_strictly_causal():
    model = make_model(order="raster")
    x = torch.randn(2, model.L - 1, 8)
    c = _cond(model, 2)
    h = model(x, c)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    h2 = model(x2, c)
    assert torch.equal(h[:, :11], h2[:, :11]) and not torch.allclose(h[:, 11:], h2[:, 11:])


@pytest.mark.parametrize("kind, head_name, order, cond",
                         [("bsq", "bitwise", "scale", "class"), ("bsq", "index", "scale", "text"),
                          ("vq", "index", "scale", "none"), ("vq", "bitwise", "raster", "class"),
                          ("lfq", "bitwise", "raster", "text")])
def test_kv_cache_sampling_equals_uncached(kind, head_name, order, cond):
    msq = make_msq(kind)
    model = make_model(cond, order)
    head = build_head({"name": head_name}, width=model.width, code_kind=msq.code_kind, bits=msq.bits,
                      vocab_size=getattr(msq.quantizer, "vocab_size", 2**msq.bits)).eval()
    kw = dict(labels=torch.arange(3) % 5) if cond == "class" else dict(text=_text(3)) if cond == "text" else {}
    outs = []
    for use_cache in (True, False):
        opts = SampleOptions(guidance=2.5, temperature=1.0, top_p=0.9, seed=7, use_cache=use_cache)
        codes, f_hat = sample_codes(model, head, msq, batch_size=3, opts=opts, **kw)
        outs.append((codes, f_hat))
    for a, b in zip(outs[0][0], outs[1][0]):
        assert torch.equal(a, b)
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_cfg_one_equals_conditional_logits():
    from lab.generation.sampling import _guide

    model = make_model("class")
    B = 4
    x = torch.randn(B, model.L - 1, 8)
    both = make_cond(model, labels=torch.arange(B), batch_size=B, guided=True)
    h = model(torch.cat([x, x]), both)
    cond_only = model(x, model.condition(labels=torch.arange(B)))
    torch.testing.assert_close(_guide(h, B, 1.0, True), cond_only, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_guide(h, B, 3.0, True), cond_only)


def test_index_head_refuses_absurd_vocabularies_with_the_counts():
    with pytest.raises(ConfigError, match=r"2\^32.*bitwise head needs"):
        build_head({"name": "index"}, width=2048, code_kind="bits", bits=32, vocab_size=2**32)
    h = build_head({"name": "bitwise"}, width=2048, code_kind="bits", bits=32, vocab_size=2**32)
    assert sum(p.numel() for p in h.parameters()) == 2048 * 32 + 32


def test_heads_convert_labels_exactly():
    bits = torch.randint(0, 2, (2, 5, 6)).float()
    ih = IndexHead(width=4, code_kind="bits", bits=6, vocab_size=64)
    assert torch.equal(ih.targets(bits), pack_bits(bits))
    idx = torch.randint(0, 40, (2, 5))
    bh = BitwiseHead(width=4, code_kind="index", bits=6, vocab_size=40)
    assert torch.equal(bh.targets(idx), unpack_bits(idx, 6))
    assert torch.equal(pack_bits(bh.targets(idx)), idx)


def test_sampling_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(2000, 1)
    assert torch.equal(sample_categorical(logits, temperature=0), torch.full((2000,), 2))
    s = sample_categorical(logits, top_k=2, generator=g)
    assert set(s.unique().tolist()) <= {2, 3}
    s = sample_categorical(logits, top_p=0.5, generator=g)
    assert set(s.unique().tolist()) == {2}


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_flip_rate_matches_p(p):
    codes = torch.randint(0, 2, (64, 8, 8, 16)).float()
    flipped = BitFlip(p_max=p).corrupt(codes, 0, "bits", 2**16, torch.Generator().manual_seed(0), p=p)
    rate = (flipped != codes).float().mean().item()
    n = codes.numel()
    assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5
    rates = [BitFlip(p_max=p).draw_p(torch.Generator().manual_seed(i)) for i in range(400)]
    assert min(rates) >= 0 and max(rates) <= p + 1e-9
    assert abs(sum(rates) / len(rates) - p / 2) < 0.1 * p + 0.01  # uniform on {0, .., p_max}


def test_random_index_rate():
    codes = torch.randint(0, 4096, (64, 8, 8))
    out = RandomIndex(p_max=0.2).corrupt(codes, 0, "index", 4096, torch.Generator().manual_seed(0), p=0.2)
    assert abs((out != codes).float().mean().item() - 0.2 * (1 - 1 / 4096)) < 0.02


@pytest.mark.parametrize("kind, strategy", [("bsq", BitFlip), ("lfq", BitFlip), ("vq", RandomIndex)])
def test_requantized_labels_correct_toward_the_clean_features(kind, strategy):
    """Infinity's point: after scale 1 is corrupted, re-quantized labels for the later scales bring the
    reconstruction closer to the clean features than keeping the clean labels does."""
    msq = make_msq(kind)
    f = torch.randn(64, 8, 4, 4)
    errs = {}
    for requantize in (True, False):
        strat = strategy(p_max=0.3, requantize=requantize, scales=[1])
        strat.draw_p = lambda g: 0.3
        tf = teacher_forcing(msq, f, strat, generator=torch.Generator().manual_seed(0))  # same flips both times
        errs[requantize] = (f - tf.f_hat).pow(2).mean().item()
    clean = teacher_forcing(msq, f, NoCorrection())
    err_clean = (f - clean.f_hat).pow(2).mean().item()
    assert errs[True] < errs[False]
    assert err_clean < errs[False]


@pytest.mark.parametrize("kind", ["bsq", "vq"])
def test_without_requantize_labels_equal_clean(kind):
    msq = make_msq(kind)
    f = torch.randn(8, 8, 4, 4)
    strat = (BitFlip if kind == "bsq" else RandomIndex)(p_max=0.3, requantize=False)
    strat.draw_p = lambda g: 0.3
    tf = teacher_forcing(msq, f, strat)
    clean = teacher_forcing(msq, f, NoCorrection())
    for a, b in zip(tf.labels, clean.labels):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(tf.inputs, clean.inputs))  # the inputs were corrupted


def test_registries():
    assert set(HEADS) == {"index", "bitwise", "digits", "masked_bits"}
    assert {"none", "bitflip", "random_index"} <= set(CORRECTIONS)
