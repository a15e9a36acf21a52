"""Configuration: ``experiments/base.yaml`` <- ``experiments/NAME.yaml`` <- preset <- command-line dotlist.

Struct mode at the root, so a mistyped key is an error and never a new key. Component nodes
(``quantizer:``, ``head:``, ``data:`` ...) are open dicts of keyword arguments: they are checked against the
constructor's signature instead, so their defaults live in exactly one place. Every problem raises
``ConfigError`` with one paragraph naming the bad key or file and the valid choices.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from lab.core.registry import ConfigError, check_kwargs, suggest, to_dict, validate
from lab.config.checks import check_ranges, refuse_unused
from lab.config.migrate import upgrade_renamed
from lab.config.runs import default_run_name
from lab.config.typed import loader_settings, placement, sections  # noqa: F401 - sections: the stages' entry
from lab.runtime.files import ROOT
from lab.runtime.naming import check_run_name, check_tags
from lab.runtime.safety import check_experiment_name, check_seeds
from lab.runtime.tracking import check_loggers

EXPERIMENTS = ROOT / "experiments"
PRESETS = ("cpu", "smoke", "gpu")
STAGES = ("tokenizer", "generator")

# Nodes whose keys are keyword arguments of some constructor (checked against its signature) and
# nodes that hold free-form maps. Every other key must already exist in base.yaml.
OPEN_NODES = ("data", "quantizer", "tokenizer", "generator", "head", "correction", "trainer", "presets", "sweep", "report")


def available_experiments() -> list[str]:
    return sorted(
        str(p.relative_to(EXPERIMENTS).with_suffix(""))
        for p in EXPERIMENTS.rglob("*.yaml")
        if p.name != "base.yaml"
    )


def header_comment(name: str) -> list[str]:
    """The YAML's leading comment lines, without the '#'."""
    lines = []
    # looked up at call time: tests (and tools) point EXPERIMENTS at another folder
    for line in (EXPERIMENTS / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML file names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (plain YAML keeps the last, silently)."""
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # the parent class reports unhashable keys
            if key in seen:
                raise DuplicateKeyError(f"'{key}' at line {line} repeats the '{key}' of line {seen[key]}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    """YAML -> dict, with the line number of a syntax error."""
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as e:
        raise ConfigError(f"Duplicate key in {path}: {e}. YAML would silently keep the last value; keep one.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"Malformed YAML in {path}{where}: {problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}.")
    return data


def _check_known(base: Mapping, update: Mapping, source: str, prefix: str = "") -> None:
    """Every key of ``update`` must exist in ``base`` unless it sits inside an open node; types must match."""
    for key, value in update.items():
        full = f"{prefix}{key}"
        top = full.split(".")[0]
        if top in OPEN_NODES:
            if top == "presets" and prefix == "" and isinstance(value, Mapping):
                for preset, sub in value.items():
                    if preset not in PRESETS:
                        raise ConfigError(f"Unknown preset '{preset}' in {source}.{suggest(str(preset), list(PRESETS))}")
                    if isinstance(sub, Mapping):
                        _check_known(base, sub, f"{source} (presets.{preset})")
            continue
        if key not in base:
            raise ConfigError(f"Unknown key '{full}' in {source}.{suggest(str(key), [str(k) for k in base])}")
        old = base[key]
        if isinstance(old, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"Wrong type for '{full}' in {source}: expected a mapping, got {value!r}.")
            _check_known(old, value, source, full + ".")
        elif old is not None and value is not None and not _same_kind(old, value):
            raise ConfigError(
                f"Wrong type for '{full}' in {source}: expected {type(old).__name__} (like {old!r}), got {type(value).__name__} {value!r}."
            )


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    return isinstance(new, type(old))


COMPONENT_KEYS = ("data", "quantizer", "head", "correction")


def merge(base: dict, update: Mapping) -> dict:
    """Recursive dict merge; a component node whose ``name`` changes is replaced, not merged, so the
    keywords of the old component do not leak into the new one."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if (
            k in COMPONENT_KEYS and isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            and "name" in v and v["name"] != out[k].get("name")
        ):
            out[k] = copy.deepcopy(dict(v))
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(overrides: Iterable[str]) -> dict:
    overrides = list(overrides)
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"Command-line override '{o}' is not of the form key=value (e.g. trainer.max_steps=200).")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(overrides), resolve=False)
    except Exception as e:  # omegaconf grammar errors
        raise ConfigError(f"Could not parse the overrides {overrides}: {e}") from None


