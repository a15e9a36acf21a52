"""The config's range checks: every key a constructor does not check itself (a step count, a batch size, a run id,
the optimiser, loss, schedule, evaluation and component values ...), called once from ``lab.config.load_experiment``
on the resolved config (a plain dict), so that a value no run can use is a ``ConfigError`` naming the key as the user
types it before a run directory exists, never a traceback mid-run. ``refuse_unused``: a generator-stage key set on
a tokenizer run."""
from __future__ import annotations

import math
from typing import Any, Mapping

from lab.core.registry import ConfigError
from lab.runtime.safety import check_component, check_sample_options, check_seeds


def _int_at_least(cfg: Mapping, dotted: str, low: int, meaning: str) -> None:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return
        node = node[part]
    if node is None:
        return
    if isinstance(node, bool) or not isinstance(node, int) or node < low:
        raise ConfigError(f"{dotted}={node!r} is out of range: it must be an integer >= {low} ({meaning}).")


def check_ranges(cfg: Mapping) -> None:
    """The range checks of a resolved config (plain dict) that no constructor makes, so that a bad value is a
    ConfigError before a run directory exists instead of a traceback after it."""
    _int_at_least(cfg, "trainer.max_steps", 1, "the number of optimiser steps")
    _int_at_least(cfg, "loader.batch_size", 1, "images per batch and process")
    _int_at_least(cfg, "loader.num_workers", 0, "data-loading worker processes")
    _int_at_least(cfg, "loader.image_size", 1, "pixels")
    _int_at_least(cfg, "checkpoint_every_n_steps", 1, "how often checkpoints/last.ckpt is refreshed")
    _int_at_least(cfg, "trainer.log_every_n_steps", 1, "how often training losses are logged")
    _int_at_least(cfg, "eval.batches", 1, "validation batches of the final evaluation")
    _int_at_least(cfg, "eval.fid_samples", 0, "images for FID; 0 skips it")
    _int_at_least(cfg, "eval.grid_images", 1, "images per grid row")
    _int_at_least(cfg, "optim.warmup_steps", 0, "learning-rate warm-up steps")
    if cfg.get("stage") == "generator":
        _int_at_least(cfg, "tokenizer_train.max_steps", 1, "the tokenizer stage's optimiser steps")
        _int_at_least(cfg, "tokenizer_train.batch_size", 1, "the tokenizer stage's batch size")
        _int_at_least(cfg, "sample.grid", 1, "images in the sample grid")
        s = cfg.get("sample") or {}
        check_sample_options(guidance=s.get("guidance"), temperature=s.get("temperature"), top_k=s.get("top_k"),
                             top_p=s.get("top_p"))
    check_numbers(cfg)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is out of range: it must be an integer in [0, 2^32) (numpy's seeds).")
    if cfg.get("run_id") is not None:
        check_component(cfg["run_id"], "run_id")
    if cfg.get("sweep"):
        check_seeds(cfg.get("seeds"), True)


def _lookup(cfg: Mapping, dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def _number(cfg: Mapping, dotted: str, meaning: str, low: float | None = None, high: float | None = None, *,
            low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> None:
    """``dotted`` (when set) is a finite number in the interval; else a ConfigError naming it as typed."""
    found, v = _lookup(cfg, dotted)
    if not found or (v is None and none_ok):
        return
    ok = _is_number(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        what = "a number " + _interval(low, high, low_open, high_open) + (" or null" if none_ok else "")
        raise ConfigError(f"{dotted}={v!r} is out of range: it must be {what} ({meaning}).")


def _choice(cfg: Mapping, dotted: str, choices: tuple[str, ...], meaning: str) -> None:
    found, v = _lookup(cfg, dotted)
    if found and v not in choices:
        raise ConfigError(f"{dotted}={v!r} is not valid: it must be one of {', '.join(choices)} ({meaning}).")


def check_numbers(cfg: Mapping) -> None:
    """The ranges of the optimiser, loss, schedule, evaluation and component keys (plain dict of a resolved config):
    a value no run can use is a ConfigError naming the key as the user types it, never a traceback mid-run."""
    _number(cfg, "optim.learning_rate", "the peak learning rate of AdamW, e.g. 2e-3", 0, low_open=True)
    _number(cfg, "optim.weight_decay", "AdamW's decoupled weight decay; 0: none", 0)
    found, betas = _lookup(cfg, "optim.betas")
    if found and (not isinstance(betas, (list, tuple)) or len(betas) != 2
                  or not all(_is_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas={betas!r} is out of range: it must be a list of two numbers, each in [0, 1) "
                          "(AdamW's averaging of the gradient and of its square), e.g. optim.betas=[0.9,0.95].")
    _number(cfg, "optim.min_lr_ratio", "the cosine decay ends at learning_rate x min_lr_ratio", 0, 1)
    _number(cfg, "optim.ema_decay", "weight averaging of the tokenizer stage; 0: off, e.g. 0.999", 0, 1, high_open=True)
    _number(cfg, "loss.lpips_weight", "the weight of the LPIPS term; 0: none", 0)
    _choice(cfg, "loss.recon", ("l1", "l2"), "the reconstruction loss")
    _choice(cfg, "loss.lpips_net", ("alex", "vgg"), "LPIPS's backbone")
    for key in ("loss.lpips_size", "eval.lpips_size"):
        _int_or_null(cfg, key, 1, "LPIPS up-samples smaller images to this size first; null: never")
    _int_or_null(cfg, "loader.global_batch_size", 1, "images per step over all processes; null: batch_size each")
    _number(cfg, "trainer.gradient_clip_val", "the gradient norm clip; 0 or null: none", 0, none_ok=True)
    found, v = _lookup(cfg, "trainer.limit_val_batches")
    if found and v is not None and not (_is_number(v) and v >= 0 and (isinstance(v, int) or v <= 1)):
        raise ConfigError(f"trainer.limit_val_batches={v!r} is out of range: an integer >= 0 (batches) or a "
                          "fraction in [0, 1] of the validation split.")
    found, v = _lookup(cfg, "trainer.val_check_interval")
    if found and v is not None and not (_is_number(v) and (v >= 1 if isinstance(v, int) else 0 < v <= 1)):
        raise ConfigError(f"trainer.val_check_interval={v!r} is out of range: an integer >= 1 (steps between "
                          "validations) or a fraction in (0, 1] of an epoch.")
    found, noise = _lookup(cfg, "eval.label_noise")
    if found and noise is not None and (not isinstance(noise, (list, tuple))
                                        or not all(_is_number(x) and x >= 0 for x in noise)):
        raise ConfigError(f"eval.label_noise={noise!r} is not valid: it must be a list of noise levels >= 0 "
                          "(x the RMS of the encoder features), e.g. [0.1,0.3], or [] for none.")
    _number(cfg, "data.val_fraction", "the share of images held out for validation", 0, 1, high_open=True)
    _int_or_null(cfg, "data.limit", 1, "the number of images kept per source split; null: all")
    _number(cfg, "tokenizer.prefix_prob", "the share of a batch decoded from a prefix of the scales", 0, 1)
    _number(cfg, "tokenizer.phi_ratio", "the residual share of phi_k", 0, 1)
    for key in ("tokenizer.channels", "tokenizer.latent_dim", "tokenizer.num_res_blocks"):
        _int_at_least(cfg, key, 1, "a layer size")
    _int_at_least(cfg, "tokenizer.mid_blocks", 0, "blocks at the bottleneck")
    _int_at_least(cfg, "tokenizer.phi_count", 0, "shared refinement convolutions")
    for key in ("tokenizer.scales", "tokenizer.channel_mult"):
        found, v = _lookup(cfg, key)
        if found and (not isinstance(v, (list, tuple)) or not v
                      or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise ConfigError(f"{key}={v!r} is not valid: it must be a non-empty list of integers >= 1.")
    found, scales = _lookup(cfg, "tokenizer.scales")
    if found and list(scales) != sorted(set(scales)):
        raise ConfigError(f"tokenizer.scales={list(scales)!r} is not valid: the scales must grow strictly, coarse to "
                          "fine, e.g. [1,2,3,4,6,8].")
    if cfg.get("stage") == "generator":
        _number(cfg, "tokenizer_train.learning_rate", "the tokenizer stage's peak learning rate", 0, low_open=True)
        found, v = _lookup(cfg, "tokenizer_train.seed")
        if found and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32):
            raise ConfigError(f"tokenizer_train.seed={v!r} is out of range: it must be an integer in [0, 2^32).")
        _choice(cfg, "sample.guidance_schedule", ("constant", "linear"), "how guidance grows over the scales")
        for key in ("generator.dropout", "generator.cond_dropout"):
            _number(cfg, key, "a probability", 0, 1, high_open=True)
        _number(cfg, "generator.mlp_ratio", "the MLP's width / the model's width", 0, low_open=True)
        for key in ("generator.depth", "generator.width", "generator.heads"):
            _int_or_null(cfg, key, 1, "null: the ladder's value for generator.size")
        _number(cfg, "correction.p_max", "the largest bit-flip rate", 0, 1)
        _number(cfg, "correction.p_step", "the step of the flip rates drawn", 0, 1, low_open=True)


def _int_or_null(cfg: Mapping, dotted: str, low: int, meaning: str) -> None:
    found, v = _lookup(cfg, dotted)
    if found and v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
        raise ConfigError(f"{dotted}={v!r} is out of range: it must be an integer >= {low} or null ({meaning}).")


# keys of base.yaml that only the generator stage reads: setting one on a tokenizer run would do nothing
GENERATOR_ONLY = ("generator", "head", "correction", "generator_loss", "sample", "tokenizer_from", "tokenizer_train")


def refuse_unused(set_keys: Mapping, stage: str, source: str) -> None:
    """A generator-stage key set (in the YAML, a preset's sweep axis or the command line) on a tokenizer run is
    silently ignored otherwise: refuse it."""
    if stage != "tokenizer":
        return
    used = [_dotted(k, set_keys[k]) for k in GENERATOR_ONLY if k in set_keys]
    if used:
        raise ConfigError(
            f"{', '.join(used)} set in {source}, but this is a tokenizer run (stage: tokenizer), which never reads "
            f"{'it' if len(used) == 1 else 'them'}: the generator-stage keys ({', '.join(GENERATOR_ONLY)}) apply to "
            "stage: generator experiments only. Remove it, or run a generator experiment (generator/...)."
        )


def _dotted(key: str, value: Any) -> str:
    """``generator.size='m'`` for {generator: {size: m}}: the keys as the user typed them."""
    if isinstance(value, Mapping) and value:
        return ", ".join(_dotted(f"{key}.{k}", v) for k, v in value.items())
    return f"{key}={value!r}"
