"""AdamW with linear warm-up and cosine decay (shared by both stages)."""
from __future__ import annotations

import math
import torch
from torch import nn

from lab.core.settings import OptimSettings


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings' gains and other 1-d parameters."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    t = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def configure(module: nn.Module, optim: OptimSettings, max_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` return value."""
    opt = torch.optim.AdamW(param_groups(module, optim.weight_decay), lr=optim.learning_rate, betas=tuple(optim.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: warmup_cosine(s, warmup_steps=optim.warmup_steps, max_steps=max_steps, min_lr_ratio=optim.min_lr_ratio),
    )
    # named: LearningRateMonitor logs it as train/lr (beside the losses in TensorBoard), not as a group of its own
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "train/lr"}}
