"""``GeneratorModule``: the autoregressive stage on top of a frozen tokenizer.

Training step: encoder features f (from the on-disk cache) -> ``teacher_forcing`` under the configured
self-correction -> transformer -> head loss per token, optionally reweighted by scale (Infinity).
Validation: teacher-forced loss and accuracy per scale with clean inputs, and the free-running accuracy
(inputs built from the model's own greedy predictions, labels re-quantized against them) so the
train-test gap that self-correction targets is visible per scale.
"""
from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lab.core.settings import OptimSettings, SampleSettings
from lab.train import optim
from lab.generation.correction import NoCorrection, teacher_forcing
from lab.metrics.measures import count_params
from lab.train.modules import CheckpointedRNG, check_finite, image_grid
from lab.generation.sampling import SampleOptions, sample_images, scale_token_latents
from lab.models.tokenizer import Tokenizer
from lab.models.transformer import Transformer
from lab.models.text import encode_text


def flatten_scales(per_scale: list[Tensor]) -> Tensor:
    """[(B, s, s, ...)] -> (B, L, ...)."""
    return torch.cat([t.flatten(1, 2) for t in per_scale], 1)


def scale_weights(scales: list[int], reweight: bool, device) -> Tensor:
    """Per-token weights summing to 1: uniform, or Infinity's sqrt(h_K w_K)/sqrt(h_k w_k) per token."""
    sizes = torch.tensor([s * s for s in scales], dtype=torch.float32, device=device)
    per_token = (sizes[-1].sqrt() / sizes.sqrt()) if reweight else torch.ones_like(sizes)
    w = torch.cat([per_token[k].repeat(int(n)) for k, n in enumerate(sizes.tolist())])
    return w / w.sum()


