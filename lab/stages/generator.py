"""The generator stage end to end: find or train the tokenizer, cache features, train, evaluate.

A generator experiment names its tokenizer with ``tokenizer_from`` (a checkpoint file or a tokenizer run
directory). When it is null the experiment's own tokenizer stage is trained first, once, and cached under
``runs/_tokenizers/<hash>/`` keyed by everything that defines it (data, quantizer, tokenizer, loss and
``tokenizer_train``), so every generator that needs the same tokenizer reuses it. The final evaluation is
lab/stages/generator_eval.py.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from lab.config.runs import checkpoint_config
from lab.core.registry import ConfigError, build, save_config, suggest, to_dict
from lab.evaluation.tokenizer import format_per_scale
from lab.generation.correction import CORRECTIONS, check_compatible
from lab.metrics.fid_protocol import check_eval_size
from lab.metrics.measures import count_params, peak_memory_mb, reset_peak_memory
from lab.models.heads import build_head
from lab.models.text import encode_text
from lab.models.tokenizer import ARCH_VERSION, Tokenizer
from lab.models.transformer import LADDER, Transformer
from lab.quantizers import build_quantizer
from lab.runtime.files import atomic_torch_save, exclusive, process_rank, runs_root
from lab.runtime.progress import Progress, phase
from lab.runtime.published import install_published_tokenizer, published_tokenizer
from lab.runtime.machine import metrics_record, resolve_precision
from lab.runtime.safety import load_checkpoint
from lab.runtime.interruption import Interruption
from lab.runtime.trainer import cpu_load, timer_of
from lab.quantizers.base import local_statistics
from lab.stages.common import (begin_resume, build_datamodule, build_trainer, eval_device, log_final,
                               make_run_dir, resolve_run_settings, run_times, seed_all, step_flops, summary,
                               write_metrics)
from lab.stages.tokenizer import run_tokenizer
from lab.stages.build import build_tokenizer, generator_module, tokenizer_module
from lab.stages.generator_eval import evaluate_generator
from lab.train.generator import GeneratorModule

TOKENIZER_KEYS = ("data", "quantizer", "tokenizer", "loss", "tokenizer_train")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tokenizer_config(cfg: DictConfig) -> DictConfig:
    """The tokenizer-stage config a generator experiment implies."""
    d = to_dict(cfg)
    tt = d["tokenizer_train"]
    d.update(stage="tokenizer", seed=tt["seed"], resume=False, run_id="run")
    d["trainer"] = {**d["trainer"], "max_steps": tt["max_steps"], "val_check_interval": min(d["trainer"]["val_check_interval"], tt["max_steps"])}
    # the tokenizer stage's own precision: tokenizer_train.precision, else what the experiment asked for (before
    # this generator stage resolved it: `auto` is resolved here again, for this stage)
    requested = tt["precision"] if tt.get("precision") is not None else (d.get("resolved") or {}).get("precision_requested", d["trainer"]["precision"])
    precision, why = resolve_precision(requested, d["trainer"].get("accelerator", "cpu"), "tokenizer")
    d["trainer"]["precision"] = precision
    d["resolved"] = {"precision_requested": str(requested), "precision": precision, "precision_reason": why}
    d["loader"] = {**d["loader"], "global_batch_size": None}  # tokenizer_train.batch_size is per process
    d["optim"] = {**d["optim"], "learning_rate": tt["learning_rate"], "ema_decay": 0.0}
    d["loader"] = {**d["loader"], "batch_size": tt["batch_size"]}
    d["eval"] = {**d["eval"], "fid_samples": 0}
    key = {k: d[k] for k in TOKENIZER_KEYS} | {"image_size": d["loader"]["image_size"], "arch_version": ARCH_VERSION}
    key["tokenizer_train"] = {k: v for k, v in key["tokenizer_train"].items() if k != "precision"}
    if str(d["trainer"]["precision"]) not in ("32-true", "32"):  # fp32 keys stay those of earlier tokenizers
        key["precision"] = str(d["trainer"]["precision"])
    d["name"] = f"_tokenizers/{_hash(key)}"
    return OmegaConf.create(d)


def checkpoint_in(path: Path, key: str = "tokenizer_from=", fix: str = "") -> Path:
    """The checkpoint a path names: the file itself, or a run directory's best (else last) checkpoint. ``key``:
    how the user gave the path (``tokenizer_from=``; the sample command's RUN_DIR argument: ``""``)."""
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise ConfigError(f"{key}{path}: no checkpoint there (looked for the file itself and {path}/checkpoints/best.ckpt, "
                      f"last.ckpt).{' ' + fix if fix else ''}")


SAMPLE_FIX = ("Give a generator run directory (runs/<NAME>/<run-id>, of a run that has trained) or one of its "
              "checkpoints (.ckpt).")


def load_tokenizer(path: str | Path):
    """A TokenizerModule from a checkpoint or a run directory (strict: a shape mismatch is an error)."""
    ckpt = checkpoint_in(Path(path))
    try:
        data = load_checkpoint(ckpt)  # weights_only: a crafted file is refused before any of it runs
        module = tokenizer_module(checkpoint_config(data, ckpt, "tokenizer"))
        module.on_load_checkpoint(data)
        module.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"The tokenizer checkpoint {ckpt} does not match its configuration: {first}") from None
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{ckpt} is not a bitlab tokenizer checkpoint ({e}).") from None
    module.adopt_ema()
    return module


