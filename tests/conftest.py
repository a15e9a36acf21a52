import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never contacted in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def tmp_experiments(tmp_path, monkeypatch):
    """An empty experiments/ folder holding only base.yaml, in place of the real one."""
    from lab import config

    d = tmp_path / "experiments"
    d.mkdir()
    shutil.copy(config.ROOT / "experiments" / "base.yaml", d / "base.yaml")
    monkeypatch.setattr(config, "EXPERIMENTS", d)
    return d
