"""Streaming pre-training batches from WebDataset shards (``data.name=webdataset``).

How an epoch is read (``ShardSamples`` / ``ShardBatches``):

* Split: shard ``i`` goes to process ``i mod world_size``; that process's list is dealt out to its
  loader workers the same way, so every (process, worker) reads its own shards and no sample is read
  twice. The split is fixed for a run (it depends only on the shard list, the number of processes
  and the number of workers).
* Order: each worker shuffles its shard list and then its samples (a buffer of
  ``shuffle_buffer``), both from generators seeded by ``(seed, epoch, rank, worker)``; augmentation
  is seeded per sample the same way. An epoch's stream is therefore a pure function of the seed,
  the epoch, the shard list and the process/worker counts.
* Length: every process runs ``steps_per_epoch`` = the smallest ``samples // batch_size`` over the
  processes (the counts come from the shards' ``manifest.json`` or, for local shards without one, from
  reading the tar headers), so processes stay in step; a process's leftover samples are not seen that
  epoch. When corrupt members leave a process short, it reads its shards again (a differently
  seeded pass) to fill its last batches.
* Decoding: PIL and ``pretrain_transform`` in the loader workers (``ShardBatches``), or, with
  ``data.pipeline=device``, batched on the training device (``DeviceDecodedBatches``).
* Bad data: a member that cannot be decoded, a ``cls`` that is not an integer, and a truncated or
  unreadable shard (the rest of that shard is lost) are each skipped with one logged warning and
  counted in the trainer's ``bad_images``; none is fatal.
* Resume: at an epoch boundary exactly. Mid-epoch (``start_step`` > 0) the epoch's stream is made
  again and its first ``start_step`` batches are read and dropped, which gives exactly the batches the
  stopped run would have trained on when the shard list, the process count and the worker count are
  unchanged (the skipped part is read again, so it costs loading time); with another process or
  worker count the split changes and the resumed epoch is only approximately the remaining part.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dmjd.data.base import DataError, Transform
from dmjd.data.decode import to_mode
from dmjd.data.resample import Interpolation, pad_batch, random_resized_crop_params, resized_crop
from dmjd.data.sampler import augment_seed, seed_transforms
from dmjd.data.shards import BadCounter, ShardIndex, decode_image, index_shards, sample_parts, tar_samples
from dmjd.data.transforms import pretrain_transform

Piece = Tensor | list[Tensor]  # images of a worker chunk: stacked [n, C, H, W], or one tensor each


def _seed(*parts: int) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class ShardSamples(IterableDataset):
    """One process's part of a shard list, as chunks ``(images [n, C, H, W], labels [n], bad)``.

    Each loader worker reads its own shards (see the module docstring) and yields chunks of up to
    ``chunk`` transformed images (with ``transform=None``: a list of their encoded bytes as uint8
    tensors, for ``DeviceDecodedBatches``); ``bad`` counts the members and shards skipped since its previous
    chunk (a chunk may hold no image, to report the last ones). Set ``epoch`` and ``pass_`` before
    iterating (a fresh iterator of non-persistent workers picks them up).

    Args:
        urls: the whole shard list (every process gets the same).
        transform: PIL image -> tensor (``pretrain_transform``), or None to yield encoded bytes.
        seed: the run's seed; rank, world_size: this process and the number of processes.
        chunk: images per chunk; shuffle_buffer: samples held for shuffling (0: shard order).
    """

    def __init__(
        self,
        urls: list[str] | tuple[str, ...],
        transform: Transform | None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk: int = 32,
        shuffle_buffer: int = 1000,
    ) -> None:
        if len(urls) < world_size:
            raise DataError(f"{len(urls)} shards cannot feed {world_size} processes; write at least one shard "
                            "per process (`dmjd shard --shard-size` smaller)")  # fmt: skip
        self.urls, self.transform, self.seed = list(urls), transform, seed
        self.rank, self.world_size, self.chunk, self.shuffle_buffer = rank, world_size, chunk, shuffle_buffer
        self.epoch, self.pass_ = 0, 0

    def worker_shards(self, worker: int, num_workers: int) -> list[str]:
        """The shards worker ``worker`` of ``num_workers`` reads in this process (fixed for a run)."""
        return self.urls[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[tuple[Tensor | list[Tensor], Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        key = (self.seed, self.epoch, self.pass_, self.rank, worker)
        shards = self.worker_shards(worker, workers)
        random.Random(_seed(*key, 0)).shuffle(shards)
        bad = BadCounter()
        images: list[Tensor] = []
        labels: list[int] = []
        for n, sample in enumerate(_shuffled(tar_samples(shards, bad), self.shuffle_buffer, _seed(*key, 1))):
            parts = sample_parts(sample, bad)
            if parts is None:
                continue
            if self.transform is None:
                images.append(torch.frombuffer(bytearray(parts[0]), dtype=torch.uint8))
            else:
                image = decode_image(parts[0], sample, bad)
                if image is None:
                    continue
                seed_transforms(_seed(*key, 2, n))
                images.append(self.transform(image))
            labels.append(parts[1])
            if len(images) == self.chunk:
                yield self._chunk(images), torch.tensor(labels), bad.take()
                images, labels = [], []
        if images or bad.count:
            yield self._chunk(images), torch.tensor(labels, dtype=torch.long), bad.take()

    def _chunk(self, images: list[Tensor]) -> Tensor | list[Tensor]:
        """Transformed images stacked (an empty tensor for none), encoded ones as they are."""
        if self.transform is None:
            return images
        return torch.stack(images) if images else torch.empty(0)


def _shuffled(samples: Iterator[dict[str, Any]], size: int, seed: int) -> Iterator[dict[str, Any]]:
    """A seeded shuffle buffer of ``size`` samples (0 or 1: unchanged order)."""
    if size <= 1:
        yield from samples
        return
    rng, buffer = random.Random(seed), list[dict[str, Any]]()
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class ShardBatches:
    """The streaming ``Batches`` of ``data.name=webdataset``: exact batches of ``batch_size`` images
    re-assembled from the workers' chunks, ``steps_per_epoch`` per epoch on every process."""

    def __init__(
        self, samples: ShardSamples, index: ShardIndex, batch_size: int, num_workers: int, device: torch.device
    ) -> None:
        self.samples, self.batch_size, self.device = samples, batch_size, device
        self.steps = min(index.rank_samples(r, samples.world_size) for r in range(samples.world_size)) // batch_size
        if self.steps < 1:
            raise DataError(f"a process's shards hold fewer than optim.batch_size={batch_size} images; "
                            "lower optim.batch_size or write more images per shard")  # fmt: skip
        self.loader = DataLoader(
            samples, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
            prefetch_factor=4 if num_workers > 0 else None,
        )  # fmt: skip

    def steps_per_epoch(self) -> int:
        return self.steps

    def _images(self, chunk: Tensor | list[Tensor]) -> tuple[Piece, int]:
        """A worker chunk as a piece of images, and the images it had to drop (none here)."""
        return chunk, 0

    def _batch(self, pieces: list[Piece], epoch: int, step: int) -> Tensor:
        """The batch of step ``step`` made of pieces holding ``batch_size`` images, on the device (a
        worker's chunk that is a whole batch is used as it is, without a copy)."""
        batch = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # type: ignore[arg-type]
        return batch.to(self.device, non_blocking=True)  # type: ignore[union-attr]

    def _passes(self, epoch: int) -> Generator[tuple[Tensor | list[Tensor], int], None, None]:
        """The process's chunks of ``epoch``: one pass over its shards, then more passes if short."""
        self.samples.epoch = epoch
        for pass_ in itertools.count():
            self.samples.pass_ = pass_
            seen = 0
            for images, _labels, bad in self.loader:
                seen += len(images)
                yield images, bad
            if seen == 0:
                raise DataError(f"process {self.samples.rank}'s shards hold no readable image")

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, int]]:
        """Batches ``start_step..steps_per_epoch`` of ``epoch`` (the skipped ones are read and dropped)."""
        pending: list[Piece] = []
        have, bad, step = 0, 0, 0
        chunks = self._passes(epoch)
        while step < self.steps:
            chunk, chunk_bad = next(chunks)
            piece, dropped = self._images(chunk)
            if len(piece):
                pending.append(piece)
                have += len(piece)
            bad += chunk_bad + dropped
            while have >= self.batch_size and step < self.steps:
                taken, pending = _take(pending, self.batch_size)
                if step >= start_step:  # the skipped batches' bad data was counted by the stopped run
                    yield self._batch(taken, epoch, step), bad
                have, bad, step = have - self.batch_size, 0, step + 1
        chunks.close()


