"""lab.data.sources and lab.data.datasets: sources -> cached Arrow datasets -> ImageDataModule. Offline, small, each test a few seconds."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import lab.data.datasets as D
import lab.data.emoji as E
import lab.data.sources as S
from lab.data.datasets import DATASETS, ImageDataModule, build_dataset
from lab.data.sources import DataError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_ROOT})")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never contact the hub; keep every cache inside tmp_path."""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("BITLAB_CACHE", str(tmp_path / "default-cache"))


def _write_images(root: Path, spec: dict[str, list[tuple]]) -> None:
    """spec: sub-folder ('' for flat) -> [(mode, size, colour), ...] written as PNGs."""
    for sub, images in spec.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, (mode, size, colour) in enumerate(images):
            Image.new(mode, size, colour).save(root / sub / f"img{i:02d}.png")


def _check_dict(dd: datasets.DatasetDict, size: int) -> None:
    assert set(dd) == {"train", "validation"}
    for split in dd.values():
        assert set(split.column_names) == {"image", "label", "caption"}
        assert isinstance(split.features["image"], datasets.Image)
        if len(split):
            img = split[0]["image"]
            assert img.mode == "RGB" and img.size == (size, size)


# ---------------------------------------------------------------------------------------------- emoji32
@pytest.mark.parametrize("stem, caption, group", [
    ("1F437", "pig face", "animal"),
    ("1F600", "grinning face", "face"),
    ("1F1E7-1F1F7", "flag: Brazil", "flag"),
    ("0023-FE0F-20E3", "keycap: number sign", "symbol"),
    ("1F44B-1F3FD", "waving hand sign: medium skin tone", "body"),
    ("1F3C3-200D-2640-FE0F", "woman runner", "person"),
    ("1F3F4-E0067-E0062-E0073-E0063-E0074-E007F", "flag: Scotland", "flag"),
    ("1F34E", "red apple", "food"),
    ("E000", "openmoji extra e000", "extra"),
])
def test_emoji_caption_and_class(stem, caption, group):
    assert E.emoji_caption(stem) == caption
    assert E.EMOJI_CLASSES[E.emoji_class(caption)] == group


