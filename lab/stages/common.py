"""The skeleton every stage shares: its run directory, data module, Trainer, seeds, final metrics and summary.

``lab/stages/tokenizer.py`` and ``lab/stages/generator.py`` are the two stages built on it; ``lab/stages/run.py``
picks one from ``stage:``. The stages, and the layers above them (sweeps, the command line), read the whole config;
the layers below lab.config take built components, typed sections and plain values.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from lab.core.registry import ConfigError, to_dict
from lab.data.datasets import ImageDataModule
from lab.metrics.measures import train_step_flops
from lab.quantizers.base import local_statistics
from lab.runtime import quiet
from lab.runtime.files import atomic_write, process_rank, runs_root
from lab.runtime.machine import resolve_precision, resolve_settings
from lab.runtime.runlock import lock_run
from lab.runtime.safety import load_checkpoint
from lab.runtime.signals import TRAINED
from lab.config.runs import check_resume, new_run_id, read_config, record_resume, run_info, run_name, run_tags
from lab.config.typed import loader_settings, placement
from lab.runtime.tracking import build_loggers
from lab.runtime.tracking import log_final as log_to_loggers
from lab.runtime.trainer import AtomicCheckpointIO, StepTimer, share_cpu_threads, timer_of, warn_if_cpu_busy

# Our EpochSampler (lab/data/sampler.py) resumes mid-epoch exactly, which Lightning cannot see: silence its warning.
warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch ended.*")


def resolve_run_settings(cfg: Any, verbose: bool = True) -> dict:
    """Make ``cfg``'s ``auto`` speed settings concrete, in place, and record why in ``cfg.resolved``; returns that
    record (also merged into metrics.json). The values come from lab/runtime/machine.py ``resolve_settings``, which
    changes nothing; this is where a run's config takes them."""
    from omegaconf import open_dict

    r = resolve_settings(placement(cfg["trainer"]), loader_settings(cfg["loader"]), to_dict(cfg.get("resolved")),
                         str(cfg["stage"]), verbose)
    with open_dict(cfg):
        for k, v in r.trainer.items():
            cfg["trainer"][k] = v
        for k, v in r.loader.items():
            cfg["loader"][k] = v
        cfg["resolved"] = r.record
    return r.record


