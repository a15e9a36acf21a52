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


def explore_runs() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell(
            "# Explore runs\n\nPick a run or a sweep directory (default: the newest under `runs/`; the tests set "
            "`BITLAB_RUN`). Shows the final metrics, the learning curves read from the TensorBoard event files, "
            "and the image grids. For side-by-side comparison use TensorBoard: `tensorboard --logdir runs/`."),
        nbf.v4.new_code_cell(SETUP),
        nbf.v4.new_code_cell(
            'TARGET = Path(os.environ.get("BITLAB_RUN") or explore.latest(ROOT / "runs") or ROOT / "runs")\n'
            "RUNS = explore.find_runs(TARGET)\n"
            'print(f"{TARGET}: {len(RUNS)} run(s)")'),
        nbf.v4.new_markdown_cell("## Final metrics (`metrics.json`, one row per run)"),
        nbf.v4.new_code_cell(
            "table = explore.metrics_table(RUNS, root=TARGET)\n"
            "headline = [c for c in ['psnr', 'lpips', 'rfid', 'bit_entropy', 'codebook_usage', 'val_loss', 'bit_accuracy',\n"
            "            'gfid', 'params', 'head_params', 'wall_time_s'] if c in table]\n"
            "table[headline]"),
        nbf.v4.new_markdown_cell("## Learning curves (TensorBoard scalars)"),
        nbf.v4.new_code_cell(
            "fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))\n"
            "for run in RUNS:\n"
            "    s = explore.scalars(run, ['train/loss', 'val/loss'])\n"
            "    label = str(run.relative_to(TARGET)) if run != TARGET else run.name\n"
            "    for ax, tag in zip(axes, ['train/loss', 'val/loss']):\n"
            "        part = s[s.tag == tag]\n"
            "        ax.plot(part.step, part.value, marker='.' if tag.startswith('val') else None, label=label)\n"
            "        ax.set_title(tag); ax.set_xlabel('step'); ax.grid(alpha=0.3)\n"
            "if len(RUNS) <= 12: axes[1].legend(fontsize=7)\n"
            "plt.tight_layout()"),
        nbf.v4.new_markdown_cell("## Image grids (reconstructions, progressive prefixes, samples)"),
        nbf.v4.new_code_cell(
            "from PIL import Image\n"
            "for run in RUNS[:4]:\n"
            "    for png in explore.images(run):\n"
            "        img = Image.open(png)\n"
            "        plt.figure(figsize=(min(12, img.width / 40), min(6, img.height / 40) + 0.4))\n"
            "        plt.imshow(img); plt.axis('off'); plt.title(f'{run.name}: {png.name}', fontsize=8)\n"
            "plt.show()"),
    ]
    return nb


def ablation_report() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell(
            "# Ablation report\n\nThe paper-style tables and plots of every suite under `results/` (each made by "
            "`make experiment NAME=ablations/<suite>` and published with `python -m lab report ablations/<suite> "
            "--out results/<suite>`). The tests point `BITLAB_RESULTS` at a smoke sweep."),
        nbf.v4.new_code_cell(SETUP),
        nbf.v4.new_code_cell(
            'RESULTS = Path(os.environ.get("BITLAB_RESULTS") or ROOT / "results")\n'
            "SUITES = explore.suites(RESULTS)\n"
            "print([str(s.relative_to(RESULTS)) for s in SUITES])"),
        nbf.v4.new_markdown_cell("## Mean ± std over seeds, per suite"),
        nbf.v4.new_code_cell(
            "from IPython.display import Markdown, display\n"
            "KEY = ['psnr', 'lpips', 'rfid', 'bit_entropy', 'codebook_usage', 'peak_memory_mb', 'head_params',\n"
            "       'val_loss', 'bit_accuracy', 'gfid', 'sample_images_per_s', 'flops_per_step']\n"
            "for suite in SUITES:\n"
            "    table = explore.summary(suite / 'results.csv', KEY)\n"
            "    display(Markdown(f'### {suite.name}'))\n"
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
            "        ax.imshow(Image.open(png)); ax.axis('off')\n"
            "    fig.suptitle(suite.name)\n"
            "plt.show()"),
        nbf.v4.new_markdown_cell("## Validation loss against gFID over every generator run (Infinity Fig.10)"),
        nbf.v4.new_code_cell(
            "frames = [pd.read_csv(s / 'results.csv').assign(suite=s.name) for s in SUITES]\n"
            "runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()\n"
            "gen = runs.dropna(subset=['val_loss', 'gfid']) if {'val_loss', 'gfid'} <= set(runs) else runs.iloc[:0]\n"
            "if len(gen) >= 3:\n"
            "    print(f\"Pearson r(val_loss, gFID) over {len(gen)} runs: {gen['val_loss'].corr(gen['gfid']):.2f}\")\n"
            "    for suite, g in gen.groupby('suite'):\n"
            "        plt.scatter(g['val_loss'], g['gfid'], label=suite)\n"
            "    plt.xlabel('validation loss'); plt.ylabel('gFID'); plt.legend(fontsize=7); plt.grid(alpha=0.3)\n"
            "else:\n"
            "    print('fewer than 3 generator runs with both numbers')"),
    ]
    return nb


if __name__ == "__main__":
    for name, nb in (("explore_runs", explore_runs()), ("ablation_report", ablation_report())):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nbf.write(nb, path)
        print(path)