def test_emoji32_small_build_and_cache(tmp_path, monkeypatch):
    node = {"name": "emoji32", "limit": 40}
    dd = build_dataset(node, cache_dir=tmp_path)
    _check_dict(dd, 32)
    assert len(dd["train"]) + len(dd["validation"]) == 40 and len(dd["validation"]) < 15
    assert dd["train"].features["label"].names == E.EMOJI_CLASSES
    rows = [r for split in dd.values() for r in split]
    assert all(r["caption"] for r in rows)
    captions = {r["caption"] for r in rows}
    assert "keycap: number sign" in captions and "keycap: digit one" in captions  # 0023-..., 0031-FE0F-20E3
    first = next(r for r in rows if r["caption"] == "keycap: number sign")
    px = np.asarray(first["image"])
    assert px[0, 0].tolist() == [255, 255, 255] and px.min() < 100  # white background, dark glyph
    assert first["label"] == E.EMOJI_CLASSES.index("symbol")
    cached = [p.name for p in tmp_path.iterdir()]
    assert len(cached) == 1 and cached[0].startswith("emoji32-")  # no temp folder left behind

    def boom(*args, **kwargs):
        raise AssertionError("renderer called: the cache was not used")

    monkeypatch.setattr(S, "_render_svg", boom)
    again = build_dataset({"name": "emoji32", "limit": 40, "size": 32}, cache_dir=tmp_path)  # same kwargs
    assert again["train"]["caption"] == dd["train"]["caption"]
    with pytest.raises(AssertionError):  # other kwargs -> another cache folder -> a build
        build_dataset({"name": "emoji32", "limit": 41}, cache_dir=tmp_path)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(S, "_render_svg", boom)
    with pytest.raises(RuntimeError):
        build_dataset({"name": "emoji32", "limit": 3}, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_never_loads_half_a_dataset(tmp_path, monkeypatch):
    real_save = datasets.DatasetDict.save_to_disk

    def save_then_die(self, path, **kwargs):
        real_save(self, path, **kwargs)
        (Path(path) / "train").rename(Path(path) / "gone")  # half a dataset...
        raise KeyboardInterrupt  # ...then the process is interrupted

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_dataset({"name": "emoji32", "limit": 3}, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", real_save)
    dd = build_dataset({"name": "emoji32", "limit": 3}, cache_dir=tmp_path)
    assert len(dd["train"]) + len(dd["validation"]) == 3


def test_default_cache_dir_from_env(tmp_path):
    build_dataset({"name": "emoji32", "limit": 2})
    assert [p.name.split("-")[0] for p in (tmp_path / "default-cache").iterdir()] == ["emoji32"]


# ---------------------------------------------------------------------------------------------- fashion_mnist
@needs_fashion
def test_fashion_mnist_limit(tmp_path):
    dd = build_dataset({"name": "fashion_mnist", "limit": 50}, cache_dir=tmp_path)
    _check_dict(dd, 32)
    assert len(dd["train"]) == 50 and len(dd["validation"]) == 50
    assert dd["train"].features["label"].names == S.FASHION_CLASSES
    for r in dd["train"]:
        px = np.asarray(r["image"])
        assert px[:2].max() == 0 and px[:, :2].max() == 0 and px[-2:].max() == 0  # 2 px zero padding
        assert (px[..., 0] == px[..., 2]).all()  # grey stored as RGB
        assert r["caption"] == S.FASHION_CLASSES[r["label"]].lower()


@needs_fashion
def test_fashion_mnist_resized(tmp_path):
    dd = build_dataset({"name": "fashion_mnist", "limit": 4, "size": 16}, cache_dir=tmp_path)
    _check_dict(dd, 16)


def test_fashion_mnist_missing_root_offline(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as err:
        build_dataset({"name": "fashion_mnist", "root": str(missing)}, cache_dir=tmp_path)
    msg = str(err.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg and "HF_HUB_OFFLINE" in msg


def test_fashion_mnist_truncated_file(tmp_path):
    import gzip
    root = tmp_path / "fm"
    root.mkdir()
    for name in [f for pair in S.FASHION_FILES.values() for f in pair]:
        with gzip.open(root / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x01" * 100)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        build_dataset({"name": "fashion_mnist", "root": str(root)}, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_classes(tmp_path):
    root = tmp_path / "imgs"
    _write_images(root, {"cat": [("RGB", (40, 30), (200, 0, 0))] * 6,  # not square: centre-cropped
                         "dog_house": [("L", (20, 20), 90)] * 6,  # grey
                         "zebra": [("RGBA", (16, 16), (0, 0, 255, 0))] * 2})  # transparent -> white
    dd = build_dataset({"name": "imagefolder", "path": str(root), "size": 16, "val_fraction": 0.25},
                       cache_dir=tmp_path / "cache")
    _check_dict(dd, 16)
    assert dd["train"].features["label"].names == ["cat", "dog_house", "zebra"]
    rows = [r for split in dd.values() for r in split]
    assert len(rows) == 14 and 0 < len(dd["validation"]) < 14
    for r in rows:
        px = np.asarray(r["image"])[8, 8].tolist()
        expected = {0: ("cat", [200, 0, 0]), 1: ("dog house", [90, 90, 90]), 2: ("zebra", [255, 255, 255])}
        assert (r["caption"], px) == expected[r["label"]]


def test_imagefolder_flat_has_no_labels(tmp_path):
    _write_images(tmp_path / "flat", {"": [("RGB", (8, 8), (0, 255, 0))] * 3})
    dd = build_dataset({"name": "imagefolder", "path": str(tmp_path / "flat"), "size": 8, "val_fraction": 0.0},
                       cache_dir=tmp_path / "cache")
    assert dd["train"]["label"] == [-1, -1, -1] and dd["train"]["caption"] == ["", "", ""]
    assert len(dd["validation"]) == 0


def test_imagefolder_corrupt_file_named(tmp_path):
    root = tmp_path / "imgs"
    _write_images(root, {"a": [("RGB", (64, 64), (1, 2, 3))] * 2})
    good = (root / "a" / "img00.png").read_bytes()
    bad = root / "a" / "truncated.png"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        build_dataset({"name": "imagefolder", "path": str(root)}, cache_dir=tmp_path / "cache")
    assert str(bad) in str(err.value)
    (root / "b").mkdir()
    bad.unlink()
    (root / "b" / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="garbage.jpg"):
        build_dataset({"name": "imagefolder", "path": str(root)}, cache_dir=tmp_path / "cache")


def test_imagefolder_missing_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        build_dataset({"name": "imagefolder", "path": str(tmp_path / "nowhere")}, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- hf
def _parquet(path: Path, n: int, offset: int = 0) -> None:
    images = [Image.new("RGB", (12, 10), (i * 20 % 256, 0, 0)) for i in range(offset, offset + n)]
    ds = datasets.Dataset.from_dict({"img": images, "kind": [["even", "odd"][i % 2] for i in range(n)],
                                     "text": [f"picture {i}" for i in range(offset, offset + n)]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "kind": datasets.Value("string"),
                                                                "text": datasets.Value("string")}))
    ds.to_parquet(str(path))


def test_hf_local_folder_with_test_split(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    _parquet(folder / "train.parquet", 10)
    _parquet(folder / "test.parquet", 4, offset=100)
    node = {"name": "hf", "path": str(folder), "image_key": "img", "label_key": "kind", "caption_key": "text",
            "size": 8}
    dd = build_dataset(node, cache_dir=tmp_path / "cache")
    _check_dict(dd, 8)
    assert len(dd["train"]) == 10 and len(dd["validation"]) == 4
    assert dd["train"].features["label"].names == ["even", "odd"]
    assert dd["train"]["label"][:3] == [0, 1, 0] and dd["validation"]["caption"][0] == "picture 100"


def test_hf_single_file_derived_split_and_no_labels(tmp_path):
    _parquet(tmp_path / "all.parquet", 30)
    node = {"name": "hf", "path": str(tmp_path / "all.parquet"), "image_key": "img", "label_key": None,
            "val_fraction": 0.3}
    dd = build_dataset(node, cache_dir=tmp_path / "cache")
    _check_dict(dd, 32)
    assert len(dd["train"]) + len(dd["validation"]) == 30 and 0 < len(dd["validation"]) < 20
    assert set(dd["train"]["label"]) == {-1} and set(dd["train"]["caption"]) == {""}
    again = build_dataset({**node, "val_fraction": 0.3}, cache_dir=tmp_path / "cache2")
    assert again["validation"]["label"] == dd["validation"]["label"] and len(again["validation"]) == len(
        dd["validation"])


def test_hf_missing_key_lists_columns(tmp_path):
    _parquet(tmp_path / "all.parquet", 3)
    with pytest.raises(DataError) as err:
        build_dataset({"name": "hf", "path": str(tmp_path / "all.parquet")}, cache_dir=tmp_path / "cache")
    assert "'image'" in str(err.value) and all(c in str(err.value) for c in ("img", "kind", "text"))


def test_hf_label_key_is_optional_for_unlabelled_data(tmp_path):
    _parquet(tmp_path / "all.parquet", 6)  # columns img, kind, text: no "label"
    dd = build_dataset({"name": "hf", "path": str(tmp_path / "all.parquet"), "image_key": "img", "size": 8},
                       cache_dir=tmp_path / "cache")
    assert set(dd["train"]["label"]) <= {-1} and set(dd["validation"]["label"]) <= {-1}
    with pytest.raises(DataError, match="'kinds'"):  # a label column the user names must exist
        build_dataset({"name": "hf", "path": str(tmp_path / "all.parquet"), "image_key": "img", "label_key": "kinds"},
                      cache_dir=tmp_path / "cache")


def test_hf_missing_path(tmp_path):
    with pytest.raises(DataError, match="no-such-dataset"):
        build_dataset({"name": "hf", "path": str(tmp_path / "no-such-dataset")}, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- build_dataset
def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset({"name": "mnist"}, cache_dir=tmp_path)
    assert all(name in str(err.value) for name in DATASETS)
    assert set(DATASETS) == {"emoji32", "fashion_mnist", "hf", "imagefolder"}


def test_bad_keyword_is_data_error(tmp_path):
    with pytest.raises(DataError, match="colour"):
        build_dataset({"name": "emoji32", "colour": "red"}, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- ImageDataModule
@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    _write_images(root, {"red": [("RGB", (16, 16), (255, 0, 0))] * 12, "grey": [("L", (16, 16), 0)] * 12})
    return root


def test_datamodule_batches(folder, tmp_path):
    dm = ImageDataModule({"name": "imagefolder", "path": str(folder), "val_fraction": 0.25}, batch_size=5,
                         image_size=16, cache_dir=tmp_path / "cache", seed=3)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.class_names == ["grey", "red"]
    train = dm.splits["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 16, 16)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(train) // 5  # drop_last
    b = batches[0]
    assert set(b) == {"image", "label", "caption", "index"}
    assert b["image"].dtype == torch.float32 and b["image"].shape == (5, 3, 16, 16)
    assert b["label"].dtype == torch.int64 and b["label"].shape == (5,)
    assert b["index"].dtype == torch.int64 and isinstance(b["caption"], list) and len(b["caption"]) == 5
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    for img, label, caption, i in zip(b["image"], b["label"], b["caption"], b["index"]):
        assert caption == train.captions[i] and label == train.labels[i]
        expected = [1.0, -1.0, -1.0] if caption == "red" else [-1.0, -1.0, -1.0]  # grey (0) -> 3 channels
        assert img[:, 8, 8].tolist() == expected
    val = list(dm.val_dataloader())
    assert torch.cat([v["index"] for v in val]).tolist() == list(range(len(dm.splits["validation"])))


def test_datamodule_accepts_omegaconf_node(folder, tmp_path):
    from omegaconf import OmegaConf
    node = OmegaConf.create({"name": "imagefolder", "path": str(folder)})
    dm = ImageDataModule(node, batch_size=4, image_size=16, cache_dir=tmp_path / "cache")
    dm.setup()
    assert dm.node["size"] == 16 and dm.num_classes == 2


def test_datamodule_shuffle_is_seeded(folder, tmp_path):
    def order(seed):
        dm = ImageDataModule({"name": "imagefolder", "path": str(folder)}, batch_size=4, image_size=16,
                             cache_dir=tmp_path / "cache", seed=seed)
        dm.setup()
        return [torch.cat([b["index"] for b in dm.train_dataloader()]).tolist() for _ in range(2)]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)[0]) != order(0)[0]  # shuffled


def test_datamodule_resizes_to_image_size(folder, tmp_path):
    dm = ImageDataModule({"name": "imagefolder", "path": str(folder), "size": 16}, batch_size=2, image_size=8,
                         cache_dir=tmp_path / "cache")
    dm.setup()
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 8, 8)
    item = dm.splits["train"][0]
    assert item["image"].shape == (3, 8, 8) and item["index"].item() == 0
    batch = D.collate([dm.splits["train"][0], dm.splits["train"][1]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["index"].tolist() == [0, 1]


def test_datamodule_in_lightning_trainer(folder, tmp_path):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append(batch["index"].tolist())
            assert batch["image"].shape == (4, 3, 16, 16) and len(batch["caption"]) == 4
            return self.layer(batch["image"].mean((2, 3))).mean()

        def validation_step(self, batch, _):
            assert batch["label"].dtype == torch.int64

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ImageDataModule({"name": "imagefolder", "path": str(folder)}, batch_size=4, image_size=16,
                         cache_dir=tmp_path / "cache")
    probe = Probe()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, datamodule=dm)
    assert len(probe.seen) == 3 and all(len(s) == 4 for s in probe.seen)
