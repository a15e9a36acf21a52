"""``make bench`` part ``training``: both stages' training loops at cpu scale, the Lightning Trainer against a
minimal hand-written loop, cached encoder features against encoding every step, data loading, torch.compile."""
from __future__ import annotations

import time
from typing import Iterator

import torch

from lab.bench.common import Settings, progress, quiet_stderr, ratio
import tempfile
from pathlib import Path
import pytorch_lightning as pl
from omegaconf import OmegaConf, open_dict
from lab.bench.machine import StepLoss, stepper, timed
from lab.config import load_experiment
from lab.stages.common import build_datamodule, build_trainer
from lab.stages.build import generator_module, tokenizer_module


def _stage_module(stage: str, size: str, quick: bool):
    """(config, module, datamodule) of a cpu-scale run of ``stage`` on emoji32 (1,024 images), untrained."""
    limit = 256 if quick else 1024
    if stage == "tokenizer":
        # one process at the old quickstart's batch (the quickstart itself now trains as two DDP processes)
        cfg = load_experiment("quickstart", [f"data.limit={limit}", "trainer.devices=1", "trainer.strategy=auto",
                                             "loader.global_batch_size=null", "trainer.precision=32-true",
                                             "loader.batch_size=%d" % (16 if quick else 64)])
        module = tokenizer_module(cfg)
    else:
        cfg = load_experiment("generator/c2i_fashion", ["data={name: emoji32, limit: %d}" % limit, f"generator.size={size}",
                                                        "trainer.precision=32-true"]
                              + (["loader.batch_size=8"] if quick else []))
    dm = build_datamodule(cfg)
    dm.setup("fit")
    if stage != "tokenizer":
        tok = tokenizer_module(cfg).tokenizer.eval()
        module = generator_module(cfg, tok, num_classes=dm.num_classes)
        with torch.no_grad():
            module.features = {"train": torch.cat([tok.encode(b["image"]) for b in dm.ordered_loader("train")])}
    return cfg, module, dm


def _minimal_loop(module, loader, steps: int, warmup: int, bf16: bool = False, budget: float = float("inf")) -> float:
    """Seconds per step of a hand-written loop: the same loss code, AdamW, gradient clipping, no framework.
    ``bf16``: the forward under bf16 autocast, what ``trainer.precision=bf16-mixed`` does. At most ``steps`` timed
    steps and about ``budget`` seconds of them (lab.bench.machine.timed: bounded on a slow CPU)."""
    step = stepper(StepLoss(module), loader)
    return timed(lambda: step(bf16), warmup, steps, budget)[0]


def _lightning_loop(cfg, module, dm, steps: int, warmup: int, budget: float = float("inf")) -> float:
    """Seconds per step of the real Trainer (build_trainer: TensorBoard logging, checkpoint callbacks,
    progress bar), validation off, timed from the first step after the warm-up to the last."""
    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                marks["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks["end"] = time.perf_counter()
            marks["steps"] = trainer.global_step - warmup
            if "start" in marks and marks["end"] - marks["start"] > budget:
                trainer.should_stop = True  # the case's time budget: bounded on a slow CPU

    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg["trainer"].update(max_steps=warmup + steps, limit_val_batches=0, val_check_interval=None,
                              check_val_every_n_epoch=None, num_sanity_val_steps=0)
    with tempfile.TemporaryDirectory() as tmp, quiet_stderr():
        trainer = build_trainer(cfg, Path(tmp), extra_callbacks=[Clock()])
        trainer.fit(module, datamodule=dm)
    return (marks["end"] - marks["start"]) / max(marks.get("steps", steps), 1)


def bench_training(s: Settings) -> Iterator[dict]:
    """Training throughput of both stages at cpu scale, and what the framework and the caches cost: the
    Lightning Trainer vs a minimal hand-written loop on the same module and batches; the generator with
    cached encoder features vs encoding the images every step; data loading alone."""
    steps, warmup = (3, 1) if s.quick else (25, 3)
    budget = s.max_seconds  # seconds of timed steps per loop: the part ends in bounded time on a slow CPU
    cases = [("tokenizer", "")] + [("generator", size) for size in (("xs",) if s.quick else ("xs", "s"))]
    for stage, size in cases:
        progress(f"training: {stage} {size}")
        torch.manual_seed(0)
        cfg, module, dm = _stage_module(stage, size, s.quick)
        B = cfg["loader"]["batch_size"]
        tokens = module.model.L if stage == "generator" else None
        loader = dm.train_dataloader()
        t_min = _minimal_loop(module, loader, steps, warmup, budget=budget)
        t_pl = _lightning_loop(cfg, module, dm, steps, warmup, budget=budget)
        loader = dm.train_dataloader()
        it = iter(loader)
        t0 = time.perf_counter()
        for _ in range(steps):
            try:
                next(it)
            except StopIteration:  # an epoch ended (or the sampler resumed mid-epoch after the Trainer ran)
                it = iter(loader)
                next(it)
        t_data = (time.perf_counter() - t0) / steps
        base = dict(stage=stage, size=size or "-", batch=B)
        for loop, t in (("minimal", t_min), ("lightning", t_pl)):
            yield dict(base, loop=loop, ms_per_step=1e3 * t, images_per_s=B / t,
                       tokens_per_s=B * tokens / t if tokens else None,
                       vs_minimal=ratio(t, t_min) if loop == "lightning" else None,
                       data_pct=100 * t_data / t)
        # bf16 autocast, timed right after the fp32 loop on the same module and batches
        t_bf = _minimal_loop(module, loader, steps, warmup, bf16=True, budget=budget)
        yield dict(base, loop="minimal, bf16 autocast", ms_per_step=1e3 * t_bf, images_per_s=B / t_bf,
                   tokens_per_s=B * tokens / t_bf if tokens else None, bf16_speedup=ratio(t_min, t_bf))
        if stage == "generator":
            features = module.features
            module.features = {}  # encode every batch's images with the frozen tokenizer instead
            t_enc = _minimal_loop(module, loader, steps, warmup, budget=budget)
            module.features = features
            yield dict(base, loop="minimal, no feature cache", ms_per_step=1e3 * t_enc, images_per_s=B / t_enc,
                       tokens_per_s=B * tokens / t_enc, cache_speedup=ratio(t_enc, t_min))
            if not s.quick:
                try:
                    module.model.compile()
                    t_c = _minimal_loop(module, loader, steps, warmup + 2, budget=budget)
                    yield dict(base, loop="minimal, torch.compile", ms_per_step=1e3 * t_c, images_per_s=B / t_c,
                               tokens_per_s=B * tokens / t_c, compile_speedup=ratio(t_min, t_c))
                except Exception as e:  # noqa: BLE001 - recorded, not fatal (e.g. no C++ compiler)
                    yield dict(base, loop="minimal, torch.compile", status=f"failed: {type(e).__name__}")
