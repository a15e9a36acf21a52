"""Writes notebooks/explore_runs.ipynb and notebooks/ablation_report.ipynb (unexecuted; the tests run them).

python scripts/make_notebooks.py
"""
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
SETUP = """import os, sys
from pathlib import Path
ROOT = Path.cwd() if (Path.cwd() / "lab").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
import matplotlib.pyplot as plt
import pandas as pd
from lab import explore
pd.set_option("display.max_columns", 40, "display.width", 200)"""


PARAMS_RUN = """# Parameters: a run or sweep directory. None: $BITLAB_RUN, else the newest run or sweep under runs/,
# else the committed results/ (which hold metrics and images, not every run).
TARGET = None"""

PARAMS_RESULTS = """# Parameters: one suite (runs/<suite> or results/<suite>) or a folder holding suites. None: $BITLAB_RESULTS,
# else runs/ when a sweep has finished there, else the committed results/.
RESULTS = None"""


def _parameters(source: str) -> nbf.NotebookNode:
    cell = nbf.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]  # papermill: `papermill nb.ipynb out.ipynb -p TARGET runs/...`
    return cell


def explore_runs() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell(
            "# Explore runs\n\nSet `TARGET` below to a run or a sweep directory (default: the newest under `runs/`). "
            "Shows the final metrics, the learning curves read from the TensorBoard event files, and the image "
            "grids. For side-by-side comparison: `python -m lab compare runs/...` or `tensorboard --logdir runs/`."),
        _parameters(PARAMS_RUN),
        nbf.v4.new_code_cell(SETUP),
        nbf.v4.new_code_cell(
            'TARGET = Path(TARGET or os.environ.get("BITLAB_RUN") or explore.latest(ROOT / "runs") or ROOT / "results")\n'
            "RUNS = explore.find_runs(TARGET) or sorted(p.parent for p in TARGET.rglob('metrics.json'))\n"
            'print(f"{TARGET}: {len(RUNS)} run(s)")'),
        nbf.v4.new_markdown_cell("## Final metrics (`metrics.json`, one row per run)"),
        nbf.v4.new_code_cell(
            "table = explore.metrics_table(RUNS, root=TARGET)\n"
            "headline = [c for c in ['psnr', 'lpips', 'rfid', 'bit_entropy', 'codebook_usage', 'val_loss', 'bit_accuracy',\n"
            "            'gfid', 'params', 'head_params', 'wall_time_s'] if c in table]\n"
            "table[headline]"),
        nbf.v4.new_markdown_cell(
            "## Learning curves (TensorBoard scalars)\n\nOne panel per loss kind: the tokenizer's reconstruction loss, "
            "the bitwise head's BCE per bit and the index head's cross-entropy are different numbers. "
            "(`val/loss` is how runs made before the stage-specific tags named all three.)"),
        nbf.v4.new_code_cell(
            "TAGS = ['train/loss', 'val/recon_loss', 'train/bits_bce', 'val/bits_bce', 'train/index_ce', 'val/index_ce', 'val/loss']\n"
            "curves = {run: explore.scalars(run, TAGS) for run in RUNS}\n"
            "present = [t for t in TAGS if any((s.tag == t).any() for s in curves.values())]\n"
            "if present:\n"
            "    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.3), squeeze=False)\n"
            "    for ax, tag in zip(axes[0], present):\n"
            "        for run, s in curves.items():\n"
            "            part = s[s.tag == tag]\n"
            "            if len(part):\n"
            "                label = str(run.relative_to(TARGET)) if run != TARGET else run.name\n"
            "                ax.plot(part.step, part.value, marker='.' if tag.startswith('val') else None, label=label)\n"
            "        ax.set_title(tag); ax.set_xlabel('step'); ax.grid(alpha=0.3)\n"
            "    if len(RUNS) <= 12: axes[0][-1].legend(fontsize=7)\n"
            "    plt.tight_layout()\n"
            "else:\n"
            "    print('no TensorBoard scalars under', TARGET)"),
        nbf.v4.new_markdown_cell("## Image grids (reconstructions, progressive prefixes, samples)"),
        nbf.v4.new_code_cell(
            "from PIL import Image\n"
            "for run in RUNS[:4]:\n"
            "    for png in explore.images(run):\n"
            "        img = Image.open(png)\n"
            "        title = str(png.relative_to(TARGET)) if png.is_relative_to(TARGET) else str(png)\n"
            "        plt.figure(figsize=(min(12, img.width / 40), min(6, img.height / 40) + 0.4))\n"
            "        plt.imshow(img); plt.axis('off'); plt.title(title, fontsize=8)\n"
            "plt.show()"),
    ]
    return nb


