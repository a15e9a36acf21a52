"""The ablation report notebook's view of one suite's results.csv: its stage, whether its numbers predate the
evaluation protocol, which loss each run's validation loss is and which tokenizer it ran on, correlations
computed within one (loss kind, tokenizer) group only, and the suite's plots (``report.plots`` of its YAML) drawn
from its rows, faceted by loss kind wherever a loss is on an axis. The definitions (loss kinds, the protocol's
columns) are lab/sweeps/findings_data.py's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from lab.config import ROOT
from lab.core.numfmt import decimals_for, fmt_mean_sd
from lab.core.stats import mean_std, pearson
from lab.runtime.files import read_data
from lab.sweeps.findings_data import loss_kind_of, protocol_lacking

# metrics (and TensorBoard tags) in the units of the head's own loss: never two loss kinds on one axis
LOSS_METRICS = ("val_loss", "train_loss", "loss", "per_scale.val_loss")
WHY_KINDS = ("an index head's cross-entropy per token, a bitwise head's BCE per bit, a masked-bit head's BCE on its "
             "masked bits and a digits head's cross-entropy per level are different numbers (an index CE of 5.2 and "
             "a bit BCE of 0.26 can belong to equally good models)")
WHY_TOKENIZERS = ("tokenizers of different quantizers or vocabularies give losses on different scales (a BCE per "
                  "bit of a 10-bit and of a 32-bit code) and gFIDs with different floors")


HEADLINE = {"generator": ["val_loss", "bit_accuracy", "gfid", "kid", "gfid_normalized", "head_params", "peak_memory_mb"],
            "tokenizer": ["psnr", "lpips", "rfid", "rkid", "bit_entropy", "codebook_usage", "peak_memory_mb"]}


def is_loss(metric: str) -> bool:
    return "/" in metric or any(metric == m or metric.startswith(m + ".") for m in LOSS_METRICS)


@dataclass
class Suite:
    """A suite's results: ``rows`` are its finished runs with ``loss_kind`` and ``tokenizer`` (a readable label of
    the tokenizer the run used) added; ``lacking`` the protocol columns its results lack."""
    name: str
    path: Path
    rows: pd.DataFrame
    stage: str
    lacking: list[str]
    spec: dict = field(default_factory=dict)

    @property
    def mark(self) -> str:
        return f"pre-protocol: no {' / '.join(self.lacking)}" if self.lacking else ""

    @property
    def title(self) -> str:
        return f"{self.name} ({self.mark})" if self.mark else self.name

    @property
    def kinds(self) -> list[str]:
        return [k for k in dict.fromkeys(self.rows["loss_kind"]) if k]

    @property
    def tokenizers(self) -> list[str]:
        return [t for t in dict.fromkeys(self.rows["tokenizer"]) if t]

    def plots(self) -> list[dict]:
        """The plots its YAML declares (``report.plots``), else a bar per headline metric against the point."""
        specs = [dict(s) for s in (self.spec.get("report") or {}).get("plots") or []]
        if specs:
            return specs
        ys = ["gfid", "val_loss"] if self.stage == "generator" else ["psnr", "rfid"]
        return [{"kind": "bar", "x": "point", "y": y} for y in ys if y in self.rows]


def load(suite_dir: str | Path, name: str | None = None) -> Suite:
    path = Path(suite_dir)
    csv = path / "results.csv" if path.is_dir() else path
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    columns, records = list(raw.columns), raw.to_dict("records")
    full = str(raw["suite"].iloc[0]) if "suite" in raw and len(raw) else csv.parent.name
    yaml = ROOT / "experiments" / f"{full}.yaml"
    spec = read_data(yaml) if yaml.is_file() else {}
    cols = set(columns)
    stage = str(spec.get("stage") or ("generator" if cols & {"gfid", "val_loss"} else
                                      "tokenizer" if "psnr" in cols else ""))
    lacking = protocol_lacking(columns, records, stage)
    done = [i for i, r in enumerate(records) if r.get("status", "done") == "done"]
    rows = pd.read_csv(csv).iloc[done].reset_index(drop=True)
    recs = [dict(records[i], _row=j) for j, i in enumerate(done)]
    kind = [""] * len(recs)
    if stage == "generator" and recs:
        for k, group in loss_kind_of(recs, full.rstrip("/").split("/")[-1]).items():
            for r in group:
                kind[r["_row"]] = k
    rows["loss_kind"] = kind
    rows["tokenizer"] = tokenizer_labels(raw.iloc[done].reset_index(drop=True), spec)
    return Suite(name or csv.parent.name, csv.parent, rows, stage, lacking, spec)


def tokenizer_labels(raw: pd.DataFrame, spec: Mapping[str, Any]) -> list[str]:
    """Per run, a readable name of the tokenizer it used: its quantizer columns (and its case, where the suite's
    cases set the quantizer), else the cached tokenizer's hash; a hash is added where one name covers two."""
    cases = ((spec.get("sweep") or {}).get("cases") or []) if isinstance(spec.get("sweep"), dict) else []
    readable = [c for c in raw.columns if c == "quantizer" or c.startswith("quantizer.")]
    if any(isinstance(c, dict) and ("quantizer" in c or "tokenizer_from" in c) for c in cases) and "case" in raw:
        readable.append("case")
    path = raw["tokenizer"] if "tokenizer" in raw else pd.Series([""] * len(raw))
    short = [(m.group(1)[:8] if (m := re.search(r"_tokenizers/([0-9a-f]+)", p)) else Path(p).name) for p in path]
    labels = [" ".join(str(raw[c].iloc[i]) for c in readable if raw[c].iloc[i]) for i in range(len(raw))]
    ambiguous = len(set(zip(labels, path))) > len(set(labels))
    return [(f"{lab} (tokenizer {s})" if lab and s and ambiguous else lab or (f"tokenizer {s}" if s else ""))
            for lab, s in zip(labels, short)]