def _validators() -> dict[str, tuple[Callable[[Any], None]]]:
    """Checks of the open component nodes against their constructors (imported lazily: config is light)."""
    import pytorch_lightning as pl

    from lab.data import datasets as data

    from lab.models import tokenizer

    checks = {
        "quantizer": _check_quantizer,
        "data": lambda n: validate(data.DATASETS, n, "data"),
        "tokenizer": lambda n: check_kwargs(tokenizer.Tokenizer, n, "tokenizer", injected=("quantizer",)),
        "trainer": lambda n: check_kwargs(pl.Trainer, n, "trainer"),
        "logger": _check_loggers,
    }
    from lab.generation import correction
    from lab.models import heads
    from lab.models import transformer

    checks["head"] = lambda n: validate(heads.HEADS, n, "head", injected=heads.INJECTED)
    checks["correction"] = lambda n: validate(correction.CORRECTIONS, n, "correction")
    checks["generator"] = lambda n: check_kwargs(transformer.Transformer, n, "generator", injected=transformer.INJECTED)
    return checks


@functools.cache
def _constructors() -> dict[str, Callable[[Mapping[str, Any]], tuple[Callable, tuple[str, ...]] | None]]:
    """node key -> (the node -> (its constructor, the keywords the code injects) or None): the open component nodes
    whose keyword defaults live in a constructor (imported lazily: config is light)."""
    from lab import quantizers
    from lab.data import datasets as data
    from lab.generation import correction
    from lab.models import heads, tokenizer, transformer

    def named(registry: Mapping[str, Callable], injected: tuple[str, ...] = ()):
        return lambda n: (registry[n["name"]], injected) if n.get("name") in registry else None

    return {"quantizer": named(quantizers.QUANTIZERS, ("dim",)), "data": named(data.DATASETS),
            "head": named(heads.HEADS, heads.INJECTED), "correction": named(correction.CORRECTIONS),
            "tokenizer": lambda n: (tokenizer.Tokenizer, ("quantizer",)),
            "generator": lambda n: (transformer.Transformer, transformer.INJECTED)}


def with_defaults(cfg: Mapping[str, Any]) -> dict:
    """A plain copy of a config whose component nodes (quantizer, data, head, correction, tokenizer, generator) also
    carry every constructor keyword they leave out, at its default. Two configs that differ only in writing a default
    out (a sweep axis ``generator.order: [scale, raster]`` gives its ``scale`` point ``order: scale``; a suite
    without that axis leaves the key out) then compare equal. A node whose name no registry knows is left as it is."""
    import json

    out = json.loads(json.dumps(to_dict(dict(cfg)), default=str))
    for key, find in _constructors().items():
        node = out.get(key)
        found = find(node) if isinstance(node, dict) else None
        if found is not None:
            for name, value in _defaults(*found).items():
                node.setdefault(name, json.loads(value))
    return out


@functools.cache
def _defaults(ctor: Callable, injected: tuple[str, ...]) -> dict[str, str]:
    """{keyword: its default as JSON} of a constructor, the injected keywords aside."""
    import inspect
    import json

    from lab.core.registry import signature_params

    return {name: json.dumps(p.default, default=str) for name, p in signature_params(ctor).items()
            if name not in injected and p.default is not inspect.Parameter.empty}


def _check_loggers(names: Any) -> None:
    check_loggers(to_dict(names))


