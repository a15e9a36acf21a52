"""Every registry entry provides its Protocol, and the one compatibility rule of corrections holds in every
place a run can reach it."""
from __future__ import annotations

import pytest
import torch

from lab.core.registry import ConfigError
from lab.generation.correction import CORRECTIONS, BitFlip, check_compatible
from lab.models.heads import HEADS, Head, build_head
from lab.quantizers import QUANTIZERS, Quantizer, build_quantizer

SMALL = {"vq": {"codebook_size": 64}, "lfq": {"bits": 6}, "bsq": {"bits": 6}, "fsq": {"levels": [4, 3, 5]}}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_quantizer_is_a_quantizer(name):
    q = build_quantizer({"name": name, **SMALL.get(name, {})}, dim=8)
    assert isinstance(q, Quantizer)
    assert q.code_kind in ("index", "bits") and 2 ** q.bits >= q.vocab_size >= 2
    out = q(torch.randn(2, 8, 3, 3))
    assert torch.allclose(q.codes_to_latent(out.codes), out.z_q, atol=1e-5)


def test_what_the_multi_scale_quantizer_uses_of_a_quantizer_is_declared():
    """MultiScaleQuantizer touches a quantizer only through ``Quantizer`` and the optional ``SyncsBatchStatistics``;
    BSQ has the latter, VQ not."""
    import ast
    import inspect

    from lab.quantizers import base, multiscale

    declared = {"code_kind", "bits", "vocab_size", "codes_to_latent", "defer_sync", "diversity_loss"}
    tree = ast.parse(inspect.getsource(multiscale))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "quantizer" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used and used <= declared, f"undeclared: {used - declared}"
    assert isinstance(build_quantizer({"name": "bsq", "bits": 6}, dim=8), base.SyncsBatchStatistics)
    assert not isinstance(build_quantizer({"name": "vq", "codebook_size": 64}, dim=8), base.SyncsBatchStatistics)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("code_kind, levels", [("index", None), ("bits", None), ("index", [2, 4, 2])])
def test_every_head_is_a_head_for_every_code_kind(name, code_kind, levels):
    """Index codes, bit codes and FSQ's index codes with their digit levels (a vocabulary of 16 each)."""
    head = build_head({"name": name}, width=16, code_kind=code_kind, bits=4, vocab_size=16, levels=levels)
    assert isinstance(head, Head) and head.loss_name
    h = torch.randn(2, 5, 16)
    logits = head(h)
    codes = head.sample(h, guide=None, temperature=1.0, top_k=0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    expect = (2, 5) if code_kind == "index" else (2, 5, 4)
    assert tuple(codes.shape) == expect
    assert head.loss(h, codes).shape == head.loss(h, codes, logits).shape == (2, 5)
    assert head.correct(logits, codes).shape == head.bit_agreement(logits, codes).shape == (2, 5)
    # guidance: the head takes 2B rows and returns the B guided ones
    guide = lambda lg: 2 * lg[:2] - lg[2:]  # noqa: E731
    guided = head.sample(torch.cat([h, h]), guide=guide, temperature=0, top_k=0, top_p=1.0, generator=None)
    assert torch.equal(guided, head.sample(h, guide=None, temperature=0, top_k=0, top_p=1.0, generator=None))


@pytest.mark.parametrize("name", sorted(CORRECTIONS))
def test_every_correction_declares_the_code_kinds_it_takes(name):
    kinds = CORRECTIONS[name].code_kinds
    assert kinds and set(kinds) <= {"index", "bits"}


def test_bitflip_on_index_codes_is_one_config_error_naming_the_alternative():
    with pytest.raises(ConfigError, match=r"bitflip needs bit codes, but quantizer 'vq' gives indices; use correction.name=random_index"):
        check_compatible(BitFlip(), "index", "vq")
    with pytest.raises(ConfigError, match="random_index"):  # the strategy itself refuses, with the same words
        BitFlip().corrupt(torch.zeros(2, 3, 3, dtype=torch.long), 0, "index", 16)
    check_compatible(BitFlip(), "bits", "bsq")  # and accepts bit codes
