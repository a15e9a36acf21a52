"""LightningModules: ``TokenizerModule`` (stage 1) and ``GeneratorModule`` (stage 2, in lab/train/generator.py)."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from lab.core.settings import LossSettings, OptimSettings
from lab.train import optim
from lab.metrics.lpips import LPIPS
from lab.metrics.measures import psnr
from lab.models.tokenizer import Tokenizer


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def check_finite(loss: Tensor, step: int, parts: Mapping[str, Tensor]) -> None:
    if not torch.isfinite(loss):
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        raise NonFiniteLossError(
            f"Non-finite loss ({float(loss)}) at step {step} ({detail}). The run stopped; the last good "
            "checkpoint is in the run's checkpoints/ folder. Lower optim.learning_rate or check the data."
        )


class CheckpointedRNG:
    """LightningModule mixin: the global RNG states (torch, CUDA, numpy, random) go into every checkpoint and
    are put back just before the first training batch after a restore, so a resumed run draws the same random
    prefixes / flips / dropout as an uninterrupted one (nothing between the checkpoint and the next batch
    draws from them: data loaders have their own generators, sampling is seeded)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        import random

        import numpy as np

        checkpoint["bitlab_rng"] = {
            "torch": torch.get_rng_state(), "random": random.getstate(),
            # numpy's state as plain types and a tensor: checkpoints stay loadable with weights_only=True
            "numpy": [(torch.from_numpy(v.astype(np.int64)) if isinstance(v, np.ndarray) else v) for v in np.random.get_state()],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_rng = checkpoint.get("bitlab_rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state = getattr(self, "_pending_rng", None)
        if state is None:
            return
        import random

        import numpy as np

        torch.set_rng_state(state["torch"])
        np.random.set_state(tuple(v.numpy().astype(np.uint32) if torch.is_tensor(v) else v for v in state["numpy"]))
        random.setstate(state["random"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        self._pending_rng = None


def image_grid(rows: list[Tensor], nrow: int) -> Tensor:
    """Stack image batches in [-1,1] into one (3, H, W) grid in [0,1], one batch per row."""
    imgs = torch.cat([r[:nrow] for r in rows], 0).float().clamp(-1, 1) * 0.5 + 0.5
    return torchvision.utils.make_grid(imgs, nrow=nrow, padding=1, pad_value=1.0)


class TokenizerModule(CheckpointedRNG, pl.LightningModule):
    """Stage 1: trains ``tokenizer`` (built by the stage, lab/stages/build.py) on reconstruction + LPIPS + the
    quantizer's own loss. ``record``: the run's resolved config as a plain dict, kept in every checkpoint's
    ``hyper_parameters["cfg"]`` so that lab/stages/generator.py ``load_tokenizer`` can rebuild the module; never
    read here."""

    def __init__(self, tokenizer: Tokenizer, *, optim: OptimSettings, loss: LossSettings,
                 eval_lpips_size: int | None, record: Mapping[str, Any]):
        super().__init__()
        self.save_hyperparameters({"cfg": dict(record)})
        self.tokenizer = tokenizer
        self.optim_settings = optim
        # An exponential moving average of the weights (optim.ema_decay > 0): validation, the final metrics
        # and every downstream use (adopt_ema) take the averaged tokenizer; checkpoints hold both.
        self.ema_decay = float(optim.ema_decay or 0.0)
        if self.ema_decay:
            self.tokenizer_ema = copy.deepcopy(self.tokenizer).requires_grad_(False)
        self.recon = F.l1_loss if loss.recon == "l1" else F.mse_loss
        self.lpips_weight = loss.lpips_weight
        # Frozen metric networks, kept out of the state dict so checkpoints hold only the model: the training
        # loss's LPIPS (loss.lpips_size) and the reported one (eval.lpips_size), shared when the sizes agree.
        train_lp = LPIPS(net=loss.lpips_net, resize_to=loss.lpips_size)
        self._lpips = [train_lp, train_lp if eval_lpips_size == loss.lpips_size else
                       LPIPS(net=loss.lpips_net, resize_to=eval_lpips_size)]

    def _on_device(self, net: LPIPS) -> LPIPS:
        if next(net.parameters()).device != self.device:
            net.to(self.device)
        return net

    @property
    def lpips(self) -> LPIPS:
        """The training loss's LPIPS."""
        return self._on_device(self._lpips[0])

    @property
    def metric_lpips(self) -> LPIPS:
        """The reported LPIPS (validation logs, metrics.json), at eval.lpips_size."""
        return self._on_device(self._lpips[1])

    @property
    def served(self) -> Tokenizer:
        """The tokenizer that is evaluated: the weight average when there is one."""
        return self.tokenizer_ema if self.ema_decay else self.tokenizer

    def adopt_ema(self) -> None:
        """Put the averaged weights into ``tokenizer`` (after training, or on loading for downstream use)."""
        if self.ema_decay:
            self.tokenizer.load_state_dict(self.tokenizer_ema.state_dict())

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.ema_decay:
            return
        t = self.global_step  # optimizer steps taken so far
        d = min(self.ema_decay, (1 + t) / (10 + t))  # warm-up: early averages follow the weights (and the gain init)
        torch._foreach_lerp_(list(self.tokenizer_ema.parameters()), list(self.tokenizer.parameters()), 1 - d)
        for b_ema, b in zip(self.tokenizer_ema.buffers(), self.tokenizer.buffers()):
            b_ema.copy_(b)

    def forward(self, x: Tensor):
        return self.tokenizer(x)

    def train_loss(self, batch: dict):
        """(loss, reconstruction loss, LPIPS, tokenizer output) of one training batch."""
        x = batch["image"]
        out = self.tokenizer(x)
        rec = self.recon(out.x_hat, x)
        lp = self.lpips(out.x_hat, x).mean() if self.lpips_weight > 0 else rec.new_zeros(())
        return rec + self.lpips_weight * lp + out.quant.loss, rec, lp, out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, rec, lp, out = self.train_loss(batch)
        check_finite(loss, self.global_step, {"recon": rec, "lpips": lp, "quant": out.quant.loss})
        log = {"train/loss": loss, "train/recon": rec, "train/lpips": lp, "train/quant": out.quant.loss}
        for key in ("per_sample_entropy", "batch_entropy", "commitment", "codebook_usage", "level_entropy"):
            vals = [s[key] for s in out.quant.stats if key in s]
            if vals:
                log[f"train/{key}"] = torch.stack(vals).mean()
        B = batch["image"].shape[0]  # (the batch dict holds captions too: Lightning cannot infer its size)
        self.log_dict(log, prog_bar=False, batch_size=B)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["image"]
        out = self.served(x)
        rec = self.recon(out.x_hat, x)
        lp = self.metric_lpips(out.x_hat, x).mean()
        lp_loss = lp if self.lpips is self.metric_lpips else self.lpips(out.x_hat, x).mean()
        loss = rec + self.lpips_weight * lp_loss
        self.log_dict({"val/recon_loss": loss, "val/psnr": psnr(out.x_hat, x), "val/lpips": lp},
                      prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        # what ModelCheckpoint monitors (lab/stages/common.py build_trainer); not in TensorBoard, where each stage's loss has its own name
        self.log("val/loss", loss, logger=False, sync_dist=True, batch_size=x.shape[0])
        if batch_idx == 0 and self.trainer.is_global_zero and self.logger is not None:
            n = min(8, x.shape[0])
            prefixes = self.served.decode_prefixes(x[:n])
            exp = getattr(self.logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_image"):
                exp.add_image("val/input_vs_recon", image_grid([x, out.x_hat], n), self.global_step)
                exp.add_image("val/progressive", image_grid([x] + prefixes, n), self.global_step)

    def configure_optimizers(self):
        return optim.configure(self.tokenizer, self.optim_settings, self.trainer.max_steps)
