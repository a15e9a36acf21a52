"""Behaviour unchanged across a refactor: smoke-scale, deterministic, seed-0 runs of quickstart, generator/c2i_fashion
and ablations/self_correction made by two revisions, their metrics.json compared key by key (wall times, the
machine's load and the run paths aside). Exit 0 when every metric is identical.

python scripts/same_behaviour.py BEFORE [AFTER]     (git revisions; AFTER defaults to the working tree)

Each revision is checked out into a temporary git worktree that uses this checkout's .venv, and runs with caches of
its own ($BITLAB_CACHE); about 10 minutes on 2 cores for both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("quickstart", "generator/c2i_fashion", "ablations/self_correction")
IGNORED = ("wall_time_s", "train_time_s", "train_step_ms", "eval_time_s", "sampling_time_s", "inception_time_s", "cpu_load",
           "train_images_per_s", "sample_images_per_s", "peak_memory_mb", "train_peak_memory_mb", "tokenizer")


def run_all(tree: Path, runs: Path) -> None:
    """The runs of one revision, with caches of its own (data, machine probe, Inception features and scores):
    nothing one revision computed is read back by the other."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "BITLAB_CACHE": str(runs.parent / f"cache-{runs.name}")}
    for exp in EXPERIMENTS:
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "lab", "run", exp, "preset=smoke",
                            "deterministic=true", "seed=0", f"runs_dir={runs}"], cwd=tree, env=env,
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{exp} failed in {tree}:\n{r.stderr[-2000:]}")


def metrics(runs: Path) -> dict[str, dict]:
    """{experiment/point/seed: flat metrics}: a run's timestamped directory name replaced by its experiment's."""
    out = {}
    for path in sorted(runs.rglob("metrics.json")):
        rel = path.parent.relative_to(runs)
        key = str(rel) if rel.parts[0] in ("ablations", "_tokenizers") else str(rel.parent)
        out[key] = {k: v for k, v in _flat(json.loads(path.read_text())).items() if k.split(".")[0] not in IGNORED}
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, rev in (("before", argv[0]), ("after", argv[1] if len(argv) > 1 else None)):
            tree = ROOT
            if rev is not None:
                tree = Path(tmp) / label
                subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                               capture_output=True)
            try:
                run_all(tree, Path(tmp) / f"runs-{label}")
            finally:
                if rev is not None:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            results[label] = metrics(Path(tmp) / f"runs-{label}")
    before, after = results["before"], results["after"]
    bad = [f"{run}: {k}: {before.get(run, {}).get(k)!r} -> {after.get(run, {}).get(k)!r}"
           for run in sorted(set(before) | set(after))
           for k in sorted(set(before.get(run, {})) | set(after.get(run, {})))
           if before.get(run, {}).get(k) != after.get(run, {}).get(k)]
    print(f"{len(before)} runs compared, {sum(map(len, before.values()))} metrics: "
          + ("identical" if not bad else f"{len(bad)} differ:\n" + "\n".join(bad[:40])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
