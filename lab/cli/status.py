"""``python -m lab status ablations/NAME``: where a suite stands, from files only (no torch): runs finished here
and in the published records, failed and running ones, the measured time per run (on this CPU where it has run
here), the time left, and the command that continues it."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from lab.core.numfmt import fmt_duration
from lab.core.registry import ConfigError
from lab.runtime.runlock import lock_path, try_lock, unlock
from lab.sweeps.plan import FAILED, plan
from lab.runtime.machine import cpu_model
from lab.sweeps.records import RecordError, check_records, find_twins, read_metrics, results_dir
from lab.sweeps.timing import cpu_kind, times_by_machine


def status(name: str, overrides: Sequence[str] = (), publish: str | None = None) -> dict:
    suite, jobs = plan(name, list(overrides), validate=False)
    if not suite.get("sweep"):
        raise ConfigError(f"{name} is one run, not a suite: `lab status` reads suites (an experiment with `sweep:`).")
    results = Path(publish) if publish else results_dir(suite["name"])
    recorded = check_records(jobs, results)
    # points another suite published with the same settings: `--publish` takes those records, it trains nothing
    twins = find_twins(jobs, results, {i for i, j in enumerate(jobs) if i in recorded or (j.run_dir / "metrics.json").is_file()})
    local, published, failed, running, missing, records, reused = [], [], [], [], [], [], []
    for i, job in enumerate(jobs):
        label = f"{job.point.label}/s{job.seed}"
        source = job.run_dir if (job.run_dir / "metrics.json").is_file() else recorded.get(i)
        if source is None and i in twins:
            reused.append(f"{label} <- {twins[i].parents[2].name}")
            continue
        if source is not None:
            (local if source == job.run_dir else published).append(label)
            try:
                m = read_metrics(source / "metrics.json")
            except RecordError:
                continue
            records.append(m)
        elif (job.run_dir / FAILED).is_file():
            failed.append(label)
        elif lock_path(job.run_dir).exists() and not _free(job.run_dir):
            running.append(label)
        else:
            missing.append(label)
    done = len(local) + len(published)
    # the median, as lab list and the README give it (the first run on a machine also computes the reference)
    by_kind = times_by_machine(records)  # per CPU kind, partial records left out: lab list's figures
    here, times = by_kind.get(cpu_kind(cpu_model()), []), [t for ts in by_kind.values() for t in ts]
    per_run = statistics.median(here) if here else (statistics.median(times) if times else None)
    left = len(missing) + len(running)
    command = " ".join(["python -m lab run", suite["name"], *overrides, "--publish"])
    print(f"{suite['name']}: {done} of {len(jobs)} runs finished ({len(local)} in runs/, {len(published)} published in {results})"
          + (f", {len(running)} running ({', '.join(running[:4])})" if running else "")
          + (f", {len(failed)} failed ({', '.join(failed[:4])}; delete their {FAILED} to retry)" if failed else ""))
    if reused:
        print(f"{len(reused)} more published by another suite with the same settings: `--publish` takes their records, "
              f"it does not retrain them ({', '.join(reused[:4])}{' ...' if len(reused) > 4 else ''})")
    if per_run:
        where = "on this CPU" if here else "on the machines that ran them (none here yet)"
        print(f"time per run: {fmt_duration(per_run)} measured {where}; about {fmt_duration(per_run * left)} left "
              f"for {left} run(s) on one machine")
    elif left:
        print("time per run: not measured yet (no finished run); see the suite's header for the estimate")
    if left:
        print(f"continue: {command}" + ("   (or split it: --shard I/K on K machines)" if left > 1 else ""))
        if missing:
            print("not started: " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else ""))
    else:
        print(f"finished; the report: python -m lab report {suite['name']} {' '.join(overrides)} --out {results}".replace("  ", " "))
    return {"finished": done, "total": len(jobs), "local": local, "published": published, "failed": failed,
            "running": running, "missing": missing, "reused": reused, "per_run_s": per_run}


def _free(run_dir: Path) -> bool:
    """True when nobody holds the run's lock (taking it for an instant, then letting go)."""
    if try_lock(run_dir):
        unlock(run_dir)
        return True
    return False
