"""Helpers for the notebooks: find runs, read their metrics and TensorBoard scalars, summarise sweep results.

Everything returns pandas DataFrames so a notebook cell stays one line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from lab.config import ROOT
from lab.sweeps.report import flatten_metrics, mean_std


def find_runs(path: str | Path) -> list[Path]:
    """Run directories (holding config.yaml) at or under ``path``, oldest first; cached tokenizers excluded
    unless ``path`` is inside ``_tokenizers``."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return [path]
    runs = [p.parent for p in path.rglob("config.yaml")
            if ("_tokenizers" not in p.parts or "_tokenizers" in path.parts)
            and not (p.parent / "tokenizer.json").is_file()]  # (a suite's published tokenizer: not one of its runs)
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def latest(root: str | Path = ROOT / "runs") -> Path | None:
    """The most recent sweep (a directory with sweep.json) or run under ``root``."""
    root = Path(root)
    cands = [p.parent for p in root.rglob("sweep.json")] + find_runs(root) if root.is_dir() else []
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def metrics_table(runs: Iterable[Path], root: Path | None = None) -> pd.DataFrame:
    """One row per run: its path (relative to ``root``) and every final metric, flattened."""
    rows = []
    for r in runs:
        m = json.loads((r / "metrics.json").read_text()) if (r / "metrics.json").is_file() else {}
        row = {"run": str(r.relative_to(root)) if root and r.is_relative_to(root) else str(r),
               "finished": bool(m)}
        row.update(flatten_metrics(m))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def scalars(run_dir: Path, tags: Iterable[str] | None = None) -> pd.DataFrame:
    """TensorBoard scalars of a run as a long table (tag, step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        return pd.DataFrame(columns=["tag", "step", "value"])
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    wanted = list(tags) if tags is not None else acc.Tags().get("scalars", [])
    rows = [(t, e.step, e.value) for t in wanted if t in acc.Tags().get("scalars", []) for e in acc.Scalars(t)]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])


def images(run_dir: Path) -> list[Path]:
    """The PNG grids a run wrote (reconstructions, progressive prefixes, samples)."""
    return sorted(Path(run_dir).glob("*.png"))


def suites(results: str | Path = ROOT / "results") -> list[Path]:
    """Directories under ``results`` holding a sweep's results.csv."""
    return sorted(p.parent for p in Path(results).rglob("results.csv"))


def summary(results_csv: str | Path, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean and std over seeds per grid point (the paper-style table), from a results.csv."""
    df = pd.read_csv(results_csv)
    df = df[df["status"] == "done"] if "status" in df else df
    fixed = {"suite", "point", "seed", "run_dir", "status", "error"}
    numeric = [c for c in df.columns if c not in fixed and pd.api.types.is_numeric_dtype(df[c])]
    metrics = [m for m in (metrics or numeric) if m in df.columns]
    out = []
    for point, g in df.groupby("point", sort=False):
        row = {"point": point, "seeds": len(g)}
        for m in metrics:
            ms = mean_std(g[m].tolist())
            if ms:
                row[m], row[f"{m} std"] = ms[0], ms[1]
        out.append(row)
    return pd.DataFrame(out).set_index("point") if out else pd.DataFrame()
