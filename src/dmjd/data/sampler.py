"""The order and seeds of pre-training data: deterministic, resumable and independent of the number
of processes and loader workers (``epoch_permutation``, ``augment_seed``, ``EpochBatchSampler``,
``SeededSamples``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from dmjd.data.base import DataError


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


def seed_transforms(seed: int) -> None:
    """Seed the CPU generator that torchvision's random transforms draw from, for one item.

    Only that generator: ``torch.manual_seed`` also queues a seed for every accelerator backend,
    formatting a stack trace each time, which cost ~1.8 ms per image (a quarter of decoding and
    augmenting a 500 x 375 JPEG) when called per sample.
    """
    torch.default_generator.manual_seed(seed)


class SeededSamples(Dataset):
    """Makes each item's random augmentation a pure function of (seed, epoch, index).

    Data order, augmentation and therefore a whole run are then reproducible whatever the number of
    loader workers or processes, and a run resumed mid-epoch sees exactly the same samples. Items
    are addressed by ``(epoch, index)`` pairs (as ``EpochBatchSampler`` yields them) or by a plain
    index for the epoch last given to ``set_epoch``.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        digest = hashlib.blake2b(f"{self.seed}/{epoch}/{index}".encode(), digest_size=8).digest()
        seed_transforms(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
        return self.base[index]


def augment_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one global batch's augmentation (independent of processes and resumption)."""
    return (seed * 6_364_136_223_846_793_005 + epoch * 1_442_695_040_888_963_407 + step * 40_503 + 7) % (2**63 - 1)