class GeneratorModule(CheckpointedRNG, pl.LightningModule):
    """Stage 2 on a frozen ``tokenizer``. The stage builds every component (lab/stages/build.py: ``model``,
    ``head``, ``correction``) and hands it here with the typed sections it uses. ``record``: the run's resolved
    config as a plain dict, kept in every checkpoint's ``hyper_parameters["cfg"]`` (with ``num_classes``) so that
    lab/stages/generator.py ``load_generator`` can rebuild the module; never read here."""

    def __init__(self, tokenizer: Tokenizer, model: Transformer, head: nn.Module, correction: Any, *,
                 optim: OptimSettings, sample: SampleSettings, scale_reweight: bool, num_classes: int,
                 record: Mapping[str, Any]):
        super().__init__()
        self.save_hyperparameters({"cfg": dict(record), "num_classes": num_classes})
        self.tokenizer = tokenizer.eval()
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.model = model
        self.head = head
        self.correction = correction
        self.optim_settings = optim
        self.sample_settings = sample
        self.register_buffer("weights", scale_weights(tokenizer.msq.scales, scale_reweight, "cpu"), persistent=False)
        self.features: dict[str, Tensor] = {}  # split -> (N, C, H, W) cached encoder features
        self.text: dict[str, tuple[Tensor, Tensor]] = {}  # split -> (states (N, T, 384), mask (N, T))

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen, always in inference mode
        return self

    # --- inputs ---------------------------------------------------------------------------------
    def batch_features(self, batch: dict, split: str) -> Tensor:
        if split in self.features:
            return self.features[split][batch["index"].cpu()].to(self.device, non_blocking=True)
        with torch.no_grad():
            return self.tokenizer.encode(batch["image"])

    def batch_text(self, batch: dict, split: str):
        if self.model.cond_kind != "text":
            return None
        if split in self.text:
            s, m = self.text[split]
            idx = batch["index"].cpu()
            return s[idx].to(self.device), m[idx].to(self.device)

        s, m = encode_text(batch["caption"])
        return s.to(self.device), m.to(self.device)

    def sequence(self, f: Tensor, strategy) -> tuple[Tensor, Tensor]:
        """Teacher-forced (inputs (B, L-1, C), labels (B, L[, d]))."""
        msq = self.tokenizer.msq
        tf = teacher_forcing(msq, f, strategy)
        labels = flatten_scales(tf.labels)
        if self.model.order == "scale":
            x = flatten_scales([t.permute(0, 2, 3, 1) for t in tf.inputs])  # (B, L-1, C)
        else:  # raster: the input of token t is the latent of code t-1
            x = torch.cat([scale_token_latents(msq, lab, k) for k, lab in enumerate(tf.labels)], 1)[:, :-1]
        return x, labels

    def cond(self, batch: dict, split: str, drop: Tensor | None):
        return self.model.condition(labels=batch["label"], text=self.batch_text(batch, split), drop=drop,
                                    batch_size=batch["label"].shape[0])

    def losses(self, batch: dict, split: str, strategy, drop: Tensor | None, with_logits: bool = True):
        """(per-token loss (B, L), the head's logits (None unless ``with_logits``), labels)."""
        f = self.batch_features(batch, split)
        x, labels = self.sequence(f, strategy)
        h = self.model(x, self.cond(batch, split, drop))
        logits = self.head(h) if with_logits else None
        return self.head.loss(h, labels, logits), logits, labels

    # --- steps ----------------------------------------------------------------------------------
    def train_loss(self, batch: dict) -> Tensor:
        B = batch["label"].shape[0]
        drop = torch.rand(B, device=self.device) < self.model.cond_dropout
        tok_loss, _, _ = self.losses(batch, "train", self.correction, drop, with_logits=False)
        return (tok_loss * self.weights).sum(1).mean()

    @property
    def loss_name(self) -> str:
        """The head's loss under its own name (TensorBoard tags): a bit's BCE and a token's CE differ in scale."""
        return self.head.loss_name

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.train_loss(batch)
        check_finite(loss, self.global_step, {"loss": loss})
        B = batch["label"].shape[0]  # (the batch dict holds captions too: Lightning cannot infer its size)
        self.log(f"train/{self.loss_name}", loss, batch_size=B)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=B)
        return loss

    def per_scale(self, values: Tensor) -> list[Tensor]:
        """(B, L) -> per-scale means."""
        return [values[:, self.model.scale_of == k].mean() for k in range(len(self.tokenizer.scales))]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        tok_loss, logits, labels = self.losses(batch, "validation", NoCorrection(), None)
        B = batch["label"].shape[0]
        log = {f"val/{self.loss_name}": tok_loss.mean(), "val/token_accuracy": self.head.correct(logits, labels).mean(),
               "val/bit_accuracy": self.head.bit_agreement(logits, labels).mean()}
        for k, v in enumerate(self.per_scale(tok_loss)):
            log[f"val_scale/{self.loss_name}_{k}"] = v
        self.log_dict(log, prog_bar=False, sync_dist=True, batch_size=B)
        # what ModelCheckpoint monitors (lab/stages/common.py build_trainer); not in TensorBoard, where each head's loss has its own name
        self.log("val/loss", tok_loss.mean(), logger=False, sync_dist=True, batch_size=B)
        self.log("val_loss", tok_loss.mean(), prog_bar=True, logger=False, sync_dist=True, batch_size=B)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.is_global_zero or self.logger is None or self.trainer.sanity_checking:
            return
        exp = getattr(self.logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_image"):
            return
        imgs = self.sample_grid(n=self.sample_settings.grid)
        exp.add_image("val/samples", image_grid([imgs], imgs.shape[0]), self.global_step)

    def grid_conditions(self, n: int) -> dict:
        """Conditions for a sample grid: classes 0..C-1 cycled, or the first val captions."""
        if self.model.cond_kind == "class":
            return {"labels": torch.arange(n, device=self.device) % self.model.num_classes}
        if self.model.cond_kind == "text" and "validation" in self.text:
            s, m = self.text["validation"]
            idx = torch.linspace(0, len(s) - 1, n).long()  # spread over the split, not its first rows
            return {"text": (s[idx].to(self.device), m[idx].to(self.device))}
        return {}

    @torch.no_grad()
    def sample_grid(self, n: int, opts: SampleOptions | None = None) -> Tensor:
        was = self.training
        self.eval()
        opts = opts or SampleOptions.of(self.sample_settings, seed=0)
        cond = self.grid_conditions(n)
        imgs = sample_images(self.model, self.head, self.tokenizer, batch_size=n, opts=opts, **cond)
        self.train(was)
        return imgs

    def configure_optimizers(self):
        return optim.configure(torch.nn.ModuleList([self.model, self.head]), self.optim_settings, self.trainer.max_steps)

    def head_params(self) -> int:
        return count_params(self.head)
