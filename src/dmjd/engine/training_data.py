"""The training data of a run: which ``Batches`` a config gets (``data.*``), and a line saying why.

Three paths, one interface (``dmjd.data.pipeline.Batches``):

* ``device``: the decoded data set held on the training device as uint8, augmented there
  (``DeviceBatches``); ``data.pipeline=auto`` takes it when the set fits ``data.device_memory_gb``.
* ``loader``: PIL decoding and augmentation in DataLoader workers (``LoaderBatches``).
* ``data.name=webdataset``: tar shards streamed through DataLoader workers, decoded there or, with
  ``data.pipeline=device``, on the training device (``dmjd.data.streaming``).

The trainer, the benchmarks (``benchmarks/loader.py``) and users' own loops build it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from dmjd.config import Config
from dmjd.data.arrays import decoded_nbytes, open_source, to_image_array
from dmjd.data.base import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, DataError, dataset_classes, describe_data
from dmjd.data.datasets import build_dataset
from dmjd.data.pipeline import Batches, DeviceBatches, LoaderBatches, choose_pipeline, device_budget_bytes
from dmjd.data.sampler import EpochBatchSampler, SeededSamples
from dmjd.data.shards import first_images
from dmjd.data.streaming import shard_batches
from dmjd.data.transforms import pretrain_transform


@dataclass(frozen=True)
class TrainingData:
    """A run's training batches.

    Attributes:
        batches: what the training loop iterates.
        summary: one start-up line: the data set (name, source, images, classes), the path taken and why.
        unreadable: files left out before training (decoding the device path's array); the other
            paths count theirs per batch.
        warnings: start-up warnings about the data (e.g. colour images read as grey levels).
    """

    batches: Batches
    summary: str
    unreadable: int = 0
    warnings: tuple[str, ...] = ()


def training_data(cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> TrainingData:
    """The batches of process ``rank`` of ``world_size`` for ``cfg`` on ``device``.

    Raises:
        DataError: the data set is missing, empty or unreadable.
    """
    data = _training_data(cfg, device, rank, world_size)
    warning = grey_warning(cfg)
    return replace(data, warnings=(warning,)) if warning else data


def grey_warning(cfg: Config) -> str | None:
    """A warning when colour images would be trained on as grey levels (``model.in_chans=1``, as in the
    ``demo`` preset, on a colour data set, or an ImageFolder or shards whose first image is in colour)."""
    d, m = cfg.data, cfg.model
    if m.in_chans != 1 or d.name not in ("imagefolder", "webdataset", "cifar10", "cifar100", "stl10"):
        return None
    if d.name in ("imagefolder", "webdataset") and _first_image_is_grey(d.name, d.path or ".") is not False:
        return None  # grey, or nothing readable to tell
    return (f"model.in_chans=1 trains on the grey levels of {d.name}'s colour images; set model.in_chans=3 "
            "to keep their colour")  # fmt: skip


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes without colour


def _first_image_is_grey(name: str, path: str) -> bool | None:
    """Whether the first image of an ImageFolder or of shards is grey; None when none reads."""
    if name == "webdataset":
        try:
            return bool(first_images(path, 1, lambda image: torch.tensor(image.mode in GREY_MODES))[0])
        except DataError:
            return None
    first = next((p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), None)
    if first is None:
        return None
    try:
        with Image.open(first) as image:
            return image.mode in GREY_MODES
    except UNREADABLE_ERRORS:
        return None


def _training_data(cfg: Config, device: torch.device, rank: int, world_size: int) -> TrainingData:
    d, m = cfg.data, cfg.model
    if d.name == "webdataset":
        return _shard_data(cfg, device, rank, world_size)
    split = "pretrain" if d.name == "stl10" else "train" if d.split_holdout else "all"
    why = "data.pipeline=loader"
    if d.pipeline != "loader":
        size = d.cache_size or m.img_size * 8 // 7
        source = open_source(d.name, split, d.path, d.download)
        nbytes = decoded_nbytes(source, size, m.in_chans, d.limit)
        pipeline, why = choose_pipeline(d.pipeline, nbytes, device_budget_bytes(device, d.device_memory_gb))
        if pipeline == "device":
            arr = to_image_array(source, size, m.in_chans, d.limit, d.background)
            batches = DeviceBatches(
                torch.from_numpy(arr.images).to(device), m.img_size, cfg.optim.batch_size, cfg.train.seed,
                d.crop_scale, hflip=d.hflip, in_chans=m.in_chans, interpolation=d.interpolation, rank=rank,
                world_size=world_size, quantize=d.quantize_crops,
            )  # fmt: skip
            shape = "x".join(str(v) for v in arr.images.shape)
            labelled = np.unique(arr.labels[arr.labels >= 0]).size
            left_out = f", {arr.unreadable} unreadable file{'s' * (arr.unreadable > 1)} left out" if arr.unreadable else ""
            data = describe_data(d.name, d.path, split, len(arr.images), labelled) + left_out + held_out(source)
            return TrainingData(batches, f"{data}; device pipeline, {why}: uint8 [{shape}] on {device}, augmented there",
                                arr.unreadable)  # fmt: skip
    transform = pretrain_transform(m.img_size, m.in_chans, d.crop_scale, d.hflip, d.interpolation, d.background)
    base = build_dataset(d.name, split, transform, d.path, d.download)
    if d.limit is not None and d.limit < len(base):  # type: ignore[arg-type]
        base = Subset(base, range(d.limit))
    classes = dataset_classes(base)
    sampler = EpochBatchSampler(len(base), cfg.optim.batch_size, cfg.train.seed, rank, world_size)  # type: ignore[arg-type]
    loader = DataLoader(
        SeededSamples(base, cfg.train.seed), batch_sampler=sampler, num_workers=d.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=d.num_workers > 0,
        prefetch_factor=4 if d.num_workers > 0 else None,
    )  # fmt: skip
    data = describe_data(d.name, d.path, split, len(base), len(classes), classes) + held_out(base)  # type: ignore[arg-type]
    return TrainingData(LoaderBatches(loader, sampler, device),
                        f"{data}; loader pipeline, {why}: {d.num_workers} DataLoader workers")  # fmt: skip


def held_out(source: Dataset) -> str:
    """The start-up line's note on an image folder's test files kept out of pre-training (``data.split_holdout``)."""
    files = source.dataset if isinstance(source, Subset) else source
    n = getattr(files, "held_out", 0)
    return (f"; the {n:,} files of its test split are held out for the probes (data.split_holdout=false trains "
            "on all)") if n else ""  # fmt: skip


def _shard_data(cfg: Config, device: torch.device, rank: int, world_size: int) -> TrainingData:
    """``data.name=webdataset``: ``data.pipeline=device`` decodes and augments on the device, ``auto``
    and ``loader`` in the workers."""
    d, m = cfg.data, cfg.model
    on_device = d.pipeline == "device"
    batches, index = shard_batches(
        d.path or "", cfg.optim.batch_size, cfg.train.seed, rank, world_size, d.num_workers, device, m.img_size,
        m.in_chans, d.crop_scale, d.hflip, d.interpolation, on_device, d.quantize_crops, d.background,
    )  # fmt: skip
    data = describe_data(d.name, d.path, "train", sum(index.counts), len(index.classes), index.classes)
    where = "decoded and augmented on the device" if on_device else "decoded and augmented by PIL in the workers"
    auto = " (data.pipeline=auto: the streaming loader; device decoding with data.pipeline=device)"
    return TrainingData(batches, f"{data}; streaming shard loader{auto if d.pipeline == 'auto' else ''}: "
                        f"{len(index.urls)} shards, {d.num_workers} DataLoader workers, {where}")  # fmt: skip
