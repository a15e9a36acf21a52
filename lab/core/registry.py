"""Components chosen by short name from a visible dict, and the one clear error for bad config.

A YAML component node is ``name:`` plus keyword arguments; ``build(REGISTRY, node)`` calls
``REGISTRY[name](**rest)``. Defaults live in the constructors' keyword-only signatures, so a node is
validated against the signature: an unknown name lists the registry, an unknown keyword lists the valid
ones (closest first), a value of the wrong type names the key and the expected type.
"""
from __future__ import annotations

import difflib
import inspect
import types
import typing
from typing import Any, Callable, Mapping


class ConfigError(Exception):
    """A configuration problem, stated in one paragraph that names the bad key and the valid choices."""


def closest(word: str, choices: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, choices, n=n, cutoff=0.5)


def suggest(word: str, choices: list[str]) -> str:
    near = closest(word, choices)
    hint = f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    return f"{hint} Valid: {', '.join(sorted(choices))}."


def signature_params(fn: Callable) -> dict[str, inspect.Parameter]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a YAML value against a type hint (int accepted for float, lists for Sequence)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _resolve_hints(fn: Callable) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward refs: fall back to no type checking
        return {}


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str, injected: tuple[str, ...] = ()) -> None:
    """Raise ConfigError for keywords ``fn`` does not take or values of the wrong type."""
    params = signature_params(fn)
    hints = _resolve_hints(fn)
    valid = [k for k in params if k not in injected]
    for key, value in kwargs.items():
        if key not in params or key in injected:
            hint = YAML_SPACE_HINT if ":" in str(key) else ""
            raise ConfigError(f"Unknown key '{where}.{key}'{hint}.{suggest(key, valid)}")
        ann = hints.get(key, params[key].annotation)
        if not _type_ok(value, ann):
            raise ConfigError(
                f"Wrong type for '{where}.{key}': expected {_type_name(ann)}, got {type(value).__name__} {value!r}."
            )


# '{name:bsq,bits:8}' (no space after the colons) is one YAML key or string, not a mapping
YAML_SPACE_HINT = " (YAML reads '{a:b}' without a space after the colon as one word: write {name: x, key: value})"


def split_node(node: Mapping[str, Any], registry: Mapping[str, Callable], where: str) -> tuple[str, dict]:
    if not isinstance(node, Mapping):
        hint = YAML_SPACE_HINT if isinstance(node, str) and ":" in node else ""
        raise ConfigError(f"'{where}' must be a mapping like {{name: ..., key: value}}, got {type(node).__name__} "
                          f"{node!r}{hint}. Valid names: {', '.join(sorted(registry))}.")
    node = dict(node)
    if "name" not in node:
        raise ConfigError(f"'{where}' needs a 'name:'. Valid: {', '.join(sorted(registry))}.")
    name = node.pop("name")
    if name not in registry:
        raise ConfigError(f"Unknown {where} '{name}'.{suggest(str(name), list(registry))}")
    return name, node


def validate(registry: Mapping[str, Callable], node: Mapping[str, Any], where: str, injected: tuple[str, ...] = ()) -> None:
    name, kwargs = split_node(node, registry, where)
    check_kwargs(registry[name], kwargs, f"{where}", injected)


def build(registry: Mapping[str, Callable], node: Mapping[str, Any], where: str, **injected: Any) -> Any:
    """``registry[node.name](**rest, **injected)`` after validating the keywords."""
    name, kwargs = split_node(node, registry, where)
    check_kwargs(registry[name], kwargs, where, tuple(injected))
    return registry[name](**kwargs, **injected)


def to_dict(cfg: Any) -> Any:
    """A config node as plain Python containers (interpolations resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: PLC0415 - registry stays importable without omegaconf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def save_config(cfg: Any, path: Any) -> None:
    """The resolved config as YAML at ``path``."""
    from pathlib import Path  # noqa: PLC0415

    from omegaconf import OmegaConf  # noqa: PLC0415 - as to_dict

    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
