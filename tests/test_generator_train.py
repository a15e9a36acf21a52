"""Every quantizer x head x correction combination trains: finite loss that goes down."""
from __future__ import annotations

import itertools

import pytest
import torch

from lab.config import load_experiment, to_dict
from lab.train.generator import GeneratorModule
from lab.stages.build import generator_module
from lab.core.registry import ConfigError
from lab.models.tokenizer import Tokenizer

QUANTIZERS = {"bsq": {"name": "bsq", "bits": 8}, "lfq": {"name": "lfq", "bits": 8},
              "vq": {"name": "vq", "codebook_size": 256, "kmeans_init": False},
              "fsq": {"name": "fsq", "levels": [4, 4, 4, 4]}}
CORRECTIONS = {"none": {"name": "none"},
               "flip": {"name": "bitflip", "p_max": 0.2, "requantize": False},
               "bsc": {"name": "bitflip", "p_max": 0.2, "requantize": True},
               "random_index": {"name": "random_index", "p_max": 0.2}}
COMBOS = [(q, h, c) for q, h, c in itertools.product(QUANTIZERS, ("index", "bitwise"), CORRECTIONS)
          if not (q in ("vq", "fsq") and c in ("flip", "bsc"))]
# the heads of issue 25 on every quantizer, each with a correction that fits (not the whole product: CI time)
COMBOS += [("bsq", "masked_bits", "bsc"), ("lfq", "masked_bits", "none"), ("vq", "masked_bits", "random_index"),
           ("fsq", "masked_bits", "none"), ("fsq", "digits", "random_index"), ("bsq", "digits", "bsc"),
           ("vq", "digits", "none")]


def build(q: str, head: str, corr: str, cond: str = "class", order: str = "scale") -> GeneratorModule:
    cfg = to_dict(load_experiment("generator/c2i_fashion", ["preset=smoke"]))
    cfg["quantizer"] = QUANTIZERS[q]
    cfg["head"] = {"name": head}
    cfg["correction"] = CORRECTIONS[corr]
    cfg["generator"] = {"size": "xs", "width": 64, "depth": 2, "heads": 2, "cond": cond, "order": order}
    torch.manual_seed(0)
    tok = Tokenizer(quantizer=cfg["quantizer"], **cfg["tokenizer"])
    tok.train()
    with torch.no_grad():
        tok(torch.rand(16, 3, 32, 32) * 2 - 1)  # data-initialise gains / codebook like a trained tokenizer
    return generator_module(cfg, tok, num_classes=10)


def test_bitflip_on_index_codes_is_refused():
    with pytest.raises(ConfigError, match="random_index"):
        build("vq", "index", "bsc")


@pytest.mark.slow
@pytest.mark.parametrize("q, head, corr", COMBOS)
def test_every_combination_trains(q, head, corr):
    m = build(q, head, corr)
    opt = torch.optim.AdamW(list(m.model.parameters()) + list(m.head.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(16, 3, 32, 32, generator=g) * 2 - 1, "label": torch.arange(16) % 10,
             "caption": [""] * 16, "index": torch.arange(16)}
    m.features = {"train": m.tokenizer.encode(batch["image"]).detach()}
    m.train()
    losses = []
    for step in range(15):
        torch.manual_seed(step)
        loss = m.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(l == l and abs(l) < float("inf") for l in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    # the frozen tokenizer got no gradient and stayed in eval mode
    assert all(p.grad is None for p in m.tokenizer.parameters())
    assert not m.tokenizer.training


@pytest.mark.parametrize("cond, order", [("text", "scale"), ("none", "raster")])
def test_other_conditionings_and_raster_train(cond, order):
    m = build("bsq", "bitwise", "none", cond=cond, order=order)
    opt = torch.optim.AdamW(list(m.model.parameters()) + list(m.head.parameters()), lr=3e-3)
    B = 8
    batch = {"image": torch.rand(B, 3, 32, 32) * 2 - 1, "label": torch.full((B,), -1), "caption": ["red apple"] * B,
             "index": torch.arange(B)}
    m.features = {"train": m.tokenizer.encode(batch["image"]).detach()}
    if cond == "text":
        m.text = {"train": (torch.randn(B, 4, 384), torch.ones(B, 4, dtype=torch.bool))}
    losses = []
    for step in range(20):
        loss = m.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_tokenizer_stage_precision_and_its_cache_key():
    """tokenizer_train.precision sets the tokenizer stage's precision apart from the generator's; a tokenizer
    trained at another precision is another cache entry, and fp32 entries keep their earlier keys."""
    from lab.config import load_experiment
    from lab.stages.generator import tokenizer_config

    def tcfg(*over):
        return tokenizer_config(load_experiment("generator/c2i_fashion", list(over)))

    fp32 = tcfg("trainer.precision=32-true", "tokenizer_train.precision=null")
    mixed_gen = tcfg("trainer.precision=bf16-mixed", "tokenizer_train.precision=32-true")
    mixed_both = tcfg("trainer.precision=bf16-mixed", "tokenizer_train.precision=null")
    assert fp32["trainer"]["precision"] == mixed_gen["trainer"]["precision"] == "32-true"
    assert mixed_both["trainer"]["precision"] == "bf16-mixed"
    assert fp32["name"] == mixed_gen["name"] != mixed_both["name"]
