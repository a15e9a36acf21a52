"""``python -m lab compare PATH... [--csv [FILE]] [--all-metrics]``: one table of runs, like a W&B runs table.

A PATH is a run directory (it holds config.yaml), or any folder above runs (a sweep's suite directory, an
experiment's folder, ``runs/`` itself): every run below it is a row. Columns: the run (its path), the config
keys whose values differ between the rows, then the final metrics (metrics.json). Reads files only (no torch).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from lab.core.registry import ConfigError
from lab.runtime.files import read_data

# config keys that differ between any two runs without saying anything about them
_BOOKKEEPING = ("name", "run_id", "resume", "runs_dir", "presets", "sweep", "seeds", "report")
# the metrics shown by default, in this order (those no row has are left out); --all-metrics shows every one
HEADLINE = ("psnr", "ssim", "lpips", "rfid", "rkid", "bit_entropy", "codebook_usage", "val_loss", "bit_accuracy",
            "token_accuracy", "gfid", "kid", "gfid_normalized", "params", "head_params", "flops_per_step", "steps", "wall_time_s",
            "peak_memory_mb")


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding config.yaml) at or below each path, in order, each once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"compare: {p} does not exist; give run directories (runs/<NAME>/<run-id>) or folders "
                              "holding runs (a sweep's runs/<NAME>, or runs/).")
        runs = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        if not runs:
            raise ConfigError(f"compare: no run under {p} (no config.yaml at or below it).")
        found += [r for r in runs if r not in found]
    return found


def flatten(d: Any, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = json.dumps(v) if any(isinstance(x, (dict, list)) for x in v) else ",".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run(run_dir: Path) -> tuple[dict, dict, str]:
    """(flat config, flat scalar metrics, status) of one run."""
    cfg = flatten(read_data(run_dir / "config.yaml"))
    cfg = {k: v for k, v in cfg.items() if k.split(".")[0] not in _BOOKKEEPING}
    metrics, status = {}, "running or stopped"
    if (run_dir / "metrics.json").is_file():
        raw = read_data(run_dir / "metrics.json")
        metrics = {k: v for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        status = "done"
    elif (run_dir / "failed.json").is_file():
        status = read_data(run_dir / "failed.json").get("status", "failed")
    return cfg, metrics, status


def _label(run: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        if run != root and root in run.parents:
            return str(run.relative_to(root))
    return str(run)


def table(paths: Sequence[str | Path], all_metrics: bool = False) -> tuple[list[str], list[dict]]:
    """(columns, rows): the run, the config keys that differ, the status and the final metrics."""
    runs = find_runs(paths)
    roots = [Path(p) for p in paths if not (Path(p) / "config.yaml").is_file()]
    loaded = [(r, *load_run(r)) for r in runs]
    keys = list(dict.fromkeys(k for _, cfg, _, _ in loaded for k in cfg))
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for _, c, _, _ in loaded}) > 1]
    present = list(dict.fromkeys(k for _, _, m, _ in loaded for k in m))
    metrics = present if all_metrics else [k for k in HEADLINE if k in present]
    rows = []
    for run, cfg, m, status in loaded:
        row = {"run": _label(run, roots)} | {k: cfg.get(k, "") for k in differing} | {"status": status}
        rows.append(row | {k: m.get(k, "") for k in metrics})
    return ["run", *differing, "status", *metrics], rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3g}"
    return "" if v is None else str(v)


def format_table(cols: Sequence[str], rows: Sequence[dict]) -> str:
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def cmd_compare(args: argparse.Namespace) -> None:
    cols, rows = table(args.paths, all_metrics=args.all_metrics or args.csv is not None)
    if args.csv is not None:
        fh = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="")
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        if fh is not sys.stdout:
            fh.close()
            print(f"wrote {len(rows)} runs x {len(cols)} columns to {args.csv}")
        return
    print(format_table(cols, rows))


def register(sub) -> None:
    p = sub.add_parser("compare", help="one table of runs: the config keys that differ and the final metrics")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run directories, or folders holding runs (a sweep's runs/<NAME>, runs/): every run below")
    p.add_argument("--csv", nargs="?", const="-", default=None, metavar="FILE",
                   help="CSV for spreadsheets, every metric included: to FILE, or to stdout without one")
    p.add_argument("--all-metrics", dest="all_metrics", action="store_true",
                   help="every scalar of metrics.json (default: the headline ones)")
    p.set_defaults(func=cmd_compare)
