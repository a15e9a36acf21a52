"""Shards: the I-th of K disjoint, deterministic slices of a suite's runs, for K machines (a SLURM job array) or K
terminals. The slices are balanced by an estimated cost (steps x the transformer's depth x width^2 for a
generator run; steps for a tokenizer run) with the longest-first greedy rule, ties broken by the plan's order, so
every machine computes the same slices from the same suite. Pure: reads configs, imports nothing heavy."""
from __future__ import annotations

import os
from typing import Any, Sequence

from lab.core.registry import ConfigError

# (depth, width) of lab/models/transformer.py's LADDER, for the cost estimate only (kept light: no torch here)
_SIZES = {"xs": (3, 128), "s": (4, 256), "m": (6, 320), "l": (8, 384)}


def parse_shard(spec: str | None, env: dict | None = None) -> tuple[int, int] | None:
    """``"I/K"`` (1 <= I <= K) or ``"slurm"`` (``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT``, else
    ``SLURM_ARRAY_TASK_MAX`` + 1 with ids from ``SLURM_ARRAY_TASK_MIN``, default 0) -> (I, K), 1-based."""
    if spec in (None, ""):
        return None
    env = os.environ if env is None else env
    if str(spec).lower() == "slurm":
        task = env.get("SLURM_ARRAY_TASK_ID")
        if task is None or not str(task).isdigit():
            raise ConfigError("--shard slurm needs SLURM_ARRAY_TASK_ID (set by `sbatch --array`); outside a job "
                              "array give the shard yourself, e.g. --shard 1/4.")
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        if str(env.get("SLURM_ARRAY_TASK_COUNT", "")).isdigit():
            k = int(env["SLURM_ARRAY_TASK_COUNT"])
        elif str(env.get("SLURM_ARRAY_TASK_MAX", "")).isdigit():
            k = int(env["SLURM_ARRAY_TASK_MAX"]) - lo + 1
        else:
            raise ConfigError("--shard slurm needs SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MAX (set by "
                              "`sbatch --array=0-3`); or give the shard yourself, e.g. --shard 1/4.")
        spec = f"{int(task) - lo + 1}/{k}"
    parts = str(spec).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--shard {spec!r}: give I/K with whole numbers, 1 <= I <= K (e.g. --shard 2/4), or slurm.")
    i, k = int(parts[0]), int(parts[1])
    if k < 1 or not 1 <= i <= k:
        raise ConfigError(f"--shard {spec}: I must be between 1 and K and K at least 1 (e.g. --shard 1/{max(k, 2)}).")
    return i, k


def estimated_cost(cfg: Any) -> float:
    """A relative cost of one run: generator steps x depth x width^2 (the transformer's FLOPs per token up to a
    constant), a tokenizer's steps (its own scale of cost; suites do not mix stages)."""
    steps = float(cfg["trainer"]["max_steps"] or 1)
    if str(cfg.get("stage")) != "generator":
        return steps
    gen = cfg.get("generator") or {}
    depth, width = _SIZES.get(str(gen.get("size", "s")), _SIZES["s"])
    depth, width = int(gen.get("depth") or depth), int(gen.get("width") or width)
    return steps * depth * width * width


def shard_jobs(jobs: Sequence, shard: tuple[int, int] | None) -> list:
    """The jobs of shard (I, K): longest estimated cost first, each to the least loaded shard (lowest index on a
    tie). Deterministic; the K shards are disjoint and together hold every job once."""
    if shard is None:
        return list(jobs)
    i, k = shard
    load = [0.0] * k
    owner: dict[int, int] = {}
    order = sorted(range(len(jobs)), key=lambda n: (-estimated_cost(jobs[n].cfg), n))
    for n in order:
        s = min(range(k), key=lambda j: (load[j], j))
        owner[n] = s
        load[s] += estimated_cost(jobs[n].cfg)
    return [job for n, job in enumerate(jobs) if owner[n] == i - 1]