def _take(pieces: list[Piece], n: int) -> tuple[list[Piece], list[Piece]]:
    """The first ``n`` images of ``pieces`` (as pieces, the last one split if need be), and the rest."""
    taken: list[Piece] = []
    while n > 0:
        piece = pieces.pop(0)
        if len(piece) > n:
            piece, rest = piece[:n], piece[n:]
            pieces.insert(0, rest)
        taken.append(piece)
        n -= len(piece)
    return taken, pieces


class DeviceDecodedBatches(ShardBatches):
    """Shards with ``data.pipeline=device``: loader workers only read the encoded bytes; JPEGs are
    decoded in batches on the training device (``torchvision.io.decode_jpeg``), any other format or
    a JPEG the decoder refuses by PIL on the CPU, and RandomResizedCrop + flip run there for the whole
    batch at once (``dmjd.data.resample``, images zero-padded to the batch's largest), seeded by
    ``(seed, epoch, step, rank)``. Images are decoded even in the batches a mid-epoch resume skips,
    so it stays exact. ``quantize`` rounds the crops to 8-bit levels, as the workers' crops are.
    ``background``: what transparent pixels of the images PIL decodes become (``to_mode``).
    """

    def __init__(
        self,
        samples: ShardSamples,
        index: ShardIndex,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        size: int,
        in_chans: int,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        interpolation: Interpolation = "bicubic",
        quantize: bool = True,
        background: str = "white",
    ) -> None:
        super().__init__(samples, index, batch_size, num_workers, device)
        self.size, self.in_chans, self.interpolation, self.quantize = size, in_chans, interpolation, quantize
        self.background = background
        self.scale, self.hflip = scale, hflip
        self.generator = torch.Generator(device=device)
        self.rank_seed = _seed(samples.seed, samples.rank)  # each process augments its own images

    def _images(self, chunk: Tensor | list[Tensor]) -> tuple[Piece, int]:
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.GRAY if self.in_chans == 1 else ImageReadMode.RGB
        try:
            return list(decode_jpeg(list(chunk), mode=mode, device=self.device)), 0
        except RuntimeError:  # a non-JPEG or a refused file in the chunk: image by image
            decoded = [self._decode_one(data, mode) for data in chunk]
            return [image for image in decoded if image is not None], sum(image is None for image in decoded)

    def _decode_one(self, data: Tensor, mode: Any) -> Tensor | None:
        """One image: the device's JPEG decoder, else PIL (None when neither can; logged)."""
        from torchvision.io import decode_jpeg

        try:
            return decode_jpeg(data, mode=mode, device=self.device)
        except RuntimeError:
            image = decode_image(data.numpy().tobytes(), {}, BadCounter())
        if image is None:
            return None
        array = torch.from_numpy(np.asarray(to_mode(image, self.in_chans, self.background)).copy())
        return (array[None] if array.dim() == 2 else array.permute(2, 0, 1)).to(self.device)

    def _batch(self, pieces: list[Piece], epoch: int, step: int) -> Tensor:
        """Pad the decoded images to the batch's largest one, then crop (each inside its own image),
        resize and flip them all at once."""
        self.generator.manual_seed(augment_seed(self.rank_seed, epoch, step))
        images = [image for piece in pieces for image in piece]
        padded, sizes = pad_batch(images)
        boxes = random_resized_crop_params(len(images), sizes[:, 0], sizes[:, 1], self.scale, generator=self.generator)
        flips = torch.rand(len(images), generator=self.generator, device=self.device) < 0.5 if self.hflip else None
        return resized_crop(padded, boxes, self.size, self.interpolation, flips, self.quantize)


