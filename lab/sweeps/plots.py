"""Plots of a sweep's results (``report.plots`` of a suite YAML), and the TensorBoard scalars they read."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lab.core.registry import ConfigError
from lab.core.numfmt import as_number, slug
from lab.core.stats import mean_std
from lab.sweeps.plan import Job


def make_plots(rows: Sequence[Mapping], jobs: Sequence[Job], specs: Sequence[Mapping], out: Path) -> list[Path]:
    """One PNG per spec. Kinds:

    - ``bar`` / ``line``: metric ``y`` against column ``x``, one bar group / line per ``hue``, mean ± std over seeds;
    - ``scatter``: metric ``y`` against metric ``x`` for every run, coloured by ``hue``, with Pearson's r;
    - ``curve``: a TensorBoard scalar ``tag`` against ``x`` = step or flops (step x flops_per_step), per ``hue``;
    - ``per_scale``: a per-scale metric ``y`` (e.g. accuracy_gap) against the scale, one line per ``hue``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "done"]
    if not done or not specs:
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.get("kind", "bar")
        if kind not in ("bar", "line", "scatter", "curve", "per_scale"):
            raise ConfigError(f"report.plots[{i}]: unknown kind '{kind}'; choose bar, line, scatter, curve or per_scale.")
        hue, x, y = spec.get("hue"), spec.get("x"), spec.get("y")
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
        hues = _ordered(r.get(hue, "") for r in done) if hue else [""]
        title = spec.get("title")
        if kind in ("bar", "line"):
            xs = _ordered(r.get(x) for r in done)
            width = 0.8 / max(1, len(hues))
            for h_i, h in enumerate(hues):
                ms = [mean_std(r.get(y) for r in done if r.get(x) == xv and (not hue or r.get(hue) == h)) for xv in xs]
                pos = [j for j, m in enumerate(ms) if m]
                if not pos:
                    continue
                mean = [ms[j][0] for j in pos]
                err = [ms[j][1] for j in pos]
                if kind == "bar":
                    ax.bar([j + (h_i - (len(hues) - 1) / 2) * width for j in pos], mean, width, yerr=err, capsize=3, label=str(h))
                else:
                    ax.errorbar(pos, mean, yerr=err, marker="o", capsize=3, label=str(h))
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
            ax.set_xlabel(x)
            ax.set_ylabel(y)
        elif kind == "scatter":
            pts = [(as_number(r.get(x)), as_number(r.get(y)), r.get(hue, "")) for r in done]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            for h in hues:
                sel = [p for p in pts if not hue or p[2] == h]
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=str(h))
            heads = _ordered(r.get("head.name", "") for r in done)
            if len(heads) > 1:  # bit BCE and index cross-entropy are never pooled into one r (report: per loss kind)
                title = title or f"{y} vs {x} (r per loss kind: see the report)"
            r_val = pearson([p[0] for p in pts], [p[1] for p in pts]) if len(heads) <= 1 else None
            title = title or f"{y} vs {x}" + (f" (Pearson r = {r_val:.2f}, n = {len(pts)})" if r_val is not None else "")
            ax.set_xlabel(x)
            ax.set_ylabel(y)
        elif kind == "curve":
            tag = spec.get("tag", "val/loss")
            x = x or "step"
            for h in hues:
                for job in jobs:
                    row = next((r for r in done if r["point"] == job.point.label and r["seed"] == job.seed), None)
                    if row is None or (hue and row.get(hue) != h):
                        continue
                    steps, vals = read_scalars(job.run_dir / "tb", tag)
                    if not steps:
                        continue
                    if x == "flops":
                        f = as_number(row.get("flops_per_step")) or float("nan")
                        steps = [s * f for s in steps]
                    ax.plot(steps, vals, marker=".", alpha=0.8, label=f"{h} s{job.seed}" if hue else f"{job.point.label} s{job.seed}")
            if x == "flops":
                ax.set_xscale("log")
            ax.set_xlabel("training FLOPs" if x == "flops" else "step")
            ax.set_ylabel(tag)
        else:  # per_scale
            prefix = f"per_scale.{y}."
            for h in hues:
                group = [r for r in done if not hue or r.get(hue) == h]
                scales = sorted({int(k[len(prefix):]) for r in group for k in r if k.startswith(prefix)})
                ms = [mean_std(r.get(f"{prefix}{s}") for r in group) for s in scales]
                pos = [j for j, m in enumerate(ms) if m]
                if pos:
                    ax.errorbar([scales[j] for j in pos], [ms[j][0] for j in pos], yerr=[ms[j][1] for j in pos],
                                marker="o", capsize=3, label=str(h))
            ax.set_xlabel("scale (side of the token map)")
            ax.set_ylabel(y)
        ax.set_title(title or f"{y or spec.get('tag')} by {x or 'scale'}", fontsize=9)
        if hue or kind == "curve":
            ax.legend(fontsize=7, title=hue, title_fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        what = y or spec.get("tag", "")
        path = out / f"{spec.get('name') or slug(f'{kind}_{what}_{x or hue}')}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _ordered(values: Iterable[Any]) -> list:
    seen: list = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    sxx = sum((a - mx) ** 2 for a in xs)
    syy = sum((b - my) ** 2 for b in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


# the validation loss of each stage and head, under its own name: reconstruction, bit BCE, index CE
STAGE_LOSS_TAGS = ("val/recon_loss", "val/bits_bce", "val/index_ce")


def read_scalars(tb_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a scalar in a run's TensorBoard event files (last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(tb_dir).is_dir():
        return [], []
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    have = acc.Tags().get("scalars", [])
    if tag == "val/loss" and tag not in have:  # each stage's loss has its own tag (lab/train/modules.py, lab/train/generator.py)
        tag = next((t for t in STAGE_LOSS_TAGS if t in have), tag)
    if tag not in have:
        return [], []
    by_step = {e.step: e.value for e in acc.Scalars(tag)}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]
