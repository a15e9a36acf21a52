"""FSQ (index codes with a digits view), the per-dimension digits head and the masked-bit head (issue 25)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lab.core.registry import ConfigError
from lab.generation.correction import BitFlip, check_compatible
from lab.generation.sampling import SampleOptions, sample_codes
from lab.models.heads import BitwiseHead, DigitHead, build_head
from lab.models.masked_bits import MaskedBitsHead
from lab.quantizers import build_quantizer
from lab.quantizers.codes import digits_to_index, index_to_digits, pack_bits
from lab.quantizers.multiscale import MultiScaleQuantizer
from lab.models.transformer import Transformer

LEVELS = [[8, 5, 5, 5], [2, 3, 2], [7, 5, 5, 5, 5], [3]]


# ------------------------------------------------------------------------------------------------------ FSQ
@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_vocabulary_is_the_product_of_levels(levels):
    q = build_quantizer({"name": "fsq", "levels": levels}, dim=8)
    assert q.vocab_size == math.prod(levels) and 2 ** (q.bits - 1) < q.vocab_size <= 2**q.bits
    assert q.code_kind == "index"


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_index_digits_bijective(levels):
    V = math.prod(levels)
    idx = torch.arange(V)
    d = index_to_digits(idx, levels)
    assert d.shape == (V, len(levels)) and bool((d < torch.tensor(levels)).all()) and bool((d >= 0).all())
    assert len({tuple(r) for r in d.tolist()}) == V  # injective on [0, V): a bijection onto the digit grid
    assert torch.equal(digits_to_index(d, levels), idx)
    assert torch.equal(digits_to_index(unpack := index_to_digits(idx[:8], [2, 2, 2]), [2, 2, 2]), pack_bits(unpack))


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_round_trip_codes_latent_codes(levels):
    """Every code -> its point on the rounding grid -> rounded again by the library's FSQ -> the same code; and the
    quantizer's codes decode to exactly its z_q."""
    torch.manual_seed(0)
    q = build_quantizer({"name": "fsq", "levels": levels}, dim=8).eval()
    V, D = q.vocab_size, len(levels)
    digits = q.codes_to_digits(torch.arange(V))  # (V, D)
    grid = q._to_values(digits)  # (V, D): the code's values in [-1, 1]
    # a pre-image of every grid value under the library's bound-and-round (monotone per dimension), found on a line
    z = torch.linspace(-8, 8, 40001).unsqueeze(-1).expand(-1, D).contiguous()
    rounded = q.fsq.quantize(z)  # (N, D)
    pre = torch.stack([z[(rounded[:, i:i + 1] == grid[:, i]).float().argmax(0), i] for i in range(D)], -1)  # (V, D)
    assert torch.equal(q.fsq.quantize(pre), grid)
    assert torch.equal(q.digits_to_codes(q._to_digits(q.fsq.quantize(pre))), torch.arange(V))
    out = q(torch.randn(4, 8, 3, 3) * 2)
    torch.testing.assert_close(q.codes_to_latent(out.codes), out.z_q, atol=1e-5, rtol=1e-5)


def test_fsq_gradients_flow_straight_through():
    q = build_quantizer({"name": "fsq", "levels": [8, 5, 5, 5]}, dim=8).train()
    z = torch.randn(4, 8, 3, 3, requires_grad=True)
    out = q(z)
    out.z_q.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in q.project_in.parameters())


def test_fsq_stats_usage_and_level_entropy():
    q = build_quantizer({"name": "fsq", "levels": [4, 3]}, dim=2)
    out = q(torch.randn(64, 2, 8, 8) * 3)
    assert 0 < float(out.stats["codebook_usage"]) <= 1
    assert {"level_entropy", "level_entropy_0", "level_entropy_1"} <= set(out.stats)
    assert 0 < float(out.stats["level_entropy"]) <= 1 + 1e-6


