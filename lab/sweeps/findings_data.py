"""Reading a suite's published results for the findings (``lab/sweeps/findings.py``): its rows, whether it can
decide a finding yet, the cells of a contrast ({seed: value} over rows matched by column values or patterns) and
the loss kind of each run. Light at import, like findings.py.
"""
from __future__ import annotations

import csv
import fnmatch
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

from lab.runtime.files import read_data
from lab.sweeps.findings_table import MIN_SEEDS, PROTOCOL_COLUMNS

ROOT = Path(__file__).resolve().parents[2]  # the repository root (as lab/runtime/files.py; not imported: start-up stays light)
# A run that ended in a recorded failure (out of memory, a diverging loss) is a result of its grid point; a run
# with any other status has not finished.
FAILED_STATUSES = ("out_of_memory", "non_finite_loss")
LOSS_KINDS = {"bitwise": "bit BCE (bitwise head)", "index": "index cross-entropy (index head)",
              "digits": "level cross-entropy per dimension (digits head)", "masked_bits": "masked-bit BCE (masked_bits head)"}


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def num(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def suite_incomplete(columns: Sequence[str], rows: Sequence[Mapping[str, str]], stage: str, of: bool = False) -> str:
    """Why a suite's results cannot decide a finding yet ("" when they can): runs not finished, fewer than
    ``MIN_SEEDS`` seeds in a case, or results from before the evaluation protocol. ``rows``: the rows the finding
    reads (``of``: a part of the suite's, which the message then says)."""
    reasons = []
    done = [r for r in rows if r.get("status") == "done"]
    lacking = protocol_lacking(columns, rows, stage)
    if lacking:
        reasons.append(f"not yet rerun under the protocol (no {' / '.join(lacking)} in its results: they predate "
                       "issue 13's evaluation)")
    unfinished = [r for r in rows if r.get("status") not in ("done", *FAILED_STATUSES)]
    if unfinished:
        reasons.append(f"{len(unfinished)} of the {len(rows)} runs {'its contrasts compare' if of else 'of its suite'} "
                       "not finished")
    seeds: dict[str, set] = {}
    for r in done:
        seeds.setdefault(r["point"], set()).add(r["seed"])
    fewest = min((len(s) for s in seeds.values()), default=0)
    if fewest < MIN_SEEDS:
        reasons.append(f"{fewest} seed{'s' if fewest != 1 else ''} in its smallest case (< {MIN_SEEDS})")
    return "; ".join(reasons)


def protocol_lacking(columns: Sequence[str], rows: Sequence[Mapping[str, str]], stage: str) -> list[str]:
    """The evaluation protocol's columns (``PROTOCOL_COLUMNS`` of the stage) that a suite's results lack, or lack
    a value of in a finished run: non-empty means its numbers predate the protocol."""
    done = [r for r in rows if r.get("status") == "done"]
    return [c for c in PROTOCOL_COLUMNS.get(stage, ()) if c not in columns or any(num(r.get(c)) is None for r in done)]


def preset_of(report: Path) -> str:
    """The preset a published report names (``Preset `cpu`.``, lab/sweeps/report.py); "" without one."""
    if not report.is_file():
        return ""
    m = re.search(r"Preset `([\w-]+)`", report.read_text())
    return m.group(1) if m else ""


def matches(row: Mapping[str, str], where: Mapping[str, str]) -> bool:
    return all(fnmatch.fnmatchcase(str(row.get(k, "")), pattern) for k, pattern in where.items())


def cell(rows: Sequence[Mapping[str, str]], metric: str, **fixed: str) -> dict[int, float]:
    """{seed: value} of ``metric`` over the finished rows whose columns equal ``fixed``."""
    out = {}
    for r in rows:
        if r.get("status") == "done" and all(str(r.get(k, "")) == v for k, v in fixed.items()):
            x = num(r.get(metric))
            if x is not None:
                out[int(r["seed"])] = x
    return out


def groups(rows: Sequence[Mapping[str, str]], within: Sequence[str]) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    for r in rows:
        g = {c: str(r.get(c, "")) for c in within}
        if g not in seen:
            seen.append(g)
    return seen


def group_text(g: Mapping[str, str]) -> str:
    return ", ".join(f"{k} = {v}" if k != "case" else v for k, v in g.items())


def loss_kind_of(rows: Sequence[Mapping[str, str]], suite: str) -> dict[str, list[Mapping[str, str]]]:
    """Runs grouped by the loss their validation loss is (bit BCE or index cross-entropy): by the ``head.name``
    column where the suite sweeps the head, else by the head its YAML (or ``base.yaml``) sets for every run."""
    if any(r.get("head.name") for r in rows):
        out: dict[str, list] = {}
        for r in rows:
            out.setdefault(LOSS_KINDS.get(r["head.name"], f"{r['head.name']} head"), []).append(r)
        return out
    head = yaml_head(ROOT / "experiments" / "ablations" / f"{suite}.yaml") or yaml_head(ROOT / "experiments" / "base.yaml")
    return {LOSS_KINDS.get(head or "", f"{head or 'unknown'} head"): list(rows)}


def yaml_head(path: Path) -> str | None:

    if not path.is_file():
        return None
    node = read_data(path).get("head") or {}
    return node.get("name") if isinstance(node, dict) else None
