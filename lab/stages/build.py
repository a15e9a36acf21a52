"""Where a config becomes components: the stages build the tokenizer, the transformer, the head and the correction
here, once, and hand them with the config's typed sections (lab/config/typed.py ``sections``) to the LightningModules,
which read no config. Also the way back: a checkpoint's recorded config (``hyper_parameters["cfg"]``) rebuilds its
module through the same functions (lab/stages/generator.py ``load_tokenizer``, ``load_generator``)."""
from __future__ import annotations

from typing import Any, Mapping

from lab.config import sections
from lab.core.registry import build, to_dict
from lab.generation.correction import CORRECTIONS, check_compatible
from lab.models.heads import build_head
from lab.models.tokenizer import Tokenizer
from lab.models.transformer import Transformer
from lab.train.generator import GeneratorModule
from lab.train.modules import TokenizerModule


def build_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer (its quantizer inside) of ``cfg``'s ``quantizer:`` and ``tokenizer:`` nodes."""
    return Tokenizer(quantizer=to_dict(cfg["quantizer"]), **to_dict(cfg["tokenizer"]))


def tokenizer_module(cfg: Mapping[str, Any]) -> TokenizerModule:
    """The tokenizer stage's LightningModule for ``cfg`` (a validated config or a checkpoint's recorded one)."""
    record = to_dict(cfg)
    tok = build_tokenizer(record)
    tok.check_image_size(record["loader"]["image_size"])
    s = sections(record)
    return TokenizerModule(tok, optim=s.optim, loss=s.loss, record=record,
                           eval_lpips_size=s.eval.lpips_size if s.eval is not None else s.loss.lpips_size)


def generator_module(cfg: Mapping[str, Any], tokenizer: Tokenizer, num_classes: int) -> GeneratorModule:
    """The generator stage's LightningModule on the frozen ``tokenizer``: the transformer, the head (fitted to the
    tokenizer's codes) and the self-correction, built in this order (the order of their random initialisation)."""
    record = to_dict(cfg)
    msq = tokenizer.msq
    model = Transformer(latent_dim=tokenizer.latent_dim, scales=msq.scales, num_classes=num_classes,
                        **record["generator"])
    head = build_head(record["head"], width=model.width, code_kind=msq.code_kind, bits=msq.bits,
                      vocab_size=msq.vocab_size, levels=msq.levels)
    correction = build(CORRECTIONS, record["correction"], "correction")
    check_compatible(correction, msq.code_kind, str(record["quantizer"]["name"]))
    s = sections(record)
    return GeneratorModule(tokenizer, model, head, correction, optim=s.optim, sample=s.sample,
                           scale_reweight=bool(s.generator_loss.scale_reweight), num_classes=num_classes,
                           record=record)