def make_run_dir(cfg: Any) -> tuple[Path, bool]:
    """(run directory, resuming?). A new run never reuses an existing directory. Rank 0 decides it; the other
    ranks of a multi-process run (launched from rank 0 by Lightning) inherit it and create nothing."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # a later stage of a multi-process run (the group outlives the first stage's Trainer): ask rank 0
        box = [_make_run_dir(cfg) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        run_dir, resuming = box[0]
        os.environ["BITLAB_RUN_DIR"], os.environ["BITLAB_RESUMING"] = str(run_dir), str(int(resuming))
        return run_dir, resuming
    if process_rank() > 0 and os.environ.get("BITLAB_RUN_DIR"):
        # rank 0's choice, not this rank's own reading of the checkpoints (it starts later: a sweep's rank 1 could
        # see a checkpoint rank 0 wrote for a run it started afresh)
        return Path(os.environ["BITLAB_RUN_DIR"]), os.environ.get("BITLAB_RESUMING", str(int(bool(cfg["resume"])))) == "1"
    run_dir, resuming = _make_run_dir(cfg)
    # for the ranks Lightning is about to launch
    os.environ["BITLAB_RUN_DIR"], os.environ["BITLAB_RESUMING"] = str(run_dir), str(int(resuming))
    return run_dir, resuming


def resume_dir(cfg: Any) -> Path:
    """The run ``resume=true`` continues (``run_id``, else the latest with a checkpoint); reads only."""
    base = runs_root(cfg["runs_dir"]) / cfg["name"]
    if cfg["run_id"]:
        run_dir = base / str(cfg["run_id"])
    else:
        candidates = sorted(p.parent.parent for p in base.glob("*/checkpoints/last.ckpt"))
        if not candidates:
            raise ConfigError(f"resume=true but no run of '{cfg['name']}' has a checkpoint under {base}/*/checkpoints/"
                              "last.ckpt: there is nothing to resume. Drop resume=true to start a new run.")
        run_dir = max(candidates, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime)
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        what = "does not exist" if not run_dir.exists() else "has no checkpoints/last.ckpt"
        raise ConfigError(f"resume=true but the run {run_dir} {what}, so there is nothing to resume. Check run_id "
                          "(and runs_dir), or drop resume=true to start a new run.")
    return run_dir


def _make_run_dir(cfg: Any) -> tuple[Path, bool]:
    base = runs_root(cfg["runs_dir"]) / cfg["name"]
    if cfg["resume"]:
        run_dir = resume_dir(cfg)
        lock_run(run_dir)  # held until the run ends: a second resume of it (or a sweep) is refused meanwhile
        check_resume(cfg, run_dir)  # reads only: the stage records the resume once the checkpoint matches too
        keep_name(cfg, run_dir)
        return run_dir, True
    run_id = cfg["run_id"] or new_run_id(cfg)  # <run_name>-<time>-s<seed>
    run_dir = base / str(run_id)
    if cfg["run_id"] and run_dir.exists():
        raise ConfigError(f"run_id={run_id} already exists at {run_dir}; a run never overwrites another. Pick another run_id or resume=true.")
    n = 1
    while run_dir.exists():  # two runs started in the same second
        n += 1
        run_dir = base / f"{run_id}-{n}"
    run_dir.mkdir(parents=True)
    lock_run(run_dir)
    return run_dir, False


def keep_name(cfg: Any, run_dir: Path) -> None:
    """A resume keeps the run's recorded name and tags unless its command gives others (names are bookkeeping:
    lab/runtime/naming.py), so its summary and HParams row name the run as before."""
    if cfg.get("run_name") is not None and cfg.get("tags"):
        return
    try:
        old = read_config(run_dir / "config.yaml")
    except ConfigError:
        old = {}
    if cfg.get("run_name") is None:
        cfg["run_name"] = old.get("run_name") or run_name(cfg)
    if not cfg.get("tags") and isinstance(old.get("tags"), list):
        cfg["tags"] = list(old["tags"])


def begin_resume(module: pl.LightningModule, cfg: Any, run_dir: Path) -> Path:
    """The last check of a resume (the checkpoint fits the model), then its record in the run (resumes.json,
    config.yaml, a finished run's metrics.json kept aside): a refused resume changes nothing. -> last.ckpt"""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    check_checkpoint_matches(module, ckpt)
    record_resume(cfg, run_dir)
    return ckpt


def check_checkpoint_matches(module: pl.LightningModule, ckpt: Path) -> None:
    """Before resuming: the checkpoint's tensors must have exactly the model's names and shapes. A checkpoint
    from another configuration is refused, naming the first differences; it is never loaded non-strictly."""
    ckpt_data = load_checkpoint(ckpt)  # weights_only: a crafted file is refused before any of it runs
    state = ckpt_data.get("state_dict") if isinstance(ckpt_data, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{ckpt} is not a Lightning checkpoint (no state_dict).")
    own = module.state_dict()
    problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems += [f"{k}: missing from the checkpoint" for k in own if k not in state]
    problems += [f"{k}: in the checkpoint, not in the model" for k in state if k not in own]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            f"The checkpoint {ckpt} comes from a different configuration: {'; '.join(problems[:3])}{more}. "
            "Resume with the configuration it was trained with (its config.yaml), or start a new run."
        )


def build_datamodule(cfg: Any) -> ImageDataModule:
    data = dict(to_dict(cfg["data"]))
    loader = cfg["loader"]
    return ImageDataModule(
        data, batch_size=loader["batch_size"], num_workers=loader["num_workers"],
        image_size=loader["image_size"], seed=cfg["seed"],
    )


def build_trainer(cfg: Any, run_dir: Path, extra_callbacks: list | None = None) -> pl.Trainer:
    quiet.install()  # known-harmless warnings and Lightning's tips hidden unless --verbose
    trainer_kw = dict(to_dict(cfg["trainer"]))
    place = placement(trainer_kw)
    if str(place.precision) == "auto":  # a caller that skipped resolve_run_settings: Lightning needs a value
        trainer_kw["precision"] = resolve_precision("auto", place.accelerator, str(cfg["stage"]))[0]
    warn_if_cpu_busy(place.accelerator)
    share_cpu_threads(place.accelerator, place.devices)
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last-step", save_last=True,
                           every_n_train_steps=cfg["checkpoint_every_n_steps"], save_top_k=0,
                           enable_version_counter=False)  # always last.ckpt, never a stray last-v1.ckpt on resume
    loggers = build_loggers(run_info(cfg), run_dir)  # `logger:` in the config: tensorboard (default), csv, wandb, mlflow
    lr = [LearningRateMonitor(logging_interval="step")] if loggers else []
    return pl.Trainer(
        **trainer_kw,
        logger=loggers or False,
        callbacks=[best, last, quiet.ProgressBar(refresh_rate=10), StepTimer()] + lr + list(extra_callbacks or []),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        deterministic=bool(cfg["deterministic"]) or None,
    )


