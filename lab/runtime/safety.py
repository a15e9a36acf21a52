"""Guards against code run from a file and against bad input that would otherwise surface late.

Checkpoints and caches are read with ``torch.load(weights_only=True)``: only tensors and plain Python values
(dicts, lists, numbers, strings) can come out of them, so a crafted file whose pickle carries a ``__reduce__``
payload is refused before anything in it runs. Names that become directories (a run id, a sweep label, an
experiment name) are one safe path component each; seeds and sampling options are checked as values. The
config's own range checks are in lab/config/checks.py.
"""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

from lab.core.registry import ConfigError

# A run id or a sweep label is one directory name: letters, digits and - _ . + = (not "." or "..").
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_.+=-]+$")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load`` of a checkpoint or cache file with ``weights_only=True``. A file that holds anything but
    tensors and plain values (a pickled object, possibly carrying code) is a ``ConfigError``; nothing of it runs."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"Refusing to load {path}: it holds more than tensors and plain values ({first[:300]}). bitlab reads "
            "checkpoints with weights_only=True, so that no code stored in a file is ever run; a checkpoint "
            "written by bitlab never needs more. Use a checkpoint of your own runs, or start a new run."
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, empty or foreign file
        raise ConfigError(f"Cannot read the checkpoint {path} ({type(e).__name__}: {str(e)[:300]}).") from None


def check_component(value: Any, key: str) -> str:
    """``value`` as one safe directory name (run_id, a sweep label): never a path, never ``.`` or ``..``."""
    text = str(value)
    if not SAFE_COMPONENT.match(text) or text in (".", ".."):
        raise ConfigError(
            f"{key}={value!r} is not a valid directory name: it must be a single name made of letters, digits "
            "and - _ . + = (no '/', not '.' or '..', not an absolute path), so that a run stays inside runs_dir."
        )
    return text


def check_experiment_name(name: str, experiments: Path) -> None:
    """An experiment name is a path under experiments/ (e.g. ``tokenizer/bsq``): relative, no ``..``, and the
    file it names resolves inside experiments/ (a symlink out of it is refused too)."""
    parts = name.split("/")
    bad = not name or any(p in ("", ".", "..") or not SAFE_COMPONENT.match(p) for p in parts)
    if not bad:
        try:
            (experiments / f"{name}.yaml").resolve().relative_to(experiments.resolve())
        except ValueError:
            bad = True
    if bad:
        raise ConfigError(
            f"Experiment name {name!r} is not a path inside experiments/: use a relative name made of letters, "
            "digits and - _ . + = separated by '/', without '..' (e.g. quickstart or tokenizer/bsq; `python -m lab "
            "list` lists them)."
        )


def check_seeds(seeds: Any, is_sweep: bool) -> None:
    """``seeds``: null, or (on a sweep only) a non-empty list of distinct integers."""
    if seeds is None:
        return
    if not is_sweep:
        raise ConfigError(
            f"seeds={seeds!r} is set, but this experiment has no `sweep:`: seeds are the repetitions of a sweep's "
            "grid points. For one run use seed=N (or add a sweep: to the YAML)."
        )
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds)):
        raise ConfigError(f"seeds={seeds!r} is not valid: it must be a non-empty list of integers in [0, 2^32), "
                          "e.g. seeds=[0,1,2].")
    dupes = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if dupes:
        raise ConfigError(
            f"seeds={list(seeds)!r} repeats {dupes}: each seed is one run, and a repeated seed would count one run "
            "twice in the mean +- std. Give distinct seeds, e.g. seeds=[0,1]."
        )


def check_sample_options(*, guidance: Any = None, temperature: Any = None, top_k: Any = None, top_p: Any = None,
                         n: Any = None, source: str = "sample.", names: Mapping[str, str] | None = None) -> None:
    """Sampling options (lab/generation/sampling.py, lab/models/heads.py): classifier-free ``guidance`` >= 0 (1: off, 0: the
    unconditional model; below 0 would push away from the condition), ``temperature`` >= 0 (0: greedy),
    ``top_k`` >= 0 (0: off), ``top_p`` in (0, 1] (1: off), ``n`` >= 1 images."""
    def key(k: str) -> str:  # --top-p on the command line, sample.top_p in a config; ``names``: as the user typed it
        if names and k in names:
            return names[k]
        return source + (k.replace("_", "-") if source == "--" else k)

    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if guidance is not None and (not num(guidance) or guidance < 0):
        raise ConfigError(f"{key('guidance')}={guidance!r} is out of range: classifier-free guidance must be a number >= 0 "
                          "(1: no guidance, 0: unconditional, typical 1.5 to 4).")
    if temperature is not None and (not num(temperature) or temperature < 0):
        raise ConfigError(f"{key('temperature')}={temperature!r} is out of range: it must be a number >= 0 "
                          "(0: greedy, 1: the model's distribution).")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ConfigError(f"{key('top_k')}={top_k!r} is out of range: it must be an integer >= 0 (0: no top-k filter).")
    if top_p is not None and (not num(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"{key('top_p')}={top_p!r} is out of range: it must be in (0, 1] (1: no nucleus filter).")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"{key('n')}={n!r} is out of range: the number of images must be an integer >= 1.")