def test_fsq_in_the_multiscale_tokenizer():
    torch.manual_seed(0)
    q = build_quantizer({"name": "fsq", "levels": [8, 5, 5, 5]}, dim=8)
    msq = MultiScaleQuantizer(q, dim=8, scales=(1, 2, 4)).train()
    f = torch.randn(2, 8, 4, 4)
    out = msq(f)
    assert msq.levels == (8, 5, 5, 5) and [tuple(c.shape) for c in out.codes] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    torch.testing.assert_close(msq.codes_to_latent(out.codes), out.f_hat, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("levels, words", [([], "empty"), ([1, 5], ">= 2"), ([4] * 32, "2\\^62")])
def test_fsq_bad_levels_are_value_errors(levels, words):
    with pytest.raises(ValueError, match=words):
        build_quantizer({"name": "fsq", "levels": levels}, dim=8)


def test_fsq_index_head_too_large_is_a_config_error_naming_the_alternatives():
    with pytest.raises(ConfigError, match="head.name=digits"):
        build_head({"name": "index"}, width=2048, code_kind="index", bits=27, vocab_size=8**9, levels=[8] * 9)


def test_bitflip_on_fsq_names_the_corrections_that_fit():
    with pytest.raises(ConfigError, match="quantizer 'fsq' gives indices; use correction.name=random_index"):
        check_compatible(BitFlip(), "index", "fsq")


# ------------------------------------------------------------------------------------------------ digits head
def test_digits_head_with_two_levels_equals_the_bitwise_loss():
    """A 2-way cross-entropy over logits [a, b] is the BCE of b - a (Infinity's Linear(C, 2d) form of IVC)."""
    torch.manual_seed(0)
    d = 6
    dh = DigitHead(width=8, code_kind="bits", bits=d, vocab_size=2**d)
    bh = BitwiseHead(width=8, code_kind="bits", bits=d, vocab_size=2**d)
    h = torch.randn(3, 5, 8)
    codes = torch.randint(0, 2, (3, 5, d)).float()
    two = dh(h)  # (B, L, d, 2)
    diff = two[..., 1] - two[..., 0]
    torch.testing.assert_close(dh.loss(h, codes, two), bh.loss(h, codes, diff), atol=1e-6, rtol=1e-6)
    assert torch.equal(dh.correct(two, codes), bh.correct(diff, codes))


def test_digits_head_on_fsq_predicts_each_dimension():
    levels = [8, 5, 5, 5]
    head = build_head({"name": "digits"}, width=8, code_kind="index", bits=10, vocab_size=1000, levels=levels)
    assert head(torch.randn(2, 3, 8)).shape == (2, 3, 4, 8)
    codes = torch.randint(0, 1000, (2, 3))
    assert torch.equal(head.to_codes(head.targets(codes)), codes)
    g = torch.Generator().manual_seed(0)
    s = head.sample(torch.randn(50, 7, 8) * 5, guide=None, temperature=1.0, top_k=0, top_p=1.0, generator=g)
    assert s.dtype == torch.int64 and int(s.min()) >= 0 and int(s.max()) < 1000
    assert bool((index_to_digits(s, levels) < torch.tensor(levels)).all())  # never an unused level slot
    # a logit of the unused slots is never the target: the loss is finite
    assert torch.isfinite(head.loss(torch.randn(2, 3, 8), codes)).all()


# ------------------------------------------------------------------------------------------------ masked bits
def masked(**kw) -> MaskedBitsHead:
    torch.manual_seed(0)
    head = MaskedBitsHead(width=16, code_kind="bits", bits=kw.pop("bits", 6), vocab_size=64, **kw)
    for p in head.mlp[-1].parameters():  # the MLP starts at zero (the bitwise head): perturb so the tests mean something
        p.data.normal_(0, 0.5)
    return head


def test_masked_bits_loss_with_one_hidden_bit_is_that_bit_only():
    head = masked()
    h = torch.randn(2, 4, 16)
    codes = torch.randint(0, 2, (2, 4, 6)).float()
    visible = torch.ones(2, 4, 6, dtype=torch.bool)
    visible[..., 3] = False
    loss = head.masked_loss(h, codes, visible)
    lg = head.logits_given(h, codes, visible)
    expect = F.binary_cross_entropy_with_logits(lg[..., 3], codes[..., 3], reduction="none")
    torch.testing.assert_close(loss, expect)
    other = codes.clone()  # the hidden bit's own value is never an input
    other[..., 3] = 1 - other[..., 3]
    torch.testing.assert_close(head.logits_given(h, other, visible), lg)


def test_masked_bits_training_masks_follow_the_schedule():
    head = masked(bits=16, mask_min=0.25, mask_max=0.5)
    vis = head.draw_visible((200, 10), torch.device("cpu"), torch.Generator().manual_seed(0))
    hidden = (~vis).sum(-1)
    assert int(hidden.min()) >= 4 and int(hidden.max()) <= 8
    cos = masked(bits=16, mask_schedule="cosine").draw_visible((200, 10), torch.device("cpu"))
    assert int((~cos).sum(-1).min()) >= 1  # always at least one bit to learn


def test_masked_bits_one_step_is_the_bitwise_sampler():
    """steps = 1, nothing visible: the draw of the bitwise head on the same logits, bit for bit, seeded."""
    head = masked(steps=1)
    h = torch.randn(3, 5, 16)
    bw = BitwiseHead(width=16, code_kind="bits", bits=6, vocab_size=64)
    kw = dict(temperature=1.0, top_k=0, top_p=0.9)
    a = head.sample(h, guide=None, generator=torch.Generator().manual_seed(3), **kw)
    b = head.sample(h, guide=None, generator=torch.Generator().manual_seed(3), **kw)
    bw.proj = None
    bw.forward = lambda x: head(x)  # the bitwise sampler over the head's logits from the state alone
    c = bw.sample(h, guide=None, generator=torch.Generator().manual_seed(3), **kw)
    assert a.shape == (3, 5, 6) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and torch.equal(a, c)


def test_masked_bits_with_d_steps_fixes_one_bit_per_round():
    head = masked(steps=6)
    assert [head.revealed_after(t) - head.revealed_after(t - 1) for t in range(1, 7)] == [1] * 6
    seen = []
    orig = head.logits_given

    def spy(h, bits, visible):
        seen.append(visible.sum(-1).clone())
        return orig(h, bits, visible)

    head.logits_given = spy
    out = head.sample(torch.randn(2, 3, 16), guide=None, temperature=1.0, top_k=0, top_p=1.0,
                      generator=torch.Generator().manual_seed(0))
    assert [int(v.unique()) for v in seen] == [0, 1, 2, 3, 4, 5]  # round t sees t-1 fixed bits of every token
    assert out.shape == (2, 3, 6) and set(out.unique().tolist()) <= {0.0, 1.0}


def test_masked_bits_greedy_rounds_follow_the_visible_bits():
    """Later rounds read the bits fixed earlier: a greedy 2-step sample differs from 1-step where the MLP
    (perturbed) makes the bits depend on each other, and is deterministic."""
    h = torch.randn(16, 8, 16)
    a = masked(steps=3).sample(h, guide=None, temperature=0, top_k=0, top_p=1.0, generator=None)
    b = masked(steps=3).sample(h, guide=None, temperature=0, top_k=0, top_p=1.0, generator=None)
    c = masked(steps=1).sample(h, guide=None, temperature=0, top_k=0, top_p=1.0, generator=None)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kw, words", [({"steps": 0}, "head.steps=0"), ({"steps": 7}, r"\[1, 6\]"),
                                       ({"mask_min": -0.1}, "mask_min"), ({"mask_max": 1.5}, "mask_max"),
                                       ({"mask_min": 0.8, "mask_max": 0.2}, "mask_min <= mask_max"),
                                       ({"mask_schedule": "linear"}, "uniform, cosine")])
