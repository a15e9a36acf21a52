import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never contacted in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
