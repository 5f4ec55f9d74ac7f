"""Deterministic, resumable, process-count independent batching for pre-training."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from dmjd.data.datasets import DataError


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The order of epoch ``epoch``: one CPU permutation drawn from ``(seed, epoch)``."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's slice of each global batch of one epoch, as ``(epoch, index)`` pairs.

    The epoch travels with each index so that data sets seeded per (epoch, index)
    (``SeededSamples``) stay correct in persistent loader workers, which never see ``set_epoch``.

    Each epoch draws one permutation of the data set from ``(seed, epoch)``; global batch ``s`` is
    ``perm[s*G:(s+1)*G]`` with ``G = batch_size * world_size``, and process ``rank`` takes the
    contiguous slice ``[rank*batch_size, (rank+1)*batch_size)``. So N processes see exactly the
    images one process would with the same global batch, and ``start_step`` resumes mid-epoch.
    The last incomplete global batch is dropped.

    Raises:
        DataError: the data set is smaller than one global batch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise DataError(
                f"the data set has {num_samples} images, fewer than one global batch of "
                f"{self.global_batch} (optim.batch_size={batch_size} x {world_size} processes); "
                "lower optim.batch_size or use more data"
            )
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and the first global batch to yield."""
        self.epoch, self.start_step = epoch, start_step

    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch)
        lo = self.rank * self.batch_size
        for step in range(self.start_step, self.steps_per_epoch()):
            start = step * self.global_batch + lo
            yield [(self.epoch, i) for i in perm[start : start + self.batch_size].tolist()]
