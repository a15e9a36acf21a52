"""Offline weight files: the folder of an installed package, found without importing it (LPIPS's backbone and
FID's Inception graph ship as files inside PyPI packages, ``lab.metrics.lpips`` and ``lab.metrics.fid``)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed (see pyproject.toml)")
    return Path(list(spec.submodule_search_locations)[0])