def test_masked_bits_bad_settings_are_config_errors(kw, words):
    with pytest.raises(ConfigError, match=words):
        MaskedBitsHead(width=16, code_kind="bits", bits=6, vocab_size=64, **kw)


SCALES = (1, 2, 3)


@pytest.mark.parametrize("quant, head_name, order", [
    ({"name": "bsq", "bits": 6}, "masked_bits", "scale"), ({"name": "bsq", "bits": 6}, "masked_bits", "raster"),
    ({"name": "fsq", "levels": [4, 3, 3]}, "digits", "scale"), ({"name": "fsq", "levels": [4, 3, 3]}, "masked_bits", "scale"),
])
def test_kv_cached_sample_equals_uncached(quant, head_name, order):
    torch.manual_seed(0)
    msq = MultiScaleQuantizer(build_quantizer(quant, dim=8), dim=8, scales=SCALES).train()
    msq(torch.randn(8, 8, 3, 3))
    msq.eval()
    model = Transformer(latent_dim=8, scales=SCALES, num_classes=5, size="xs", width=32, heads=2, depth=2,
                        cond="class", order=order).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    node = {"name": head_name, **({"steps": 3} if head_name == "masked_bits" else {})}
    head = build_head(node, width=32, code_kind=msq.code_kind, bits=msq.bits, vocab_size=msq.vocab_size,
                      levels=msq.levels).eval()
    outs = []
    for use_cache in (True, False):
        opts = SampleOptions(guidance=2.0, temperature=1.0, top_p=0.9, seed=5, use_cache=use_cache)
        outs.append(sample_codes(model, head, msq, labels=torch.arange(3), batch_size=3, opts=opts))
    for a, b in zip(outs[0][0], outs[1][0]):
        assert torch.equal(a, b)
    torch.testing.assert_close(outs[0][1], outs[1][1])