def shard_batches(
    pattern: str,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    device: torch.device,
    img_size: int,
    in_chans: int,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
    interpolation: Interpolation = "bicubic",
    decode_on_device: bool = False,
    quantize: bool = True,
    background: str = "white",
) -> tuple[ShardBatches, ShardIndex]:
    """The trainer's batches for ``data.name=webdataset`` (``data.path`` = the shard pattern):
    decoded and augmented by PIL in the loader workers (``pretrain_transform``), or with
    ``decode_on_device`` on ``device`` (``DeviceDecodedBatches``, crops rounded to 8-bit levels
    unless ``quantize`` is False); images PIL decodes have their transparent pixels composited on
    ``background`` (``to_mode``)."""
    index = index_shards(pattern)
    chunk = min(batch_size, 256)  # a worker chunk of a whole batch goes to the step without a copy
    if decode_on_device:
        samples = ShardSamples(index.urls, None, seed, rank, world_size, chunk)
        batches: ShardBatches = DeviceDecodedBatches(
            samples,
            index,
            batch_size,
            num_workers,
            device,
            img_size,
            in_chans,
            crop_scale,
            hflip,
            interpolation,
            quantize,
            background,
        )
    else:
        transform = pretrain_transform(img_size, in_chans, crop_scale, hflip, interpolation, background)
        samples = ShardSamples(index.urls, transform, seed, rank, world_size, chunk)
        batches = ShardBatches(samples, index, batch_size, num_workers, device)
    return batches, index
