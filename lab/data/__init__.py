"""Data: every source (built-in, Hugging Face dataset, image folder) -> an Arrow dataset cached on disk -> a
LightningDataModule. The builders are in ``sources.py``, registered in ``DATASETS`` of ``datasets.py`` (the cache
and the DataModule); emoji captions and classes in ``emoji.py``."""
from lab.data.sampler import EpochSampler  # noqa: F401
from lab.data.datasets import (DATASETS, ImageDataModule, build_dataset,  # noqa: F401
                               default_cache_dir)
from lab.data.sources import DataError  # noqa: F401