def load_generator(run_dir: Path):
    """(GeneratorModule in eval mode, its config) from a generator run directory or checkpoint."""
    ckpt_path = checkpoint_in(Path(run_dir), "", SAMPLE_FIX)
    ckpt = load_checkpoint(ckpt_path)  # weights_only: a crafted file is refused before any of it runs
    cfg = checkpoint_config(ckpt, ckpt_path, "generator")
    module = generator_module(cfg, build_tokenizer(cfg), num_classes=ckpt["hyper_parameters"]["num_classes"])
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt_path} does not match its configuration: {str(e).splitlines()[0]}") from None
    return module.eval(), cfg


def tokenizer_from(cfg: Any) -> Path:
    """``tokenizer_from``'s path, which must hold a checkpoint (the file itself, or a run directory's)."""
    path = Path(cfg["tokenizer_from"])
    if not path.exists():
        raise ConfigError(f"tokenizer_from={path} does not exist. Give a tokenizer checkpoint (.ckpt) or run directory, or null to train one.")
    checkpoint_in(path)
    return path


def resolve_tokenizer(cfg: DictConfig):
    """(TokenizerModule, its directory): from ``tokenizer_from``, the cache, or by training it now."""
    if cfg["tokenizer_from"]:
        path = tokenizer_from(cfg)
        module = load_tokenizer(path)
        theirs, ours = to_dict(module.hparams["cfg"]["quantizer"]), to_dict(cfg["quantizer"])
        if theirs != ours:
            raise ConfigError(
                f"tokenizer_from={path} was trained with quantizer {theirs}, but this experiment says {ours}. "
                f"Set quantizer to match (e.g. quantizer.name={theirs.get('name')}), or tokenizer_from=null to train one."
            )
        return module, (path if path.is_dir() else path.parent.parent)
    tcfg = tokenizer_config(cfg)
    tdir = runs_root(tcfg["runs_dir"]) / tcfg["name"] / "run"
    if (tdir / "metrics.json").is_file():
        print(f"reusing tokenizer {tdir}")
        return load_tokenizer(tdir), tdir
    # one process trains a cache entry; another that needs it meanwhile (a second sweep invocation) waits for it
    with exclusive(tdir.parent / ".training.lock", waiting=f"waiting for another process to finish training {tdir}"):
        published = None if (tdir / "metrics.json").is_file() else published_tokenizer(tdir.parent.name)
        if (tdir / "metrics.json").is_file():
            print(f"reusing tokenizer {tdir} (trained meanwhile by another process)")
        elif published is not None:  # a suite's published tokenizer (SHA-256 checked): the same weights everywhere
            if process_rank() == 0:
                install_published_tokenizer(published, tdir)
            print(f"using the published tokenizer {published.parent} (SHA-256 verified) -> {tdir}")
        else:
            if (tdir / "checkpoints" / "last.ckpt").is_file():
                tcfg["resume"] = True
            elif tdir.exists() and process_rank() == 0:  # (other ranks join rank 0's run of it)
                shutil.rmtree(tdir)  # an interrupted cache entry with no checkpoint: nothing to keep
            print(f"training the tokenizer stage first -> {tdir}")
            run_tokenizer(tcfg)
    return load_tokenizer(tdir), tdir