def _check_quantizer(node: Mapping[str, Any]) -> None:
    """Build the node on the meta device: the registry's name and keyword checks, then the constructor's own range
    checks (bits, codebook size), so an impossible quantizer is a config error before any run directory exists,
    and nothing is allocated. (The range checks do not depend on the latent width, hence dim=16.)"""
    import torch

    from lab import quantizers

    try:
        with torch.device("meta"):
            quantizers.build_quantizer(dict(node), dim=16)
    except ValueError as e:
        raise ConfigError(f"Invalid quantizer {dict(node)}: {e}.") from None


def _check_eval(ev: Mapping[str, Any]) -> None:
    """The evaluation's sizes (lab/metrics/fid_protocol.py): an FID over fewer than 10 images means nothing."""
    from lab.metrics.fid_protocol import MIN_SAMPLES

    n = ev.get("fid_samples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or 0 < n < MIN_SAMPLES:
        raise ConfigError(f"eval.fid_samples={n!r}: give 0 (no rFID / gFID) or at least {MIN_SAMPLES} images "
                          "(2048 or more for a full-rank FID; smaller N: compare KID).")
    lim = ev.get("fid_reference_limit")
    if lim is not None and (isinstance(lim, bool) or not isinstance(lim, int) or lim < MIN_SAMPLES):
        raise ConfigError(f"eval.fid_reference_limit={lim!r}: give null (the whole real split is the FID "
                          f"reference) or at least {MIN_SAMPLES} images (a seeded subset of the split).")
    for key, low in (("kid_subsets", 1), ("kid_subset_size", 2)):
        v = ev.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"eval.{key}={v!r}: give an integer of at least {low} (torchmetrics' defaults: "
                              "100 subsets of 1000 images).")


# keys a run sets itself: a value given for one would be ignored without a word
RESERVED = {"name": "the experiment's path names it (python -m lab run NAME); to keep a variant's runs apart give "
                    "runs_dir=... or run_id=..., or copy the YAML under a new name",
            "resolved": "each run writes there what the `auto` settings became on this machine"}


def _refuse_reserved(keys: Mapping, source: str) -> None:
    for key, why in RESERVED.items():
        if key in keys:
            raise ConfigError(f"{key}={keys[key]!r} is set in {source}, but {key} is not a key to set: {why}. "
                              "Remove it.")


def check_image_size(cfg: Mapping) -> None:
    """loader.image_size against the tokenizer: the encoder divides it by 2^(len(channel_mult) - 1), and that latent
    must be the last (finest) of tokenizer.scales (lab/models/tokenizer.py ``check_image_size``)."""
    import inspect

    from lab.models.tokenizer import Tokenizer

    defaults = {k: p.default for k, p in inspect.signature(Tokenizer).parameters.items()}
    tok = {**defaults, **(cfg.get("tokenizer") or {})}
    size, down, scales = cfg["loader"]["image_size"], 2 ** (len(tok["channel_mult"]) - 1), list(tok["scales"])
    fits = scales[-1] * down
    if size % down:
        raise ConfigError(
            f"loader.image_size={size} does not fit the tokenizer: it downsamples {down}x (tokenizer.channel_mult="
            f"{list(tok['channel_mult'])}), so the image size must be a multiple of {down}, and its finest scale "
            f"(tokenizer.scales={scales}) is {scales[-1]}, which needs {fits}x{fits} images. Set "
            f"loader.image_size={fits}."
        )
    if size // down != scales[-1]:
        raise ConfigError(
            f"loader.image_size={size} does not fit the tokenizer: its {len(tok['channel_mult'])} levels "
            f"(tokenizer.channel_mult={list(tok['channel_mult'])}) downsample {down}x, and its finest scale "
            f"(tokenizer.scales={scales}) is {scales[-1]}, so the images must be {fits}x{fits}. Set "
            f"loader.image_size={fits}, or end tokenizer.scales at {size // down} (e.g. tokenizer.scales="
            f"[{','.join(map(str, [s for s in scales if s < size // down] + [size // down]))}])."
        )


