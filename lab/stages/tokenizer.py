"""The tokenizer stage end to end: train the tokenizer, evaluate it (lab/evaluation/tokenizer.py), write its metrics
and image grids. The skeleton it shares with the generator stage is lab/stages/common.py."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from omegaconf import DictConfig

from lab.config import sections
from lab.core.registry import save_config
from lab.data.datasets import ImageDataModule
from lab.evaluation.tokenizer import evaluate_tokenizer, format_per_scale
from lab.metrics.fid_protocol import check_eval_size
from lab.metrics.measures import count_params, peak_memory_mb, reset_peak_memory
from lab.runtime.files import process_rank
from lab.runtime.machine import metrics_record
from lab.runtime.interruption import Interruption
from lab.runtime.trainer import cpu_load, timer_of
from lab.quantizers.base import local_statistics
from lab.stages.common import (begin_resume, build_datamodule, build_trainer, eval_device, log_final,
                               make_run_dir, resolve_run_settings, run_times, seed_all, step_flops, summary,
                               write_metrics)
from lab.runtime.progress import phase
from lab.stages.build import tokenizer_module
from lab.train.modules import image_grid


def run_tokenizer(cfg: DictConfig) -> tuple[Path, dict]:
    resolve_run_settings(cfg)  # trainer.precision / devices: auto -> concrete values, recorded in cfg.resolved
    seed_all(cfg)
    phase(f"building data: {cfg['data']['name']}")
    dm = build_datamodule(cfg)
    dm.setup("fit")  # data problems surface before a run directory exists
    check_eval_size(cfg["eval"]["fid_samples"], len(dm.splits["validation"]))
    module = tokenizer_module(cfg)
    if cfg["compile"]:
        module.tokenizer.compile()  # in place: parameter names (and checkpoints) are unchanged
    run_dir, resuming = make_run_dir(cfg)
    if not resuming and process_rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
    reset_peak_memory()
    t0 = time.time()
    ckpt = str(begin_resume(module, cfg, run_dir)) if resuming else None
    trainer = build_trainer(cfg, run_dir, [Interruption(run_dir)])  # SIGTERM / SIGINT: checkpoint, clean exit
    phase(f"training the tokenizer: {cfg['trainer']['max_steps']:,} steps -> {run_dir}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    train_end = time.time()
    train_peak = peak_memory_mb()  # training alone; peak_memory_mb below also covers the evaluation
    metrics: dict[str, Any] = {}
    module.adopt_ema()  # from here on, module.tokenizer is the evaluated (averaged) one
    if trainer.is_global_zero:
        with local_statistics():  # rank 0 alone from here: no collective may wait for the others
            ev = sections(cfg).eval
            module.to(eval_device(cfg))
            phase(f"evaluating the tokenizer: PSNR / SSIM / LPIPS over {ev.batches} validation batches"
                  + (f", rFID / rKID over {ev.fid_samples:,} images" if ev.fid_samples else ""))
            metrics = evaluate_tokenizer(
                module.tokenizer, dm.val_dataloader(), batches=ev.batches, fid_samples=ev.fid_samples,
                lpips=module.metric_lpips, device=module.device, protocol=ev,
            )
            metrics.update(
                params=count_params(module.tokenizer), steps=int(trainer.global_step),
                **run_times(trainer, t0, train_end, resumed=ckpt is not None), peak_memory_mb=peak_memory_mb(), train_peak_memory_mb=train_peak, cpu_load=cpu_load(),
                flops_per_step=step_flops(module, dm), steps_planned=int(cfg["trainer"]["max_steps"]), **metrics_record(cfg["resolved"]),
                **timer_of(trainer).summary(cfg["loader"]["batch_size"], trainer.world_size),
            )
            write_metrics(run_dir, metrics)
            grids = save_grids(module, dm, run_dir, cfg["eval"]["grid_images"])
            log_final(trainer, cfg, metrics, images=grids)
            print(summary(run_dir, metrics, cfg))
            print(format_per_scale(metrics["per_scale"]))
    return run_dir, metrics


def save_grids(module: Any, dm: ImageDataModule, run_dir: Path, n: int) -> dict[str, torch.Tensor]:
    """PNG grids beside the metrics: inputs vs reconstructions, and reconstructions from the first k scales.
    -> {name: (3, H, W) grid in [0, 1]} (TensorBoard shows them too)."""
    x = next(iter(dm.val_dataloader()))["image"][:n].to(module.device)
    tok = module.tokenizer.eval()
    with torch.no_grad():
        prefixes = tok.decode_prefixes(x)
    grids = {"reconstructions": image_grid([x, prefixes[-1]], n).cpu(), "progressive": image_grid([x] + prefixes, n).cpu()}
    for name, grid in grids.items():
        torchvision.utils.save_image(grid, run_dir / f"{name}.png")
    return grids