def correlations(suite: Suite, x: str = "val_loss", y: str = "gfid") -> pd.DataFrame:
    """Pearson r(x, y) within each (loss kind, tokenizer) group, never pooled across them."""
    out = []
    if not {x, y} <= set(suite.rows):
        return pd.DataFrame(columns=["loss kind", "tokenizer", "runs", "r", "note"])
    for (kind, tok), g in suite.rows.groupby(["loss_kind", "tokenizer"], sort=False):
        g = g.dropna(subset=[x, y])
        r = pearson(g[x].tolist(), g[y].tolist()) if len(g) >= 3 else None
        note = "" if r is not None else ("fewer than 3 runs: no r" if len(g) < 3 else "one variable constant: no r")
        out.append({"loss kind": kind, "tokenizer": tok, "runs": len(g), "r": float("nan") if r is None else r,
                    "note": note})
    return pd.DataFrame(out)


def pooling_note(suite: Suite) -> str:
    """Markdown saying why the suite's loss correlations are per group ("" for a suite with one loss kind and one
    tokenizer, or without a validation loss)."""
    if "val_loss" not in suite.rows:
        return ""
    kinds, toks = suite.kinds, suite.tokenizers
    parts = [(f"{len(kinds)} loss kinds ({', '.join(kinds)})", WHY_KINDS) if len(kinds) > 1 else None,
             (f"{len(toks)} tokenizers ({', '.join(toks)})", WHY_TOKENIZERS) if len(toks) > 1 else None]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return (f"**{suite.name}** has {' and '.join(p[0] for p in parts)}: r is computed within each (loss kind, "
            f"tokenizer) group, never over all its runs, because {'; and '.join(p[1] for p in parts)}. A pooled r "
            "would measure the gap between the groups, not whether a lower loss goes with a better gFID.")


def table(suite: Suite, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per point (``mean ± std`` text: a table that fits the notebook), of ``metrics`` or the
    suite YAML's ``report.metrics``, with the point's tokenizer where the suite has several; a loss metric of a suite
    with several loss kinds becomes one column per kind."""
    metrics = metrics or (suite.spec.get("report") or {}).get("metrics") or HEADLINE.get(suite.stage, [])
    metrics = [m for m in metrics if m in suite.rows and suite.rows[m].notna().any()]
    per_kind = len(suite.kinds) > 1
    decimals = {(m, k): decimals_for(g[m].dropna().tolist()) for m in metrics
                for k, g in (suite.rows.groupby("loss_kind") if per_kind and is_loss(m) else [("", suite.rows)])}
    rows = []
    for point, g in suite.rows.groupby("point", sort=False):
        row = {"point": point, "seeds": len(g)}
        if len(suite.tokenizers) > 1:
            row["tokenizer"] = g["tokenizer"].iloc[0]
        for m in metrics:
            ms = mean_std(g[m].tolist())
            kind = g["loss_kind"].iloc[0] if per_kind and is_loss(m) else ""
            text = fmt_mean_sd(ms[0], ms[1], ms[2], decimals[(m, kind)], len(g)) if ms else ""
            if kind:  # one column per loss kind: never two kinds in one column
                row.update({f"{m}: {k}": text if k == kind else "" for k in suite.kinds})
            else:
                row[m] = text
        rows.append(row)
    return pd.DataFrame(rows).set_index("point") if rows else pd.DataFrame()
