"""Helpers for the notebooks: find runs, read their metrics and TensorBoard scalars, summarise sweep results.

Everything returns pandas DataFrames so a notebook cell stays one line."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from lab.config import ROOT
from lab.core.stats import mean_std
from lab.sweeps.findings_data import LOSS_KINDS
from lab.sweeps.report import flatten_metrics


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


def runs_under(target: str | Path) -> list[Path]:
    """What the run notebook shows under ``target``: its runs (and published records, ``results/<suite>/runs/<point>/
    s<seed>``), or, where it holds none, the folders with a metrics.json (the committed results/ of single runs)."""
    target = Path(target)
    runs = find_runs(target)
    return (sorted(runs) if runs and target.name == "results" else runs) or sorted(
        p.parent for p in target.rglob("metrics.json"))


def run_label(run: Path, root: Path | None = None) -> str:
    """A run's name in tables and legends: its ``run_name`` (config.yaml) where it has one, else ``point/s<seed>``
    for a suite's run or record (after the suite's folder when ``root`` holds several), else its path below
    ``root``: never a bare timestamp."""
    run = Path(run)
    cfg = _config(run)
    seed = f"s{cfg['seed']}" if cfg.get("seed") is not None else ""
    if cfg.get("run_name"):
        name = str(cfg["run_name"])
        return name if not seed or seed in name.split() or name.endswith(f"/{seed}") else f"{name} {seed}"
    rel = run.relative_to(root).parts if root and run != root and run.is_relative_to(root) else ()
    if re.fullmatch(r"s\d+", run.name) and run.parent.name:
        above = [p for p in rel[:-2] if p != "runs"]  # results/<suite>/runs/<point>/s<seed>: the suite's folder
        return " ".join([*above[-1:], f"{run.parent.name}/{run.name}"])
    if len(rel) > 1 or (rel and not re.match(r"\d{8}-\d{6}", rel[0])):
        return "/".join(rel)
    return "/".join(run.parts[-2:])  # (a run id is a timestamp: its experiment's folder goes with it)


def latest(root: str | Path = ROOT / "runs") -> Path | None:
    """The most recent sweep (a directory with sweep.json) or run under ``root``."""
    root = Path(root)
    cands = [p.parent for p in root.rglob("sweep.json")] + find_runs(root) if root.is_dir() else []
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def metrics_table(runs: Iterable[Path], root: Path | None = None) -> pd.DataFrame:
    """One row per run: its label (``run_label``) and every final metric, flattened."""
    rows = []
    for r in runs:
        m = json.loads((r / "metrics.json").read_text()) if (r / "metrics.json").is_file() else {}
        row = {"run": run_label(r, root), "finished": bool(m)}
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


def loss_kind(run: Path) -> str:
    """What a run's loss is: the tokenizer's reconstruction loss, or the generator head's (bit BCE, index
    cross-entropy, ...: lab/sweeps/findings_data.py's LOSS_KINDS); "" without a readable config.yaml."""

    cfg = _config(run)
    if cfg.get("stage") == "tokenizer":
        return "reconstruction loss (tokenizer)"
    head = (cfg.get("head") or {}).get("name") if isinstance(cfg.get("head"), dict) else None
    return LOSS_KINDS.get(str(head), f"{head} head") if head else ""


def curve_panels(runs: Iterable[Path], tags: Iterable[str], root: Path | None = None) -> dict[str, list]:
    """{panel title: [(run label, steps, values)]}: one panel per TensorBoard tag and loss kind, so a bit BCE and an
    index cross-entropy logged under the same tag (``val/loss`` of older runs) never share an axis."""
    panels: dict[str, list] = {}
    for run in runs:
        s, kind = scalars(run, tags), loss_kind(run)
        for tag, part in s.groupby("tag", sort=False):
            title = f"{tag}\n{kind}" if kind else tag
            panels.setdefault(title, []).append((run_label(run, root), part["step"].tolist(), part["value"].tolist()))
    order = {t: i for i, t in enumerate(tags)}
    return dict(sorted(panels.items(), key=lambda kv: order.get(kv[0].split("\n")[0], len(order))))


def _config(run: Path) -> dict:
    import yaml  # noqa: PLC0415 - read only here

    try:
        cfg = yaml.safe_load((Path(run) / "config.yaml").read_text()) if (Path(run) / "config.yaml").is_file() else {}
    except yaml.YAMLError:
        cfg = {}
    return cfg if isinstance(cfg, dict) else {}


def images(run_dir: Path) -> list[Path]:
    """The PNG grids a run wrote (reconstructions, progressive prefixes, samples)."""
    return sorted(Path(run_dir).glob("*.png"))


def suites(results: str | Path = ROOT / "results") -> list[Path]:
    """Directories under ``results`` holding a sweep's results.csv."""
    return sorted(p.parent for p in Path(results).rglob("results.csv"))


def default_results(root: Path = ROOT) -> Path:
    """Where the report notebook reads suites: ``$BITLAB_RESULTS``, else runs/ once a sweep finished there, else the
    committed results/ (its suites' results.csv and published records)."""
    env = os.environ.get("BITLAB_RESULTS")
    return Path(env) if env else root / "runs" if suites(root / "runs") else root / "results"


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
