"""Sweeps: a grid of runs from one YAML, trained, evaluated, tabled and plotted.

An experiment YAML with a ``sweep:`` node is a suite::

    sweep:
      head.name: [index, bitwise]              # a dotted config key -> the values it takes
      cases:                                   # optional: rows of keys that change together (zipped, not crossed)
        - {label: bsq16, quantizer: {name: bsq, bits: 16}}
        - {label: vq16, quantizer: {name: vq, codebook_size: 65536}, correction: {name: none}}
    seeds: [0, 1]

The grid is the product of the axes in YAML order, times ``seeds``. Each point is one ordinary run of the
experiment with the point merged in after the YAML and its preset (before the command line), written to
``runs/<NAME>/<point label>/s<seed>/``. Generator runs share their tokenizer through the tokenizer cache
(``runs/_tokenizers/<hash of its config and data>``), so each distinct tokenizer is trained once; the
tokenizer's seed is ``tokenizer_train.seed``, not the generator's.

Re-running a sweep skips runs with a ``metrics.json``, resumes runs with a ``checkpoints/last.ckpt`` and moves a
run directory with neither aside (nothing is deleted). Two invocations of one sweep at once (e.g. one per
core with ``OMP_NUM_THREADS=1``) share its runs: each run is claimed by its run lock (``.s<seed>.lock``,
lab/runtime/runlock.py). A finished run whose ``config.yaml`` differs from its point's config now is an error, never
reported as this sweep's. At the end it writes ``runs/<NAME>/results.csv`` (one
row per run), ``results.md`` (mean +- std over seeds; verdicts against ``report.baseline``, ``lab/sweeps/verdicts.py``) and ``plots/*.png`` (``report.plots`` of the YAML);
``python -m lab report NAME [--out DIR]`` rebuilds them from the runs without training.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import open_dict

from lab.core.numfmt import fmt_duration
from lab.runtime.files import process_rank, read_data, runs_root
from lab.config.runs import check_not_stale
from lab.runtime.runlock import holder, lock_path, try_lock, unlock
from lab.stages.preflight import check_run
from lab.stages import run as stage_run  # run_experiment looked up per call: tests and tools may wrap it
from lab.sweeps.plan import FAILED, expand, plan
from lab.core.registry import ConfigError
from lab.sweeps.records import (adopt_record, check_records, find_twins, publish_run, publish_tokenizer_of,
                                results_dir)
from lab.sweeps.report import check_report, machine, report_overrides, write_report
from lab.sweeps.shards import shard_jobs
from lab.train.modules import NonFiniteLossError
from lab.core.registry import to_dict


def run_sweep(name: str, overrides: Sequence[str] = (), publish: str | Path | None = None,
              shard: tuple[int, int] | None = None, force: bool = False) -> Path:
    """Train and evaluate every run of the suite (of its ``shard``) that neither ``runs/`` nor the published records
    hold; then write the results. ``publish``: a results folder that gets each run's record as the run finishes
    (and the report at the end). -> sweep dir."""
    suite, all_jobs = plan(name, overrides)
    check_not_stale(all_jobs)  # before anything is written: no earlier run of other settings passes for this sweep's
    results = Path(publish) if publish else results_dir(suite["name"])
    published = check_records(all_jobs, results)  # a record of other settings: an error, before anything is written
    recorded = {id(all_jobs[i]) for i in published}
    if (view := report_overrides(name, overrides)) != list(overrides):  # the report covers the suite's other seeds
        check_records(plan(name, view)[1], results)  # too: their records are checked now, not after the training
    jobs = shard_jobs(all_jobs, shard)
    mine = {id(j) for j in jobs}
    twins: dict[int, Path] = {}
    if publish and process_rank() == 0:  # a point another suite already published with the same settings: not retrained
        twins = find_twins(all_jobs, results, {i for i, j in enumerate(all_jobs)  # this shard's, not started here
                                               if id(j) not in mine or i in published or j.run_dir.exists()})
    for i, job in enumerate(all_jobs):  # every point's checks that need no training (lab/stages/preflight.py)
        if id(job) in mine and i not in twins and not (job.run_dir / "metrics.json").is_file() and id(job) not in recorded:
            check_run(job.cfg)
    sweep_dir = runs_root(suite["runs_dir"]) / suite["name"]
    for i, src in twins.items():
        published[i] = adopt_record(src, results, all_jobs[i].point.label, all_jobs[i].seed)
    recorded = {id(all_jobs[i]) for i in published}
    if twins:
        say(f"[sweep {suite['name']}] {len(twins)} run(s) taken from another suite's published records of the same "
              "settings (their source.json says which): "
              + ", ".join(f"{all_jobs[i].point.label}/s{all_jobs[i].seed} <- {src.parents[2].name}"
                          for i, src in sorted(twins.items())), flush=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "suite": suite["name"], "overrides": list(overrides), "preset": suite["preset"],
        "command": " ".join(["python -m lab run", suite["name"], *overrides]),
        "runs": [{"point": j.point.label, "values": j.point.values, "seed": j.seed,
                  "run_dir": str(j.run_dir.relative_to(sweep_dir))} for j in jobs],
    }
    if (sweep_dir / "sweep.json").is_file():  # keep the record of earlier invocations
        manifest["invocations"] = read_data(sweep_dir / "sweep.json").get("invocations", [])
    if process_rank() == 0:
        (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str))
    todo = [j for j in jobs if not (j.run_dir / "metrics.json").is_file() and not (j.run_dir / FAILED).is_file()
            and id(j) not in recorded]
    failed = [j for j in jobs if (j.run_dir / FAILED).is_file()]
    if failed:
        say(f"[sweep {suite['name']}] skipping {len(failed)} runs that failed before (delete their {FAILED} to retry): "
              + ", ".join(f"{j.point.label}/s{j.seed}" for j in failed))
    n_points = len(expand(to_dict(suite['sweep'])))
    n_rec = sum(id(j) in recorded and not (j.run_dir / "metrics.json").is_file() for j in jobs)
    say(f"[sweep {suite['name']}] {len(all_jobs)} runs ({n_points} points x {len(all_jobs) // max(1, n_points)} seeds)"
          + (f", shard {shard[0]}/{shard[1]}: {len(jobs)} of them" if shard else "")
          + f", {len(jobs) - len(todo)} already finished" + (f" ({n_rec} from the published records in {results})" if n_rec else ""))
    t_start, done_times = time.time(), []
    for i, job in enumerate(todo):
        cfg = job.cfg
        claim = _claim(job.run_dir)
        if claim is None or (job.run_dir / "metrics.json").is_file():
            if claim is not None:
                unlock(job.run_dir)
            say(f"[sweep {suite['name']}] run {job.point.label} seed {job.seed}: "
                  + ("finished meanwhile by another invocation" if claim is not None else
                     f"being trained by another invocation ({holder(job.run_dir)}); skipped here"), flush=True)
            continue
        try:
            if (job.run_dir / "checkpoints" / "last.ckpt").is_file():
                with open_dict(cfg):
                    cfg["resume"] = True
                how = "resuming"
            else:
                if job.run_dir.exists() and process_rank() == 0:  # started, never checkpointed: aside, afresh
                    # (only rank 0: the other ranks of a multi-process run start after rank 0 has made this run's
                    # directory, and would move that aside; they follow rank 0's directory and resume choice)
                    aside = job.run_dir.with_name(f"{job.run_dir.name}.incomplete-{datetime.now():%Y%m%d-%H%M%S}")
                    job.run_dir.rename(aside)
                how = "starting"
            eta = ""
            if done_times:
                eta = f", about {fmt_duration(sum(done_times) / len(done_times) * (len(todo) - i))} left"
            say(f"[sweep {suite['name']}] run {jobs.index(job) + 1}/{len(jobs)} ({i + 1}/{len(todo)} to do): "
                  f"{how} {job.point.label} seed {job.seed}; elapsed {fmt_duration(time.time() - t_start)}{eta}", flush=True)
            t0 = time.time()
            try:
                stage_run.run_experiment(cfg)
            except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
                if not _recordable(e):
                    raise
                record_failure(job.run_dir, e)
                say(f"[sweep {suite['name']}] run {job.point.label} seed {job.seed} FAILED and is recorded as such: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                continue
            done_times.append(time.time() - t0)
            if publish and process_rank() == 0:
                rec = publish_run(job.run_dir, results, job.point.label, job.seed, force=force)
                publish_tokenizer_of(job.run_dir, results)
                say(f"[sweep {suite['name']}] published {rec}", flush=True)
        finally:
            unlock(job.run_dir)
    n_done = sum((j.run_dir / "metrics.json").is_file() or id(j) in recorded for j in jobs)
    say(f"[sweep {suite['name']}] {n_done} of {len(jobs)} runs finished"
          + (f" in shard {shard[0]}/{shard[1]}" if shard else "") + f"; this invocation took {fmt_duration(time.time() - t_start)}")
    if process_rank() > 0:  # rank 0 alone records the invocation and writes the reports
        return sweep_dir
    manifest.setdefault("invocations", [])
    old = read_data(sweep_dir / "sweep.json").get("invocations", [])
    manifest["invocations"] = old + [{"started": datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
                                      "wall_s": round(time.time() - t_start, 1), "runs_trained": len(done_times),
                                      "machine": machine()}]
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str))
    write_report(name, overrides, out=sweep_dir, results=results)
    if publish and process_rank() == 0:
        try:
            check_report(name, overrides, out=results, force=force, results=results)
            write_report(name, overrides, out=results, results=results)
        except ConfigError as e:  # the records are published; the report in there is not replaced by less
            say(f"[sweep {suite['name']}] the report in {results} is kept: {e}", flush=True)
    say(results_tables(sweep_dir / "results.md"))
    return sweep_dir


def say(*args, **kwargs) -> None:
    """print, on rank 0 only: the other ranks of a multi-process run re-run the sweep command to follow rank 0."""
    if process_rank() == 0:
        print(*args, **kwargs)


def results_tables(md_path: Path) -> str:
    """The markdown tables of a sweep's results.md (what a sweep prints at its end), blocks separated by a line."""
    blocks, current = [], []
    for line in (md_path.read_text().splitlines() if md_path.is_file() else []):
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return "\n\n".join(blocks)


