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
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from lab.core.registry import ConfigError
from lab.runtime.files import read_data

# config keys that differ between any two runs without saying anything about them
_BOOKKEEPING = ("name", "run_id", "resume", "runs_dir", "presets", "sweep", "seeds", "report", "resolved", "publish",
                "resume_allow", "logger", "checkpoint_every_n_steps", "run_name", "tags")
# the headline metrics of each stage, for the default view that fits the terminal (--wide: every headline one)
STAGE_HEADLINE = {"tokenizer": ("psnr", "lpips", "rfid", "rkid", "bit_entropy"),
                  "generator": ("val_loss", "gfid", "kid", "gfid_normalized", "bit_accuracy")}
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
        runs = [p] if (p / "config.yaml").is_file() else sorted(
            c.parent for c in p.rglob("config.yaml") if not (c.parent / "tokenizer.json").is_file())  # (published tokenizers)
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


def table(paths: Sequence[str | Path], all_metrics: bool = False, wide: bool = True, tag: str | None = None,
          group_by: str | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows): the run (its ``run_name`` where it has one), the config keys that differ, the status and
    the final metrics (``wide=False``: the headline metrics of the runs' stage only). ``tag``: only runs tagged
    so; ``group_by``: rows sorted by that key's value (which becomes the second column)."""
    runs = find_runs(paths)
    roots = [Path(p) for p in paths if not (Path(p) / "config.yaml").is_file()]
    loaded = [(r, *load_run(r)) for r in runs]
    if tag is not None:
        loaded = [x for x in loaded if tag in _tags(x[0])]
        if not loaded:
            raise ConfigError(f"compare: no run under {', '.join(map(str, paths))} has the tag {tag!r} (a run's tags: tags=[...]).")
    keys = list(dict.fromkeys(k for _, cfg, _, _ in loaded for k in cfg))
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for _, c, _, _ in loaded}) > 1]
    present = list(dict.fromkeys(k for _, _, m, _ in loaded for k in m))
    stages = {str(c.get("stage", "")) for _, c, _, _ in loaded}
    wanted = HEADLINE if wide else tuple(k for s in sorted(stages) for k in STAGE_HEADLINE.get(s, HEADLINE))
    metrics = present if all_metrics else [k for k in dict.fromkeys(wanted) if k in present]
    if group_by:
        if not any(group_by in c for _, c, _, _ in loaded):
            raise ConfigError(f"compare --group-by {group_by}: no run has that key (dotted, as in config.yaml, "
                              f"e.g. quantizer.name).")
        loaded.sort(key=lambda x: json.dumps(x[1].get(group_by), default=str))
        differing = [group_by] + [k for k in differing if k != group_by]
    rows = []
    for run, cfg, m, status in loaded:
        row = {"run": _label(run, roots)} | {k: cfg.get(k, "") for k in differing} | {"status": status}
        rows.append(row | {k: m.get(k, "") for k in metrics})
    return ["run", *differing, "status", *metrics], rows


def _tags(run_dir: Path) -> list[str]:
    tags = read_data(run_dir / "config.yaml").get("tags") or []  # (a damaged file: one paragraph naming it)
    return [str(t) for t in tags] if isinstance(tags, list) else []


def fit(cols: list[str], rows: list[dict], width: int) -> tuple[list[str], list[str]]:
    """The columns that fit ``width`` characters: the run, the status and the metrics first, then the differing
    keys (short names) in order; -> (columns kept, columns left out)."""
    cells = {c: max([len(_short_key(c))] + [len(_fmt(r.get(c, ""))) for r in rows]) for c in cols}
    fixed = [c for c in cols if c in ("run", "status")]
    metric_cols = cols[cols.index("status") + 1:]
    keys = [c for c in cols if c not in fixed and c not in metric_cols]
    kept, used = list(fixed), sum(cells[c] + 2 for c in fixed)
    for c in metric_cols + keys:
        if used + cells[c] + 2 <= width:
            kept.append(c)
            used += cells[c] + 2
    order = [c for c in cols if c in kept]
    return order, [c for c in cols if c not in kept]


def _short_key(key: str) -> str:
    """``quantizer.bits`` -> ``quantizer.bits``; deeper keys keep their last two parts (the header of a column)."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else key


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3g}"
    return "" if v is None else str(v)


def format_table(cols: Sequence[str], rows: Sequence[dict], short: bool = False) -> str:
    heads = [_short_key(c) if short else c for c in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in cells])


def cmd_compare(args: argparse.Namespace) -> None:
    # a terminal gets what fits its width; a file or a pipe (a script, `| less -S`) gets every column
    wide = args.wide or args.all_metrics or args.csv is not None or not sys.stdout.isatty()
    cols, rows = table(args.paths, all_metrics=args.all_metrics or args.csv is not None, wide=wide, tag=args.tag,
                       group_by=args.group_by)
    if args.csv is not None:
        fh = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="")
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        if fh is not sys.stdout:
            fh.close()
            print(f"wrote {len(rows)} runs x {len(cols)} columns to {args.csv}")
        return
    if wide:
        print(format_table(cols, rows))
        return
    width = shutil.get_terminal_size((120, 20)).columns
    kept, left = fit(cols, rows, width)
    print(format_table(kept, rows, short=True))
    if left:
        print(f"({len(left)} more column(s) not shown: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}; "
              "--wide or --csv for every column)")


def register(sub) -> None:
    p = sub.add_parser("compare", help="one table of runs: the config keys that differ and the final metrics")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run directories, or folders holding runs (a sweep's runs/<NAME>, runs/): every run below")
    p.add_argument("--csv", nargs="?", const="-", default=None, metavar="FILE",
                   help="CSV for spreadsheets, every metric included: to FILE, or to stdout without one")
    p.add_argument("--all-metrics", dest="all_metrics", action="store_true",
                   help="every scalar of metrics.json (default: the headline ones)")
    p.add_argument("--wide", action="store_true",
                   help="every differing key and every headline metric, however wide (default: what fits the terminal)")
    p.add_argument("--tag", default=None, help="only the runs with this tag (tags=[...] on the run's command line)")
    p.add_argument("--group-by", dest="group_by", default=None, metavar="KEY",
                   help="sort the runs by a config key (dotted, e.g. quantizer.name), shown as the second column")
    p.set_defaults(func=cmd_compare)
