"""The typed views of a config (lab/core/settings.py) built from its nodes: what the stages hand to the layers below
them, so that nothing there reads a config by key. The YAML and every recorded config.yaml keep their shape."""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Mapping

from lab.core.registry import ConfigError, to_dict
from lab.core.settings import (EvalSettings, GeneratorLossSettings, LoaderSettings, LossSettings, OptimSettings,
                               Placement, SampleSettings, Sections, TokenizerTrainSettings)


def _section(kind: type, node: Any, where: str, **fallback: Any):
    """One fixed-key node as its dataclass (lab/core/settings.py); ``fallback``: values for keys that configs recorded
    by earlier versions lack."""
    node = {**fallback, **(to_dict(node) or {})}
    values = {}
    for f in fields(kind):
        if f.name in node:
            v = node[f.name]
            values[f.name] = tuple(v) if isinstance(v, list) else v
        elif f.default is MISSING:
            raise ConfigError(f"The config has no {where}.{f.name} (base.yaml sets it); a config.yaml or checkpoint "
                              "written by another version? Add the key.")
    return kind(**values)


def sections(cfg: Mapping) -> Sections:
    """The fixed-key sections of a validated config (or of a checkpoint's recorded one) as frozen dataclasses: what
    the stages hand to the layers below them, so that nothing there reads a config by key."""
    from lab.metrics.fid_protocol import DEFAULTS  # (the protocol's own defaults, for configs recorded before them)

    loss = _section(LossSettings, cfg["loss"], "loss")
    return Sections(
        optim=_section(OptimSettings, cfg["optim"], "optim"),
        loss=loss,
        loader=loader_settings(cfg["loader"]),
        # (a 0.1 tokenizer checkpoint: no eval node, its LPIPS reported at loss.lpips_size)
        eval=(_section(EvalSettings, cfg["eval"], "eval", **DEFAULTS, lpips_size=loss.lpips_size, label_noise=[])
              if cfg.get("eval") is not None else None),
        sample=_section(SampleSettings, cfg["sample"], "sample") if cfg.get("sample") is not None else None,
        generator_loss=(_section(GeneratorLossSettings, cfg["generator_loss"], "generator_loss")
                        if cfg.get("generator_loss") is not None else None),
        tokenizer_train=(_section(TokenizerTrainSettings, cfg["tokenizer_train"], "tokenizer_train")
                         if cfg.get("tokenizer_train") is not None else None),
    )


def loader_settings(node: Any) -> LoaderSettings:
    """The ``loader:`` node (configs recorded before ``global_batch_size`` / ``num_workers`` lack them)."""
    return _section(LoaderSettings, node, "loader", global_batch_size=None, num_workers=0)


def placement(trainer: Any) -> Placement:
    """The ``trainer:`` keys that decide where a run trains and in what precision; the node is Lightning's open
    keyword arguments, so a key it lacks (or sets to null) takes the dataclass's default, which is Lightning's."""
    node = to_dict(trainer) or {}
    names = {f.name for f in fields(Placement)}
    return Placement(**{k: tuple(v) if isinstance(v, list) else v for k, v in node.items() if k in names and v is not None})
