"""A suite's plan: the grid of points its ``sweep:`` node spans, times its seeds, as ``Job``s with their run
directories. Pure: reads the YAML, writes nothing (lab/sweeps/sweep.py runs the plan, lab/sweeps/report.py
tables it)."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, open_dict

from lab.config import load_experiment, merge
from lab.core.numfmt import short_value, slug
from lab.core.registry import ConfigError, to_dict
from lab.runtime.files import runs_root
from lab.runtime.safety import check_component
from lab.sweeps.verdicts import check_report_node, parse_baseline

CASES = "cases"
# Columns every row has, before the swept values and the metrics.
FIXED_COLUMNS = ("suite", "point", "seed", "run_dir", "status")
# Headline metrics for results.md when the YAML names none (those present are shown).
DEFAULT_METRICS = ("psnr", "lpips", "rfid", "rkid", "bit_entropy", "codebook_usage", "val_loss", "bit_accuracy",
                   "gfid", "kid", "gfid_normalized", "params", "head_params", "flops_per_step", "wall_time_s", "peak_memory_mb")


# ------------------------------------------------------------------------------------------------ grid
@dataclass
class Point:
    label: str                       # directory name of the point, e.g. "head-index_size-s"
    values: dict[str, Any]           # column -> value (dotted keys, and "case" for a cases axis)
    layer: dict = field(default_factory=dict)  # nested overrides merged into the experiment


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = copy.deepcopy(value)


def _axis_name(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


EXCLUDE = "exclude"


def expand(sweep: Mapping | None) -> list[Point]:
    """The grid points of ``sweep`` (product of the axes, in order), less those that match an entry of its
    ``exclude:`` list (each a mapping of column values, e.g. ``{case: vq-2^12, head.name: digits}``: combinations
    that ask nothing). ``None`` or ``{}`` is a single point."""
    if not sweep:
        return [Point("default", {})]
    sweep = dict(sweep)
    exclude = sweep.pop(EXCLUDE, None) or []
    axes: list[list[tuple[str, dict[str, Any], dict]]] = []  # per axis: (label part, column values, layer)
    for key, values in sweep.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep.{key} must be a non-empty list of values, got {values!r}.")
        options = []
        if key == CASES:
            for i, case in enumerate(values):
                if not isinstance(case, Mapping):
                    raise ConfigError(f"sweep.cases[{i}] must be a mapping of config keys, got {case!r}.")
                case = dict(case)
                label = str(case.pop("label", "") or "-".join(f"{_axis_name(k)}-{short_value(v)}" for k, v in case.items()))
                layer: dict = {}
                for k, v in case.items():
                    set_dotted(layer, k, v)
                if slug(label).strip("."):
                    check_component(slug(label), f"sweep.cases[{i}].label")
                else:  # "." or "..": the point's runs would land in (and share) a parent directory
                    raise ConfigError(f"sweep.cases[{i}].label={label!r} is not a valid directory name: a label "
                                      "names the point's directory, so it needs a letter or digit (and is never '.' or '..').")
                options.append((slug(label), {"case": label}, layer))
        else:
            for v in values:
                layer = {}
                set_dotted(layer, key, v)
                options.append((slug(f"{_axis_name(key)}-{short_value(v)}"), {key: short_value(v) if isinstance(v, Mapping) else v}, layer))
        axes.append(options)
    points = []
    for combo in itertools.product(*axes):
        layer: dict = {}
        values: dict[str, Any] = {}
        for _, vals, lay in combo:
            layer = _merge_layers(layer, lay)
            values.update(vals)
        points.append(Point("_".join(part for part, _, _ in combo), values, layer))
    points = _excluded(points, exclude)
    labels = [p.label for p in points]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"sweep points share a label ({', '.join(dupes)}): give the cases distinct `label:`s.")
    return points


def _excluded(points: list[Point], exclude: Any) -> list[Point]:
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, Mapping) and e for e in exclude):
        raise ConfigError(f"sweep.exclude must be a list of mappings of column values (e.g. [{{case: vq, head.name: "
                          f"digits}}]), got {exclude!r}.")
    columns = {c for p in points for c in p.values}
    for i, e in enumerate(exclude):
        unknown = [k for k in e if k not in columns]
        if unknown:
            raise ConfigError(f"sweep.exclude[{i}] names {', '.join(map(str, unknown))}, not a column of this sweep "
                              f"(the columns: {', '.join(sorted(columns))}).")
        if not any(all(short_value(p.values.get(k)) == short_value(v) for k, v in e.items()) for p in points):
            raise ConfigError(f"sweep.exclude[{i}]={dict(e)} matches no point of the grid: check the values.")
    return [p for p in points if not any(all(short_value(p.values.get(k)) == short_value(v) for k, v in e.items())
                                         for e in exclude)]


def _merge_layers(a: dict, b: Mapping) -> dict:
    return merge(a, b)


@dataclass
class Job:
    point: Point
    seed: int
    cfg: DictConfig

    @property
    def run_dir(self) -> Path:
        return runs_root(self.cfg["runs_dir"]) / self.cfg["name"] / str(self.cfg["run_id"])


def plan(name: str, overrides: Sequence[str] = (), validate: bool = True) -> tuple[DictConfig, list[Job]]:
    """The suite's own config and one fully validated config per (point, seed): bad keys, and a baseline that is
    not in the grid, fail before training. ``validate=False`` skips the component checks that import torch
    (``lab status``: the grid and the run directories only)."""
    suite = load_experiment(name, overrides, validate=validate)
    if not suite.get("sweep"):
        raise ConfigError(f"{name} has no `sweep:`; run it with `python -m lab run {name}`.")
    sweep = to_dict(suite["sweep"])
    seeds = list(to_dict(suite["seeds"]) or [suite["seed"]])
    if not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}.")
    points = expand(sweep)
    report = to_dict(suite["report"]) or {}
    check_report_node(report)
    parse_baseline(report.get("baseline"), [p.values for p in points], where=f"report.baseline of {name}")
    jobs = []
    for point in points:
        for seed in seeds:
            try:
                cfg = load_experiment(name, overrides, layer=point.layer, layer_source=f"the sweep point {point.label}",
                                      validate=validate)
            except ConfigError as e:
                raise ConfigError(f"sweep point {point.label}: {e}") from None
            with open_dict(cfg):
                cfg["name"] = f"{suite['name']}/{point.label}"
                cfg["seed"] = int(seed)
                cfg["run_id"] = f"s{seed}"
                cfg["resume"] = False
                cfg["sweep"] = None
                cfg["seeds"] = None
            jobs.append(Job(point, int(seed), cfg))
    return suite, jobs

FAILED = "failed.json"