def _claim(run_dir: Path) -> Path | None:
    """Claim a run for this process: the run's own lock (lab/runtime/runlock.py, a ``flock`` on ``.s<seed>.lock`` beside
    it, which the OS releases with its process: a dead or PID-reused holder never blocks it). Two invocations of
    one sweep thus share the work instead of training the same run twice. -> the lock file; None: claimed."""
    if process_rank() > 0:  # the other ranks of a multi-process run follow rank 0's claim
        return lock_path(run_dir)
    return lock_path(run_dir) if try_lock(run_dir) else None




def _recordable(e: BaseException) -> bool:
    """Failures that belong to the grid point (out of memory, a diverging loss), not to the code or the input."""
    if isinstance(e, (NonFiniteLossError, MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())


def record_failure(run_dir: Path, e: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = "out_of_memory" if not type(e).__name__.startswith("NonFinite") else "non_finite_loss"
    (run_dir / FAILED).write_text(json.dumps({"status": kind, "error": f"{type(e).__name__}: {e}"[:2000]}, indent=2))



def incomplete(name: str, overrides: Sequence[str] = (), publish: str | Path | None = None,
               shard: tuple[int, int] | None = None) -> list[str]:
    """The runs of a suite (of its ``shard``) that neither a metrics.json nor a published record finishes, as
    ``point/s<seed> (status)``."""
    suite, all_jobs = plan(name, overrides)
    results = Path(publish) if publish else results_dir(suite["name"])
    published = check_records(all_jobs, results)
    recorded = {id(all_jobs[i]) for i in published}
    out = []
    for j in shard_jobs(all_jobs, shard):
        if not (j.run_dir / "metrics.json").is_file() and id(j) not in recorded:
            status = "failed" if (j.run_dir / FAILED).is_file() else "missing"
            out.append(f"{j.point.label}/s{j.seed} ({status})")
    return out
