"""Every check of a run that needs no training, in one place: ``run_experiment`` makes them before it builds the
data or a model or writes a file, and ``python -m lab run NAME --dry-run`` makes each of them too.

The config's own keys, types and ranges are checked before, by ``lab.config.load_experiment``; here come the
checks that look at the machine and the disk: the accelerator, the data's paths and split sizes against
``eval.fid_samples``, the generator's quantizer x head x correction combination, and for ``resume=true`` the run
it continues (its config.yaml compared, its last.ckpt readable). Each problem is one ConfigError that names the
key as the user types it and the fix.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from lab.core.registry import ConfigError, to_dict
from lab.data.datasets import cache_folder, split_sizes
from lab.data.sources import DataError
from lab.metrics.fid_protocol import check_eval_size
from lab.config.runs import check_resume
from lab.runtime.safety import load_checkpoint
from lab.stages.common import resolve_run_settings, resume_dir


def check_run(cfg: Any) -> list[str]:
    """Raise the first problem; return notes on what could not be checked without building anything."""
    notes: list[str] = []
    check_accelerator(cfg)
    notes += check_data(cfg)
    if cfg["stage"] == "generator":
        from lab.stages.generator import preflight

        try:
            preflight(cfg)
        except ValueError as e:  # a constructor's own range check (a correction's p_max ...)
            raise ConfigError(f"Invalid generator-stage setting: {e}. Fix the key it names (generator.*, head.*, "
                              "correction.*).") from None
    if cfg["resume"]:
        check_resumable(cfg)
    return notes


def check_accelerator(cfg: Any) -> None:
    """``trainer.accelerator`` names a device this machine has (and ``trainer.devices`` no more of them)."""
    trainer = to_dict(cfg["trainer"])
    acc = str(trainer.get("accelerator", "cpu")).lower()
    if acc not in ("gpu", "cuda", "mps"):
        return
    import torch

    preset = " (preset=gpu sets it)" if cfg.get("preset") == "gpu" else ""
    fix = "Run on the CPU with trainer.accelerator=cpu (or preset=cpu / preset=smoke), or on a machine with a GPU."
    if acc == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.accelerator=mps{preset}, but this machine has no Apple GPU that torch can use. {fix}")
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={acc}{preset}, but this machine has no CUDA GPU that torch can use "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU-only build'}). "
                          f"{fix}")
    devices, have = trainer.get("devices"), torch.cuda.device_count()
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > have:
        raise ConfigError(f"trainer.devices={devices}, but this machine has {have} GPU(s). Set trainer.devices={have} "
                          "(or -1: every GPU).")


def check_data(cfg: Any) -> list[str]:
    """The data's paths exist, and the validation split holds enough images for ``eval.fid_samples``."""
    node = dict(to_dict(cfg["data"]))
    node.setdefault("size", cfg["loader"]["image_size"])  # as ImageDataModule gives it (the cache key)
    name = node.get("name")
    if name == "imagefolder" and "path" in node and not Path(str(node["path"])).expanduser().is_dir():
        raise ConfigError(f"data.path={node['path']!r}: no such folder. Give a folder of images (one sub-folder "
                          "per class if they have classes).")
    path = str(node.get("path", ""))
    if name == "hf" and path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise ConfigError(f"data.path={path!r}: no such file or folder. Give a local dataset (a folder, a parquet / "
                          "arrow file, a save_to_disk folder) that exists, or a Hugging Face hub name.")
    try:
        name, kw, folder = cache_folder(node)
        sizes = split_sizes(node)
    except (DataError, OSError, TypeError, ImportError) as e:  # the build reports it in full
        return [f"the data's split sizes were not checked ({type(e).__name__}: {str(e)[:200]})"]
    if name == "fashion_mnist" and sizes is None and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"fashion_mnist: the IDX files are not in {kw['root']} (data.root), and HF_HUB_OFFLINE=1 "
                          "forbids the download. Install them (`apt-get install dataset-fashion-mnist`), set "
                          "data.root to the folder holding them, or allow the hub (HF_HUB_OFFLINE=0).")
    empty = [s for s, n in (sizes or {}).items() if n == 0]
    if empty:  # (ImageDataModule.setup says the same after a build)
        raise ConfigError(
            f"data {to_dict(cfg['data'])}: the {' and '.join(empty)} split is empty (train {sizes['train']}, "
            f"validation {sizes['validation']} images): the dataset is too small to hold both a training and a "
            "validation split. Add images, raise data.val_fraction (the share of images held out for validation), "
            "or raise data.limit."
        )
    fid = int(cfg["eval"]["fid_samples"])
    if fid <= 0:
        return []
    if sizes is None:
        return [f"the validation split's size (for eval.fid_samples={fid}) is checked once the data is built"]
    check_eval_size(fid, sizes["validation"])
    return []


def check_resumable(cfg: Any) -> None:
    """``resume=true``: the run exists, its config.yaml allows this command's config, its last.ckpt is readable.
    Reads only: nothing of the run changes until every check of the run has passed (lab/stages/common.py)."""
    run_dir = resume_dir(cfg)
    resolved = copy.deepcopy(cfg)  # compared as the run recorded it: its `auto` settings resolved
    resolve_run_settings(resolved, verbose=False)
    check_resume(resolved, run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    data = load_checkpoint(ckpt)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ConfigError(f"Cannot resume from {ckpt}: it is not a Lightning checkpoint (no state_dict). Move the "
                          "run aside and start a new one.")
