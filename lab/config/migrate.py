"""The config names of 0.1, in one place: a config that still uses one (an experiment YAML, a command line, a run's
config.yaml or a checkpoint's recorded config) is read with the new name at the two entry points, loading an
experiment (lab/config/__init__.py ``load_experiment``) and loading a recorded run (lab/config/runs.py
``read_config``, ``checkpoint_config``). The module paths of 0.1 are ``lab.MOVED``; both go at 0.2
(tests/test_layering.py fails when the version reaches 0.2 with either still in place)."""
from __future__ import annotations

import sys
from typing import Mapping

from lab.core.registry import ConfigError


# Config keys renamed since 0.1 (old dotted key -> new). A config that still uses an old name (an experiment YAML,
# a command line, a run's config.yaml) is read with the new one, and a note says so; removed in 0.2.
RENAMED_KEYS = {"sample.cfg": "sample.guidance", "sample.cfg_schedule": "sample.guidance_schedule"}


def upgrade_renamed(d: Mapping, source: str = "", note: bool = True) -> dict:
    """``d`` (a nested dict of config keys, e.g. one layer of a config) with every old key name of
    ``RENAMED_KEYS`` moved to its new name; under ``presets.<preset>`` too. Both names at once is an error."""
    out = dict(d)
    for old, new in RENAMED_KEYS.items():
        (o_node, o_key), n_key = old.rsplit(".", 1), new.rsplit(".", 1)[1]  # (renamed within their node)
        for container in [out] + [p for p in (out.get("presets") or {}).values() if isinstance(p, dict)]:
            node = container.get(o_node)
            if not isinstance(node, Mapping) or o_key not in node:
                continue
            node = container[o_node] = dict(node)
            if n_key in node:
                raise ConfigError(f"{source or 'the config'} sets both {old} and {new}: {old} is the old name of "
                                  f"{new} (renamed in 0.2); keep {new}.")
            node[n_key] = node.pop(o_key)
            if note:
                print(f"note: {old} in {source or 'the config'} is now {new} (the old name is read until 0.2).",
                      file=sys.stderr)
    return out