# ------------------------------------------------------------------------------------------------ config and runs
def _generator_cfg(tmp_path, *extra: str):
    from lab.config import load_experiment

    return load_experiment("generator/c2i_fashion", ["preset=smoke", f"runs_dir={tmp_path / 'runs'}", *extra])


@pytest.mark.parametrize("extra, words", [
    (["head={name: masked_bits, steps: 17}"], r"head.steps=17.*\[1, 16\]"),
    (["head={name: masked_bits, mask_max: 1.5}"], "mask_max"),
    (["quantizer={name: fsq, levels: [8, 5, 5, 5]}", "correction.name=bitflip"], "quantizer 'fsq' gives indices"),
    (["quantizer={name: fsq, levels: [16, 16, 16, 16, 16, 16]}", "head.name=index", "correction.name=none"],
     "head.name=digits"),
])
def test_bad_generator_settings_are_refused_by_the_preflight(tmp_path, extra, words):
    from lab.stages.generator import preflight

    with pytest.raises(ConfigError, match=words):
        preflight(_generator_cfg(tmp_path, *extra))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("levels", [[], [1, 4]])
def test_bad_fsq_levels_are_refused_when_the_config_loads(tmp_path, levels):
    with pytest.raises(ConfigError, match="Invalid quantizer"):
        _generator_cfg(tmp_path, f"quantizer={{name: fsq, levels: {levels}}}")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["head={name: masked_bits, steps: 4}", "correction.name=bitflip"],  # with bitwise self-correction
    ["quantizer={name: fsq, levels: [8, 5, 5, 5]}", "head.name=digits", "correction.name=random_index"],
])
def test_new_heads_run_at_smoke_scale(tmp_path, extra):
    import json

    from lab.stages.run import run_experiment

    run_dir, _ = run_experiment(_generator_cfg(tmp_path, *extra))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val_loss"] == saved["val_loss"] and "gfid" in saved
