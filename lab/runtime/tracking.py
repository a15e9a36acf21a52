"""Loggers (``logger: [tensorboard, csv, wandb, mlflow]``, Lightning's own) and the final HParams record.

Every run, tokenizer or generator, writes the SAME HParams experiment summary (``HPARAM_KEYS``,
``FINAL_METRICS``): TensorBoard shows the summary of whichever run it reads first, so with a shared one the
tokenizer and generator runs of a logdir sit side by side in one table, blank only where a metric does not
apply to a stage. The first columns identify the run: its name, tags, directory, data (``RunInfo``, built by lab/config/runs.py).

What TensorBoard shows first: it orders the card groups of its Time Series page by tag name and opens the first
two, so the learning curves keep ``train/`` (the learning rate included) and ``val/`` (with the image grids of
each validation), the per-scale curves follow (``val_scale/``, ``val_scale_final/``: the end-of-run value at each
scale, x = the scale's side) and the end-of-run values come last (``z_final/``: the headline metrics of HParams
and a grid of reconstructions or samples, logged for every run, validated or not). Settings (processes, batch
per process, FID / KID sizes ...) are HParams columns and a text summary, never scalar charts; Lightning's
``epoch`` scalar is dropped. A Custom Scalars layout draws every scale of a per-scale loss in one chart.
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lab.core.registry import ConfigError
from lab.core.registry import suggest

LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
_NEEDS = {"wandb": "wandb", "mlflow": "mlflow"}  # logger -> the package it needs (not a bitlab dependency)

# Identity columns first (capitalised: TensorBoard sorts them before the lower-case config keys), then the config
# keys the experiments and sweeps vary, then the settings a run used (from its metrics.json). Numbers are numeric
# columns; a key a run does not have is blank/NaN.
ID_KEYS = ("Experiment", "Run", "Name", "Tags", "Seed", "Swept", "Stage")
CONFIG_KEYS = ("data.name", "quantizer.name", "quantizer.bits", "quantizer.codebook_size", "head.name",
               "correction.name", "correction.p_max", "correction.requantize", "generator.size", "generator.cond",
               "generator.order", "trainer.max_steps", "trainer.precision", "loader.batch_size", "loader.image_size",
               "optim.learning_rate", "preset")
SETTING_KEYS = ("steps", "devices", "batch_size_per_process", "precision", "fid_samples", "kid_subsets",
                "kid_subset_size", "lpips_size")
NUMERIC = {"Seed", "quantizer.bits", "quantizer.codebook_size", "correction.p_max", "trainer.max_steps",
           "loader.batch_size", "loader.image_size", "optim.learning_rate", "steps", "devices",
           "batch_size_per_process", "fid_samples", "kid_subsets", "kid_subset_size", "lpips_size"}
HPARAM_KEYS = ID_KEYS + CONFIG_KEYS + SETTING_KEYS
# TensorBoard's HParams table shows the first five columns marked `differs` (by name, capitals first) and hides the
# others behind a checkbox: these five tell the runs apart (the Run column holds the seed and the swept values).
SHOWN = ("Experiment", "Name", "Run", "Tags", "data.name")
# The union of both stages' headline metrics (metrics.json keys, logged as z_final/<key>: HParams' metric columns).
# The generator's validation loss is named by its head: a bit's BCE and a token's CE are not comparable numbers.
FINAL_METRICS = ("psnr", "ssim", "lpips", "baseline_psnr", "baseline_lpips", "rfid", "rkid", "bit_entropy",
                 "codebook_usage", "gfid", "kid", "gfid_normalized", "kid_normalized", "val_bits_bce",
                 "val_index_ce", "bit_accuracy", "token_accuracy", "params", "head_params", "flops_per_step",
                 "train_images_per_s", "wall_time_s", "peak_memory_mb")
# Tag prefixes: TensorBoard's Time Series page orders its card groups by name (train, val, val_scale first).
FINAL = "z_final"
PER_SCALE_FINAL = "val_scale_final"


@dataclass(frozen=True)
class RunInfo:
    """What the loggers record of a run, handed to them by the stage (``lab.config.runs.run_info`` builds it
    from the run's config): who the run is and the values of ``CONFIG_KEYS`` for the HParams columns."""
    experiment: str                      # the config's name: quickstart, tokenizer/bsq, ablations/order ...
    name: str                            # the run's name (run_name, or the experiment's own)
    seed: int
    stage: str                           # tokenizer | generator
    tags: tuple[str, ...] = ()
    loggers: tuple[str, ...] = ("tensorboard",)
    loss_kind: str | None = None         # a generator's validation loss: bits_bce | index_ce (by its head)
    settings: Mapping[str, Any] = field(default_factory=dict)  # CONFIG_KEYS -> this run's value (None: not set)
    cached_tokenizer: str | None = None  # a generator's cached tokenizer stage: "data=... quantizer=..."


def check_loggers(names: Any) -> None:
    """ConfigError for an unknown logger or one whose package is not installed (before any run directory)."""
    names = [names] if isinstance(names, str) else list(names or [])
    for n in names:
        if n not in LOGGERS:
            raise ConfigError(f"Unknown logger '{n}' in logger={names}.{suggest(str(n), list(LOGGERS))}")
        if n in _NEEDS and importlib.util.find_spec(_NEEDS[n]) is None:
            raise ConfigError(f"logger '{n}' needs the package {_NEEDS[n]}, which is not installed: "
                              f"`pip install {_NEEDS[n]}` (it runs offline, into the run directory), or drop it from logger={names}.")


def build_loggers(info: RunInfo, run_dir: Path) -> list:
    """Lightning's loggers named by the run's ``logger:`` (default [tensorboard]), all writing under the run
    directory; W&B and MLflow offline. TensorBoard, when present, comes first (the image grids go there)."""
    from pytorch_lightning import loggers as pl_loggers

    names = list(info.loggers)
    check_loggers(names)
    names = sorted(dict.fromkeys(names), key=lambda n: n != "tensorboard")
    out = []
    for n in names:
        if n == "tensorboard":
            out.append(_tensorboard_logger()(save_dir=str(run_dir), name="", version="tb", default_hp_metric=False))
        elif n == "csv":
            out.append(pl_loggers.CSVLogger(save_dir=str(run_dir), name="", version="csv"))
        elif n == "wandb":
            out.append(pl_loggers.WandbLogger(save_dir=str(run_dir), offline=True, project="bitlab", name=run_label(info, run_dir)))
        elif n == "mlflow":
            out.append(pl_loggers.MLFlowLogger(experiment_name="bitlab", run_name=run_label(info, run_dir),
                                               tracking_uri=f"file:{run_dir / 'mlruns'}"))
    return out


def _tensorboard_logger() -> type:
    """Lightning's TensorBoardLogger without the ``epoch`` scalar Lightning adds to every logged step (a staircase
    chart that would open the page: our epochs are only the sampler's passes over the data)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    class TensorBoard(TensorBoardLogger):
        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    return TensorBoard


def swept_values(run_dir: Path) -> dict:
    """The values a sweep set for this run (its suite's sweep.json beside runs/<suite>/<point>/<seed>), or {}."""
    run_dir = Path(run_dir)
    manifest = run_dir.parent.parent / "sweep.json"
    if not manifest.is_file():
        return {}
    try:
        runs = json.loads(manifest.read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError):
        return {}
    rel = f"{run_dir.parent.name}/{run_dir.name}"
    return next((dict(r.get("values") or {}) for r in runs if r.get("run_dir") == rel), {})


def experiment_of(name: str, run_dir: Path) -> str:
    """The experiment a run belongs to: the suite for a sweep's run, else the config's ``name``."""
    manifest = Path(run_dir).parent.parent / "sweep.json"
    if manifest.is_file():
        try:
            return str(json.loads(manifest.read_text()).get("suite") or name.rsplit("/", 1)[0])
        except (OSError, json.JSONDecodeError):
            return name.rsplit("/", 1)[0]
    return name


def run_label(info: RunInfo, run_dir: Path) -> str:
    """Readable and unique. A sweep's run: the suite, the swept values, the seed (``ablations/order
    generator.order=raster s1``); any other run: its directory's name, which starts with the run's name
    (``quickstart-imagefolder-20250101-120000-s0``; a ``run_id`` of one's own comes after the name)."""
    swept = " ".join(f"{k}={v}" for k, v in swept_values(run_dir).items())
    if info.cached_tokenizer:  # a generator's cached tokenizer stage: say what it is
        swept = info.cached_tokenizer
    elif not swept:
        own = Path(run_dir).name
        return own if own.startswith(info.name) else f"{info.name} {own}"
    return " ".join(p for p in (experiment_of(info.experiment, run_dir), swept, f"s{info.seed}") if p)


def run_hparams(info: RunInfo, run_dir: Path, metrics: dict | None = None) -> dict:
    """The shared hparam keys with this run's values (NaN or "" where the key does not apply); the settings a run
    used come from its ``metrics``."""
    out = {"Experiment": experiment_of(info.experiment, run_dir), "Run": run_label(info, run_dir), "Name": info.name,
           "Tags": ",".join(info.tags), "Seed": info.seed,
           "Swept": " ".join(f"{k}={v}" for k, v in swept_values(run_dir).items()), "Stage": info.stage}
    out.update({k: info.settings.get(k) for k in CONFIG_KEYS})
    out.update({k: (metrics or {}).get(k) for k in SETTING_KEYS})
    for k, v in out.items():
        if k in NUMERIC:
            out[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        else:
            out[k] = "" if v is None else str(v)
    return out




def final_scalars(info: RunInfo, metrics: dict) -> dict:
    """metrics.json -> ``z_final/<key>`` scalars of the headline metrics (``FINAL_METRICS``; the generator's val_loss
    under its head's name). Settings and the other records go to the text summary (``summary_text``)."""
    final = {f"{FINAL}/{k}": float(v) for k, v in metrics.items()
             if k in FINAL_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "val_loss" in metrics and info.loss_kind:
        final[f"{FINAL}/val_{info.loss_kind}"] = float(metrics["val_loss"])
    return final


def summary_text(hparams: dict, metrics: dict) -> str:
    """The run's settings and every record of its metrics.json as one markdown table (TensorBoard's Text page)."""
    rows = [(k, v) for k, v in hparams.items() if not (v == "" or (isinstance(v, float) and math.isnan(v)))]
    rows += [(k, v) for k, v in metrics.items() if k not in hparams and k != "per_scale"]
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)


def _cell(v: Any) -> str:
    return (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "/").replace("\n", " ")


def custom_layout() -> dict:
    """TensorBoard's Custom Scalars page (torch's layout format): every scale of a per-scale loss in one chart, and
    the learning curves. Each chart draws the tags its regular expression matches."""
    return {
        "learning curves": {"training losses": ["Multiline", [r"^train/(?!lr)"]],
                            "learning rate": ["Multiline", [r"^train/lr"]]},
        "per scale": {"validation, every scale (during training)": ["Multiline", [r"^val_scale/"]],
                      "end of run, along the scales (x: scale side)": ["Multiline", [rf"^{PER_SCALE_FINAL}/"]]},
    }


def write_hparams(tb_logger: Any, hparams: dict) -> None:
    """The shared HParams experiment summary plus this run's session, into a TensorBoardLogger's event file."""
    from tensorboard.plugins.hparams.api_pb2 import DataType, HParamInfo
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    exp, ssi, sei = hparams_summaries(hparams, {f"{FINAL}/{m}": 0.0 for m in FINAL_METRICS})
    data = HParamsPluginData.FromString(exp.value[0].metadata.plugin_data.content)
    del data.experiment.hparam_infos[:]  # declared from the shared lists, not from this run's value types
    data.experiment.hparam_infos.extend(
        HParamInfo(name=k, type=DataType.Value("DATA_TYPE_FLOAT64" if k in NUMERIC else "DATA_TYPE_STRING"),
                   differs=k in SHOWN)  # (TensorBoard shows five columns that differ at first: SHOWN)
        for k in HPARAM_KEYS)
    for m in data.experiment.metric_infos:
        m.display_name = m.name.tag.split("/", 1)[-1]  # psnr, not z_final/psnr
    exp.value[0].metadata.plugin_data.content = data.SerializeToString()
    writer = tb_logger.experiment._get_file_writer()
    for s in (exp, ssi, sei):
        writer.add_summary(s)


def log_final(trainer: Any, info: RunInfo, metrics: dict, run_dir: Path | None = None,
              images: dict | None = None) -> None:
    """Final metrics as scalars to every logger, the run's row of the shared HParams view, and in TensorBoard the
    per-scale curves, the settings as text and ``images`` ({name: (3, H, W) in [0, 1]}, e.g. a reconstruction
    grid) under ``z_final/``."""
    from pytorch_lightning.loggers import TensorBoardLogger

    loggers = list(getattr(trainer, "loggers", None) or [])
    if not loggers:
        return
    run_dir = Path(run_dir) if run_dir is not None else Path(trainer.default_root_dir)
    hp, final = run_hparams(info, run_dir, metrics), final_scalars(info, metrics)
    per = metrics.get("per_scale") or {}
    curves = {key: list(zip(per["scale"], values)) for key, values in per.items() if key != "scale"}
    step = int(trainer.global_step)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            write_hparams(lg, hp)
            lg.log_metrics(final, step=step)
            w = lg.experiment
            for key, points in curves.items():  # one chart per metric along the scales (x: the scale's side)
                for s, v in points:
                    w.add_scalar(f"{PER_SCALE_FINAL}/{key}", float(v), int(s))
            w.add_text("summary", summary_text(hp, metrics), step)
            w.add_custom_scalars(custom_layout())
            for tag, img in (images or {}).items():
                w.add_image(f"{FINAL}/{tag}", img, step)
        else:
            lg.log_hyperparams({k: v for k, v in hp.items() if not (isinstance(v, float) and math.isnan(v))})
            lg.log_metrics(final | {f"{FINAL}_per_scale/{key}_{s}x{s}": float(v)
                                    for key, points in curves.items() for s, v in points}, step=step)
        lg.finalize("success")