def ablation_report() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell(
            "# Ablation report\n\nThe paper-style tables and plots of your sweeps: set `RESULTS` below to a suite "
            "(`runs/ablations/<suite>`) or a folder of suites. The default is `runs/` once a sweep finished there "
            "(`make experiment NAME=ablations/<suite>`), else the committed `results/` (published with "
            "`python -m lab report ablations/<suite> --out results/<suite>`)."),
        _parameters(PARAMS_RESULTS),
        nbf.v4.new_code_cell(SETUP),
        nbf.v4.new_code_cell(
            'RESULTS = Path(RESULTS or os.environ.get("BITLAB_RESULTS") or\n'
            '               (ROOT / "runs" if explore.suites(ROOT / "runs") else ROOT / "results"))\n'
            "SUITES = explore.suites(RESULTS)\n"
            "name = lambda suite: str(suite.relative_to(RESULTS)) if suite != RESULTS else suite.name\n"
            "print(RESULTS, [name(s) for s in SUITES])"),
        nbf.v4.new_markdown_cell("## Mean ± std over seeds, per suite"),
        nbf.v4.new_code_cell(
            "from IPython.display import Markdown, display\n"
            "KEY = ['psnr', 'lpips', 'rfid', 'bit_entropy', 'codebook_usage', 'peak_memory_mb', 'head_params',\n"
            "       'val_loss', 'bit_accuracy', 'gfid', 'sample_images_per_s', 'flops_per_step']\n"
            "for suite in SUITES:\n"
            "    table = explore.summary(suite / 'results.csv', KEY)\n"
            "    display(Markdown(f'### {name(suite)}'))\n"
            "    display(table.round(4))"),
        nbf.v4.new_markdown_cell("## Plots"),
        nbf.v4.new_code_cell(
            "from PIL import Image\n"
            "for suite in SUITES:\n"
            "    pngs = sorted((suite / 'plots').glob('*.png'))\n"
            "    if not pngs:\n"
            "        continue\n"
            "    fig, axes = plt.subplots(1, len(pngs), figsize=(4.5 * len(pngs), 3.3), squeeze=False)\n"
            "    for ax, png in zip(axes[0], pngs):\n"
            "        ax.imshow(Image.open(png)); ax.axis('off'); ax.set_title(str(png.relative_to(RESULTS)), fontsize=8)\n"
            "    fig.suptitle(name(suite))\n"
            "plt.show()"),
        nbf.v4.new_markdown_cell(
            "## Validation loss against gFID (Infinity Fig.10)\n\nWithin one suite and one loss kind only: a bitwise "
            "head's loss is a BCE per bit, an index head's a cross-entropy per token, and suites differ in "
            "vocabulary and data, so pooling them mixes incomparable numbers. The r of a suite whose report has a "
            "`val_loss`-`gfid` scatter is the one in that plot's title."),
        nbf.v4.new_code_cell(
            "groups = []\n"
            "for suite in SUITES:\n"
            "    df = pd.read_csv(suite / 'results.csv')\n"
            "    if not {'val_loss', 'gfid'} <= set(df):\n"
            "        continue\n"
            "    df = df.dropna(subset=['val_loss', 'gfid'])\n"
            "    # the loss kind: the head, when the suite sweeps it (else one head for the whole suite)\n"
            "    for kind, g in (df.groupby('head.name') if 'head.name' in df else [('one head', df)]):\n"
            "        groups.append((name(suite), kind, g))\n"
            "for suite, kind, g in groups:\n"
            "    r = g['val_loss'].corr(g['gfid']) if len(g) >= 3 else float('nan')\n"
            "    print(f'{suite} ({kind} loss): Pearson r(val_loss, gFID) = {r:.2f} over {len(g)} runs'\n"
            "          + ('' if len(g) >= 3 else ' (fewer than 3 runs: no correlation)'))\n"
            "    plt.scatter(g['val_loss'], g['gfid'], label=f'{suite} ({kind})')\n"
            "if groups:\n"
            "    plt.xlabel('validation loss'); plt.ylabel('gFID'); plt.legend(fontsize=7); plt.grid(alpha=0.3)\n"
            "else:\n"
            "    print('no suite with both val_loss and gfid')"),
    ]
    return nb


if __name__ == "__main__":
    for name, nb in (("explore_runs", explore_runs()), ("ablation_report", ablation_report())):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nbf.write(nb, path)
        print(path)
