"""Run names and tags: ``run_name=`` and ``tags=[...]`` on any run, checked here; the default name and a run's name
from its config are made by lab/config/runs.py with this module's ``NAME_KEYS`` and ``slug``.

A run's name is bookkeeping: it names the run directory (``runs/<experiment>/<name>-<time>-s<seed>``), the end
summary, TensorBoard's HParams row, ``lab compare``'s rows; it never changes a result, so a resume or a sweep
may differ in it (``RESUME_IGNORED`` in lab/config/runs.py). The default name is the experiment's own
(``quickstart``, ``bsq`` for ``tokenizer/bsq``) followed by what this run changes of the experiment's data,
quantizer, head and generator size (``quickstart-imagefolder``, ``bsq-vq``, ``c2i_fashion-index-size-m``).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from lab.core.registry import ConfigError
from lab.runtime.safety import check_component

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


def dotted_get(d: Any, dotted: str) -> Any:
    """``d``'s value at a dotted key (``quantizer.bits``), or None where the path is missing."""
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def slug(text: str) -> str:
    """``text`` as a piece of a directory name: characters other than letters, digits and - _ . + = become '-'."""
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9_.+=-]", "-", text)).strip("-.")