def run_times(trainer: pl.Trainer, t0: float, train_end: float, resumed: bool) -> dict:
    """wall_time_s (training and evaluation) and train_time_s of the whole run: this process's part since ``t0``
    plus what earlier processes of a resumed run spent (saved in its checkpoints). A resume from a checkpoint that
    did not save it has ``time_partial: true``: its times cover the last part only, and run-time estimates
    (``lab list``, the README) leave it out."""
    before = timer_of(trainer).time_before(resumed)  # build_trainer always adds the StepTimer
    out = {"wall_time_s": time.time() - t0 + (before or 0.0), "train_time_s": train_end - t0 + (before or 0.0)}
    if before is None:
        out["time_partial"] = True
    return out


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=float)))
    TRAINED.clear()  # evaluated: a signal from here on does not stop this run's evaluation (lab/runtime/signals.py)


HEADLINE = ("psnr", "ssim", "lpips", "rfid", "rkid", "bit_entropy", "codebook_usage", "baseline_psnr", "baseline_lpips",
            "val_loss", "bit_accuracy", "token_accuracy", "gfid", "kid", "gfid_normalized", "params", "head_params",
            "wall_time_s", "peak_memory_mb")


def summary(run_dir: Path, metrics: dict, cfg: Any = None) -> str:
    lines = [f"run: {run_dir}"]
    if cfg is not None:  # what tells this run from the others: its name (data, quantizer ... where they differ), tags
        tags = run_tags(cfg)
        lines.append(f"  name: {run_name(cfg)}  (data: {cfg['data']['name']})" + (f"  tags: {', '.join(tags)}" if tags else ""))
    for k in HEADLINE:
        if k in metrics:
            v = metrics[k]
            lines.append(f"  {k:<16} {v:.4g}" if isinstance(v, float) else f"  {k:<16} {v}")
    lines.append(f"  outputs: {run_dir}/metrics.json, {run_dir}/checkpoints/, TensorBoard: {run_dir}/tb")
    return "\n".join(lines)


def seed_all(cfg: Any) -> None:
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)


def eval_device(cfg: Any) -> torch.device:
    """Where the work outside trainer.fit runs (feature caching, final evaluation, grids): the accelerator the
    trainer uses when it is a GPU (Lightning hands the model back on the CPU after fit), else the CPU."""
    acc = str(cfg["trainer"].get("accelerator", "cpu"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def step_flops(module: Any, dm: ImageDataModule) -> int:
    """FLOPs of one training step on a training batch (after training: the run's RNG is untouched)."""
    batch = next(iter(dm.train_dataloader()))
    B = len(batch["image"])
    b = min(B, 4)  # FLOPs are linear in the batch: count a slice (a full 256-px batch in fp32 may not fit)
    batch = {k: (v[:b].to(module.device) if torch.is_tensor(v) else v[:b]) for k, v in batch.items()}
    with local_statistics():  # rank 0 alone: no collective may wait for the others
        return int(train_step_flops(module, batch) * B / b)


def flat_hparams(cfg: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in (to_dict(cfg) if not isinstance(cfg, dict) else cfg).items():
        if k in ("presets", "sweep", "seeds", "report"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def log_final(trainer: pl.Trainer, cfg: Any, metrics: dict, images: dict | None = None) -> None:
    """Final metrics as scalars and in TensorBoard's HParams view, one view for every stage, and the end-of-run
    image grids (lab/runtime/tracking.py)."""
    log_to_loggers(trainer, run_info(cfg), metrics, images=images)