def weights_hash(module: torch.nn.Module) -> str:
    """The first 12 hex digits of a SHA-256 over a module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, v in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:12]


@torch.no_grad()
def cache_features(module: GeneratorModule, dm, tdir: Path, cfg: DictConfig) -> None:
    """Encoder features of every image of both splits, computed once per tokenizer (keyed by its weights) and data,
    in a cache of their own (``runs/_features/``, never inside another run's directory), with a progress count,
    and saved every ``SAVE_EVERY_S`` seconds so that an interrupted run keeps what was encoded."""
    key = _hash({"data": to_dict(cfg["data"]), "size": cfg["loader"]["image_size"]})
    tok = module.tokenizer.eval()
    path = runs_root(cfg["runs_dir"]) / "_features" / f"{weights_hash(tok)}-{key}.pt"
    legacy = tdir / "features" / f"{key}.pt"  # where runs before this cache kept them
    if path.is_file() or legacy.is_file():
        feats = torch.load(path if path.is_file() else legacy, map_location="cpu", weights_only=True)
    else:
        with exclusive(path.with_name(path.name + ".lock"), waiting=f"waiting for another process encoding {path}"):
            feats = _encode_splits(tok, dm, cfg, path) if not path.is_file() else torch.load(path, map_location="cpu", weights_only=True)
    module.features = feats
    if module.model.cond_kind == "text":
        module.text = cache_text(dm, cfg, key)


SAVE_EVERY_S = 60.0


def _encode_splits(tok, dm, cfg: DictConfig, path: Path) -> dict:
    partial = path.with_name(path.name + ".partial")
    state = torch.load(partial, map_location="cpu", weights_only=True) if partial.is_file() else {}
    device, was = eval_device(cfg), next(tok.parameters()).device
    tok.to(device)
    total = sum(len(dm.splits[s]) for s in ("train", "validation"))
    done = sum(sum(c.shape[0] for c in state.get(s, [])) for s in ("train", "validation"))
    phase(f"encoding both splits through the tokenizer once ({total:,} images), cached in {path}"
          + (f"; {done:,} were encoded before an interruption" if done else ""))
    last = time.time()
    with Progress("encoding images through the tokenizer", total - done) as progress:
        for split in ("train", "validation"):
            chunks = list(state.get(split, []))
            skip = len(chunks)
            for i, b in enumerate(dm.ordered_loader(split)):
                if i < skip:
                    continue
                chunks.append(tok.encode(b["image"].to(device)).cpu())
                progress.update(b["image"].shape[0])
                state[split] = chunks
                if time.time() - last > SAVE_EVERY_S and process_rank() == 0:
                    atomic_torch_save(state, partial)
                    last = time.time()
            state[split] = chunks
    tok.to(was)
    feats = {split: torch.cat(state[split]).contiguous() for split in ("train", "validation")}
    if process_rank() == 0:
        atomic_torch_save(feats, path)
        partial.unlink(missing_ok=True)
    return feats


def cache_text(dm, cfg: DictConfig, key: str) -> dict:
    path = runs_root(cfg["runs_dir"]) / "_text" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = {split: encode_text(dm.captions(split)) for split in ("train", "validation")}
    atomic_torch_save(out, path)
    return out


def preflight(cfg: DictConfig) -> None:
    """The checks that need no training, before any (a tokenizer may be trained first): generator size, the
    quantizer x head x correction combination (an absurd index head is refused here), tokenizer_from matching."""
    if cfg["optim"].get("ema_decay"):
        raise ConfigError(
            f"optim.ema_decay={cfg['optim']['ema_decay']}: weight averaging is implemented for the tokenizer stage "
            "only (the generator's tokenizer stage trains without it); set optim.ema_decay=0 for a generator run."
        )
    gen = to_dict(cfg["generator"])
    size = gen.get("size", inspect.signature(Transformer).parameters["size"].default)
    if size not in LADDER:
        raise ConfigError(f"Unknown generator.size '{size}'.{suggest(str(size), list(LADDER))}")
    width = gen.get("width") or LADDER[size][1]
    latent = to_dict(cfg["tokenizer"]).get("latent_dim", inspect.signature(Tokenizer).parameters["latent_dim"].default)
    with torch.device("meta"):  # the constructors' own checks, with nothing allocated (an index head of 2^20 rows)
        q = build_quantizer(to_dict(cfg["quantizer"]), dim=latent)
        build_head(to_dict(cfg["head"]), width=width, code_kind=q.code_kind, bits=q.bits, vocab_size=q.vocab_size,
                   levels=getattr(q, "levels", None))
        correction = build(CORRECTIONS, to_dict(cfg["correction"]), "correction")
    check_compatible(correction, q.code_kind, str(cfg["quantizer"]["name"]))
    if cfg["tokenizer_from"]:
        tokenizer_from(cfg)


def run_generator(cfg: DictConfig) -> tuple[Path, dict]:
    """One generator run; ``run_experiment`` has made every check first (lab/stages/preflight.py: ``preflight``
    below among them)."""
    resolve_run_settings(cfg)  # the generator stage's precision / layout (its tokenizer stage resolves its own)
    seed_all(cfg)
    phase(f"building data: {cfg['data']['name']}")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    check_eval_size(cfg["eval"]["fid_samples"], len(dm.splits["validation"]))  # before any training
    tok_module, tdir = resolve_tokenizer(cfg)
    seed_all(cfg)
    module = generator_module(cfg, tok_module.tokenizer, num_classes=dm.num_classes)
    cache_features(module, dm, tdir, cfg)
    if cfg["compile"]:
        module.model.compile()  # in place: parameter names (and checkpoints) are unchanged
    run_dir, resuming = make_run_dir(cfg)
    if not resuming and process_rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "tokenizer.txt").write_text(str(tdir) + "\n")
    reset_peak_memory()
    t0 = time.time()
    ckpt = begin_resume(module, cfg, run_dir) if resuming else None
    trainer = build_trainer(cfg, run_dir, [Interruption(run_dir)])  # SIGTERM / SIGINT: checkpoint, clean exit
    phase(f"training the generator: {cfg['trainer']['max_steps']:,} steps -> {run_dir}")
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    train_end = time.time()
    train_peak = peak_memory_mb()  # training alone; peak_memory_mb below also covers the evaluation
    metrics: dict[str, Any] = {}
    if trainer.is_global_zero:
        with local_statistics():  # rank 0 alone from here: no collective may wait for the others
            module.to(eval_device(cfg))
            phase(f"evaluating the generator: validation loss and accuracy per scale over {cfg['eval']['batches']} batches")
            metrics = evaluate_generator(module, dm, cfg)
            metrics.update(
                params=count_params(module.model) + count_params(module.head), head_params=module.head_params(),
                steps=int(trainer.global_step), **run_times(trainer, t0, train_end, resumed=ckpt is not None),
                peak_memory_mb=peak_memory_mb(), train_peak_memory_mb=train_peak, cpu_load=cpu_load(), tokenizer=str(tdir), flops_per_step=step_flops(module, dm),
                steps_planned=int(cfg["trainer"]["max_steps"]), **metrics_record(cfg["resolved"]),
                **timer_of(trainer).summary(cfg["loader"]["batch_size"], trainer.world_size),
            )
            write_metrics(run_dir, metrics)
            imgs = module.sample_grid(cfg["sample"]["grid"])
            nrow = int(len(imgs) ** 0.5 + 0.999)
            torchvision.utils.save_image(imgs * 0.5 + 0.5, run_dir / "samples.png", nrow=nrow)
            grid = torchvision.utils.make_grid((imgs * 0.5 + 0.5).clamp(0, 1).cpu(), nrow=nrow)
            log_final(trainer, cfg, metrics, images={"samples": grid})  # in TensorBoard too, validated or not
            print(summary(run_dir, metrics, cfg))
            print_per_scale(metrics["per_scale"])
    return run_dir, metrics


def print_per_scale(per: dict) -> None:
    print(format_per_scale(per))
