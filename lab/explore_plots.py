"""The ablation report notebook's plots, drawn from a suite's rows (lab/explore_suites.py) at notebook width:
one panel per loss kind wherever a loss is on an axis (a bit BCE and an index cross-entropy never share one),
the loss kind named on the axis, correlations per (loss kind, tokenizer) group in the legend, and the suite's
pre-protocol mark in the title.

A spec is one of a suite YAML's ``report.plots`` (lab/sweeps/plots.py): ``bar`` / ``line`` (metric ``y`` against
column ``x`` per ``hue``, mean +- std over seeds), ``scatter`` (metric against metric, every run), ``per_scale``
(``per_scale.<y>.<scale>`` against the scale) and ``curve`` (a TensorBoard scalar: needs the runs' event files).
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from lab.core.stats import mean_std, pearson
from lab.explore_suites import Suite, is_loss

WIDTH = 10.0  # inches: a notebook's width at the default 100 dpi, with room for the legend


def draw(suite: Suite, spec: Mapping[str, Any], width: float = WIDTH) -> tuple[Any, str]:
    """(figure, "") or (None, why it cannot be drawn from what the suite holds)."""
    import matplotlib.pyplot as plt

    kind, x, y, hue = spec.get("kind", "bar"), spec.get("x"), spec.get("y"), spec.get("hue")
    rows = suite.rows
    if kind == "curve":
        curves = _curves(suite, spec.get("tag", "val/loss"))
        if curves.empty:
            return None, (f"{spec.get('tag', 'val/loss')} curves: the runs' TensorBoard files are not under "
                          f"{suite.path} (published results hold final metrics; a sweep under runs/ has them)")
        rows = curves
    if kind in ("bar", "line") and x not in rows:
        x = "point"
    if hue and hue not in rows:
        hue = None
    cols = [c for c in (x, y) if c] if kind in ("bar", "line", "scatter") else []
    if any(c not in rows for c in cols) or (kind == "per_scale" and not _scale_columns(rows, y)):
        return None, f"{kind} of {y}: no such column in {suite.path / 'results.csv'}"
    loss = kind == "curve" or is_loss(str(y)) or (kind == "scatter" and is_loss(str(x)))
    facets = [k for k in dict.fromkeys(rows["loss_kind"])] if loss and len(suite.kinds) > 1 else [None]
    fig, axes = plt.subplots(1, len(facets), figsize=(min(width, 2 + 4.3 * len(facets)), 4.0), squeeze=False)
    for ax, facet in zip(axes[0], facets):
        part = rows[rows["loss_kind"] == facet] if facet is not None else rows
        if kind in ("bar", "line"):
            _bars(ax, part, x, y, hue, kind)
        elif kind == "scatter":
            _scatter(ax, part, x, y, hue, suite)
        elif kind == "per_scale":
            _per_scale(ax, part, y, hue)
        else:
            _curve(ax, part, spec.get("x") or "step", hue)
        ylabel = spec.get("tag", "val/loss") if kind == "curve" else (
            f"per-scale {y}" if kind == "per_scale" else str(y))
        lk = facet or (suite.kinds[0] if loss and suite.kinds else "")
        y_loss = kind == "curve" or is_loss(str(y))
        log = " (log scale)" if ax.get_yscale() == "log" else ""
        ax.set_ylabel(f"{ylabel}{log}\n{lk}" if y_loss and lk else f"{ylabel}{log}", fontsize=9)
        ax.set_title(lk if facet is not None else "", fontsize=9)
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1 or kind == "scatter" and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title=None if kind == "scatter" and len(suite.tokenizers) > 1 else hue,
                      title_fontsize=8)
    what = f"{spec.get('tag')} against {spec.get('x') or 'step'}" if kind == "curve" else (
        f"{y} against {x}" if kind != "per_scale" else f"{y} per scale")
    fig.suptitle(f"{suite.title}\n{what}", fontsize=10)
    fig.tight_layout()
    return fig, ""


def _bars(ax, rows: pd.DataFrame, x: str, y: str, hue: str | None, kind: str) -> None:
    xs = list(dict.fromkeys(rows[x]))
    hues = list(dict.fromkeys(rows[hue])) if hue else [None]
    width = 0.8 / len(hues)
    for h_i, h in enumerate(hues):
        sub = rows[rows[hue] == h] if hue else rows
        stats = [mean_std(sub[sub[x] == v][y].tolist()) for v in xs]
        pos = [i for i, s in enumerate(stats) if s]
        if not pos:
            continue
        mean, err = [stats[i][0] for i in pos], [stats[i][1] for i in pos]
        label = None if h is None else str(h)
        if kind == "bar":
            ax.bar([i + (h_i - (len(hues) - 1) / 2) * width for i in pos], mean, width, yerr=err, capsize=3, label=label)
        else:
            ax.errorbar(pos, mean, yerr=err, marker="o", capsize=3, label=label)
    long = len(xs) > 4 or max((len(str(v)) for v in xs), default=0) > 10
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=30 if long else 0, ha="right" if long else "center",
                  fontsize=8)
    ax.set_xlabel(x, fontsize=9)
    ax.set_xlim(-0.6, len(xs) - 0.4)
    values = rows[y].dropna()
    if len(values) and values.min() > 0 and values.max() / values.min() > 50:  # (head parameters: 1.5K and 528K)
        ax.set_yscale("log")


def _scatter(ax, rows: pd.DataFrame, x: str, y: str, hue: str | None, suite: Suite) -> None:
    """Coloured by tokenizer where the panel has several (r per tokenizer in the legend), else by ``hue`` with
    one r over the panel in its title."""
    by_tok = rows["tokenizer"].nunique() > 1
    key = "tokenizer" if by_tok else hue
    for h, g in (rows.groupby(key, sort=False) if key else [(None, rows)]):
        g = g.dropna(subset=[x, y])
        r = pearson(g[x].tolist(), g[y].tolist()) if by_tok and len(g) >= 3 else None
        label = None if h is None else f"{h}" + (f" (r = {r:.2f}, n = {len(g)})" if r is not None else
                                                 (f" (n = {len(g)}, no r)" if by_tok else ""))
        ax.scatter(g[x], g[y], label=label, s=22)
    if not by_tok:
        g = rows.dropna(subset=[x, y])
        r = pearson(g[x].tolist(), g[y].tolist()) if len(g) >= 3 else None
        ax.text(0.02, 0.97, f"Pearson r = {r:.2f}, n = {len(g)}" if r is not None else f"n = {len(g)}: no r",
                transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlabel(f"{x}" + (f": {rows['loss_kind'].iloc[0]}" if is_loss(x) and len(rows) and
                            rows["loss_kind"].iloc[0] else ""), fontsize=9)


def _scale_columns(rows: pd.DataFrame, y: str) -> list[tuple[int, str]]:
    prefix = f"per_scale.{y}."
    return sorted((int(c[len(prefix):]), c) for c in rows.columns if c.startswith(prefix) and c[len(prefix):].isdigit())


def _per_scale(ax, rows: pd.DataFrame, y: str, hue: str | None) -> None:
    scales = _scale_columns(rows, y)
    for h, g in (rows.groupby(hue, sort=False) if hue else [(None, rows)]):
        stats = [mean_std(g[c].tolist()) for _, c in scales]
        pts = [(s, m) for (s, _), m in zip(scales, stats) if m]
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3,
                    label=None if h is None else str(h))
    ax.set_xticks([s for s, _ in scales])
    ax.set_xlabel("scale (side of the token map)", fontsize=9)


def _curves(suite: Suite, tag: str) -> pd.DataFrame:
    """The rows' TensorBoard scalar ``tag`` (long: one row per logged step), from run dirs that still exist."""
    from lab.explore import scalars

    parts = []
    for _, row in suite.rows.iterrows():
        run = suite.path / str(row.get("run_dir", ""))
        if row.get("run_dir") and (run / "tb").is_dir():
            s = scalars(run, [tag])
            if len(s):
                parts.append(s.assign(**{k: row[k] for k in suite.rows.columns if k not in s}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _curve(ax, rows: pd.DataFrame, x: str, hue: str | None) -> None:
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (h, g) in enumerate(rows.groupby(hue or "point", sort=False)):
        for j, (seed, run) in enumerate(g.groupby("seed", sort=True)):
            xs = run["step"] * run["flops_per_step"] if x == "flops" and "flops_per_step" in run else run["step"]
            ax.plot(xs, run["value"], color=colours[i % len(colours)], alpha=0.85, label=str(h) if j == 0 else None)
    ax.set_xlabel("training FLOPs" if x == "flops" else "step", fontsize=9)