def load_experiment(name: str, overrides: Iterable[str] = (), layer: Mapping | None = None,
                    layer_source: str = "the sweep", validate: bool = True) -> DictConfig:
    """Resolved, validated, read-only-structure config for experiment ``name`` (path under experiments/).

    ``layer`` (nested dict, e.g. one grid point of a sweep) is merged after the preset and before the command
    line: the preset sets the scale, the swept keys keep their values at every scale."""
    name = str(name).removesuffix(".yaml")
    check_experiment_name(name, EXPERIMENTS)  # a name never reads a YAML outside experiments/
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        avail = available_experiments()
        raise ConfigError(f"Unknown experiment '{name}' (no file {path}).{suggest(name, avail)}")
    base = read_yaml(EXPERIMENTS / "base.yaml")
    exp = upgrade_renamed(read_yaml(path), str(path.relative_to(EXPERIMENTS.parent)))
    cli = upgrade_renamed(parse_overrides(overrides), "the command line")
    layer = upgrade_renamed(layer, layer_source) if layer else layer
    _check_known(base, exp, str(path.relative_to(EXPERIMENTS.parent)))
    _check_known(base, cli, "the command line")
    _refuse_reserved(exp, str(path.relative_to(EXPERIMENTS.parent)))
    _refuse_reserved(cli, "the command line")
    cfg = merge(merge(base, exp), cli)
    if layer:
        _check_known(base, layer, layer_source)
    preset = cfg.get("preset")
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset '{preset}'.{suggest(str(preset), list(PRESETS))}")
    # the preset's overrides, then the command line again so that it always wins
    scale = (cfg.get("presets") or {}).get(preset) or {}
    experiment = merge(merge(base, exp), scale)  # the experiment's own values at this scale (for the default run name)
    cfg = merge(merge(merge(cfg, scale), layer or {}), cli)
    cfg["name"] = name
    if cfg.get("stage") not in STAGES:
        raise ConfigError(f"Unknown stage '{cfg.get('stage')}'.{suggest(str(cfg.get('stage')), list(STAGES))}")
    for node, check in (_validators() if validate else {}).items():  # (validate=False: `lab status`, no torch)
        if cfg.get(node) is not None:
            check(cfg[node])
    user = {"the experiment file": exp, layer_source: layer or {}, "the command line": cli}
    for source, keys in user.items():
        refuse_unused(keys, cfg["stage"], source)
    if not cfg.get("sweep") and any("seeds" in keys for keys in user.values()) and cfg.get("seeds") is not None:
        check_seeds(cfg["seeds"], False)  # (the smoke preset's seeds: [0] serves sweeps and is ignored elsewhere)
    check_ranges(cfg)
    if isinstance(cfg.get("run_name"), (int, float)) and not isinstance(cfg["run_name"], bool):
        cfg["run_name"] = str(cfg["run_name"])  # run_name=2024: a name, though YAML reads a number
    check_run_name(cfg.get("run_name"))
    check_tags(cfg.get("tags"))
    if cfg.get("run_name") is None and not cfg.get("resume"):  # (a resume keeps the run's own: lab/stages/common.py)
        cfg["run_name"] = default_run_name(name, experiment, cfg)  # in config.yaml: the name every view shows
    if validate:  # (these import torch)
        _check_eval(cfg.get("eval") or {})
        check_image_size(cfg)
        from lab.runtime.machine import resolve_layout

        resolve_layout(placement(cfg["trainer"]), loader_settings(cfg["loader"]))  # devices: auto / global_batch_size problems, before any run
    conf = OmegaConf.create(cfg)
    OmegaConf.set_struct(conf, True)
    for node in OPEN_NODES:
        if isinstance(conf.get(node), DictConfig):
            OmegaConf.set_struct(conf[node], False)
    return conf
