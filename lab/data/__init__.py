"""Data: every source (built-in, Hugging Face dataset, image folder) -> an Arrow dataset cached on disk -> a
LightningDataModule. The builders are in ``datasets.py`` (``DATASETS``); emoji captions and classes in ``emoji.py``."""
from lab.data.datasets import (DATASETS, DataError, EpochSampler, ImageDataModule, build_dataset,  # noqa: F401
                               default_cache_dir)
