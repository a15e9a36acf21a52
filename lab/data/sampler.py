"""The order of training batches: ``EpochSampler`` (a seeded permutation per epoch that resumes mid-epoch exactly)
and ``collate`` (the batch layout of lab/data/datasets.py's ``TensorImageDataset``)."""
from __future__ import annotations

from typing import Callable

import torch


def collate(batch):
    """Batches from ``__getitems__`` pass through; a list of items (from ``__getitem__``) is stacked."""
    if isinstance(batch, dict):
        return batch
    return {k: [b[k] for b in batch] if k == "caption" else torch.stack([b[k] for b in batch]) for k in batch[0]}


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch, seeded by (seed, epoch) alone, so the data order never depends on what ran
    before. A run resumed mid-epoch starts at the restored epoch and skips exactly the batches it had already
    trained on (``position()`` -> (epoch, batches done), read from the restored trainer): training after a
    restart sees the same batches, in the same order, as an uninterrupted run."""

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], tuple[int, int]] | None = None):
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self._next_epoch: int | None = None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        batches = self.n // self.batch_size
        if self._next_epoch is None:  # the first epoch of this process: maybe a restart
            epoch, done = self.position() if self.position is not None else (0, 0)
            if done >= batches:  # the checkpoint was taken on the epoch's last batch
                epoch, done = epoch + 1, 0
        else:
            epoch, done = self._next_epoch, 0
        self._next_epoch = epoch + 1
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        world = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
        if world > 1:
            # multi-process: Lightning's DistributedSamplerWrapper deals position i of this list to rank i % world
            # and needs all n positions; rotating by the items every rank has trained on resumes each rank where
            # it stopped (the loop ends the epoch after its remaining batches, before the rotated-in tail)
            start = done * self.batch_size * world
            return iter(torch.cat([perm[start:], perm[:start]]).tolist())
        return iter(perm[done * self.batch_size:].tolist())
