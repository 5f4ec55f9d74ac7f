"""The two pre-training data paths behind one interface: ``batches.epoch(epoch, start_step)``.

* ``DeviceBatches`` (``data.pipeline=device``): the whole data set sits on the training device as
  uint8; each step gathers its images by index and runs RandomResizedCrop + resize + flip as
  batched tensor ops there (``dmjd.data.resample``). No worker processes, no host work per step.
* ``LoaderBatches`` (``data.pipeline=loader``): the DataLoader path (PIL transforms in worker
  processes) for data that does not fit in memory.

Both follow ``EpochBatchSampler``'s order: epoch ``e`` is one permutation drawn from
``(seed, e)``, global batch ``s`` is its ``s``-th slice and each process takes a contiguous part of
it. The device path draws the augmentation of the whole global batch of step ``s`` from a
generator seeded by ``(seed, e, s)``, so a run is reproducible, resumes exactly mid-epoch and gives
the same images on any number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import Literal, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dmjd.data.resample import DEFAULT_RATIO, Interpolation, random_resized_crop_params, resized_crop
from dmjd.data.sampler import EpochBatchSampler, augment_seed, epoch_permutation

Pipeline = Literal["auto", "device", "loader"]


class Batches(Protocol):
    """What the trainer iterates: ``(images float[B, C, H, W] in [0, 1] on the device, bad images)``."""

    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, int]]: ...


class DeviceBatches:
    """Augmented batches made on the device from a device-resident uint8 data set.

    Args:
        images: ``uint8[N, C, H, W]`` on the training device (``C`` 1 or 3).
        size: output side.
        batch_size: images per process per step.
        seed: the run's seed.
        scale: RandomResizedCrop area range; ratio: its aspect-ratio range.
        hflip: mirror half the images.
        in_chans: output channels (1-channel data is repeated to 3 when asked).
        interpolation: ``bicubic`` (the recipe's) or ``bilinear``.
        rank, world_size: this process's slice of each global batch.
        quantize: round the crops to 8-bit levels, as the loader path's (``resized_crop``).
    """

    def __init__(
        self,
        images: Tensor,
        size: int,
        batch_size: int,
        seed: int = 0,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = DEFAULT_RATIO,
        hflip: bool = True,
        in_chans: int | None = None,
        interpolation: Interpolation = "bicubic",
        rank: int = 0,
        world_size: int = 1,
        quantize: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.size, self.seed = images, size, seed
        self.scale, self.ratio, self.hflip, self.interpolation = scale, ratio, hflip, interpolation
        self.quantize = quantize
        self.in_chans = in_chans or images.shape[1]
        self.rank, self.batch_size = rank, batch_size
        self.order = EpochBatchSampler(len(images), batch_size, seed, rank, world_size)  # validates sizes
        self.global_batch = batch_size * world_size
        self.generator = torch.Generator(device=images.device)

    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch()

    def augment(self, images: Tensor, epoch: int, step: int) -> Tensor:
        """This process's slice of global batch ``step``'s augmentation, applied to ``images``."""
        self.generator.manual_seed(augment_seed(self.seed, epoch, step))
        n, (h, w) = self.global_batch, self.images.shape[-2:]
        boxes = random_resized_crop_params(n, h, w, self.scale, self.ratio, generator=self.generator)
        flip = torch.rand(n, generator=self.generator, device=images.device) < 0.5
        lo = self.rank * self.batch_size
        boxes, flip = boxes[lo : lo + self.batch_size], flip[lo : lo + self.batch_size]
        out = resized_crop(images, boxes, self.size, self.interpolation, flip if self.hflip else None, self.quantize)
        return out.expand(-1, self.in_chans, -1, -1) if out.shape[1] != self.in_chans else out

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, int]]:
        """The batches of ``epoch`` from ``start_step`` on; the bad-image count is always 0."""
        perm = epoch_permutation(len(self.images), self.seed, epoch).to(self.images.device)
        lo = self.rank * self.batch_size
        for step in range(start_step, self.steps_per_epoch()):
            start = step * self.global_batch + lo
            ids = perm[start : start + self.batch_size]
            yield self.augment(self.images.index_select(0, ids), epoch, step), 0


class LoaderBatches:
    """The DataLoader path: ``loader`` iterates ``sampler``'s batches of ``(image, label, skipped)``."""

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler, device: torch.device) -> None:
        self.loader, self.sampler, self.device = loader, sampler, device

    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, int]]:
        self.sampler.set_epoch(epoch, start_step)
        for images, _labels, skipped in self.loader:
            yield images.to(self.device, non_blocking=True), int(skipped.sum())


def endless(batches: Batches, epoch: int = 0) -> Generator[Tensor, None, None]:
    """The image batches of ``batches``, epoch after epoch from ``epoch``, without end (benchmarks)."""
    while True:
        for images, _bad in batches.epoch(epoch):
            yield images
        epoch += 1


def device_budget_bytes(device: torch.device, budget_gb: float | None) -> int:
    """The memory the decoded data set may take on ``device``: ``budget_gb`` GiB, else a quarter of
    the device's memory (CUDA) or of the machine's RAM (CPU)."""
    if budget_gb is not None:
        return int(budget_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def choose_pipeline(requested: Pipeline, nbytes: int, budget: int) -> tuple[str, str]:
    """``(pipeline, reason)``: ``auto`` takes ``device`` when the decoded set fits the budget."""
    fits = f"decoded set {nbytes / 2**20:.1f} MiB, budget {budget / 2**20:.0f} MiB"
    if requested != "auto":
        return requested, f"data.pipeline={requested} ({fits})"
    if nbytes <= budget:
        return "device", f"auto: {fits}, fits"
    return "loader", f"auto: {fits}, does not fit; DataLoader workers"
