"""Run names and tags: ``run_name=`` and ``tags=[...]`` on any run, and the default name.

A run's name is bookkeeping: it names the run directory (``runs/<experiment>/<name>-<time>-s<seed>``), the end
summary, TensorBoard's HParams row, ``lab compare``'s rows; it never changes a result, so a resume or a sweep
may differ in it (``RESUME_IGNORED`` in lab/runtime/runlock.py). The default name is the experiment's own
(``quickstart``, ``bsq`` for ``tokenizer/bsq``) followed by what this run changes of the experiment's data,
quantizer, head and generator size (``quickstart-imagefolder``, ``bsq-vq``, ``c2i_fashion-index-size-m``).
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping

from lab.core.registry import ConfigError
from lab.runtime.safety import SAFE_COMPONENT, check_component

MAX_NAME = 80  # characters: a run directory's name adds the time and the seed to it
MAX_TAG = 40
TAG = re.compile(r"^[A-Za-z0-9_.+=:-]+$")

# (dotted key, how its value shows in a default name, the stages it applies to)
NAME_KEYS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("data.name", "{}", ("tokenizer", "generator")),
    ("quantizer.name", "{}", ("tokenizer", "generator")),
    ("quantizer.bits", "{}bit", ("tokenizer", "generator")),
    ("quantizer.codebook_size", "{}codes", ("tokenizer", "generator")),
    ("head.name", "{}", ("generator",)),
    ("generator.size", "size-{}", ("generator",)),
)


def check_run_name(value: Any) -> None:
    """``run_name`` is null or one short directory name (it names the run directory)."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"run_name={value!r}: give a short name made of letters, digits and - _ . + = "
                          "(e.g. run_name=my-photos), or leave it out for the default name.")
    check_component(value, "run_name")
    if len(value) > MAX_NAME:
        raise ConfigError(f"run_name={value!r} has {len(value)} characters; keep it to {MAX_NAME} (the run "
                          "directory's name adds the time and the seed to it).")


def check_tags(value: Any) -> None:
    """``tags`` is a list of short words (``lab compare --tag T`` selects by them)."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"tags={value!r}: give a list of short words, e.g. tags=[photos,baseline] (or tags=[]).")
    for t in value:
        if not isinstance(t, str) or not TAG.match(t) or len(t) > MAX_TAG:
            raise ConfigError(f"tags: {t!r} is not a tag. A tag is one word of at most {MAX_TAG} letters, digits "
                              "and - _ . + = : (no spaces or commas), e.g. tags=[photos,baseline].")


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _slug(text: str) -> str:
    """``text`` as a piece of a directory name: characters other than letters, digits and - _ . + = become '-'."""
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9_.+=-]", "-", text)).strip("-.")


def default_run_name(name: str, experiment: Mapping, cfg: Mapping) -> str:
    """The experiment's own name, then each of ``NAME_KEYS`` whose value in ``cfg`` differs from the experiment's
    (``experiment``: base.yaml, the experiment's YAML and the preset, before the sweep point and the command
    line). ``quickstart`` on your own images: ``quickstart-imagefolder``."""
    parts = [_slug(str(name).rsplit("/", 1)[-1]) or "run"]
    for key, shown, stages in NAME_KEYS:
        value = _get(cfg, key)
        if cfg.get("stage") in stages and value is not None and value != _get(experiment, key):
            parts.append(_slug(shown.format(value)))
    out = "-".join(p for p in parts if p)[:MAX_NAME].rstrip("-.")
    return out if SAFE_COMPONENT.match(out) else "run"


def run_name(cfg: Any) -> str:
    """The run's name: ``run_name`` as the config holds it (load_experiment fills in the default), else the
    experiment's own name (a config recorded before names existed)."""
    given = cfg.get("run_name") if hasattr(cfg, "get") else None
    return str(given) if given else (_slug(str(cfg["name"]).rsplit("/", 1)[-1]) or "run")


def run_tags(cfg: Any) -> list[str]:
    tags = cfg.get("tags") if hasattr(cfg, "get") else None
    return [] if tags is None or isinstance(tags, str) else [str(t) for t in tags]  # (a list or an OmegaConf ListConfig)


def new_run_id(cfg: Any, now: datetime | None = None) -> str:
    """A new run's directory name: ``<run name>-<YYYYmmdd-HHMMSS>-s<seed>``."""
    return f"{run_name(cfg)}-{(now or datetime.now()):%Y%m%d-%H%M%S}-s{cfg['seed']}"
