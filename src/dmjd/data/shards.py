"""WebDataset tar shards: streaming pre-training data (``data.name=webdataset``) and ``dmjd shard``.

A shard is a tar file whose members ``<key>.jpg`` (or .jpeg/.png/.webp/...) and ``<key>.cls`` (the
class index as text, optional) form one sample each; the ``webdataset`` library reads them (local
paths, brace patterns such as ``train-{000000..001023}.tar``, URLs and ``pipe:`` commands) and is
imported only when shards are used (``pip install dmjd[webdataset]``).

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
* Evaluation: ``ShardImages`` reads local shards by index (tar header offsets), so evaluations take
  seeded subsets and read labels without decoding; ``split_shards`` gives a split's shards
  (``train``: ``data.path``; ``test``: ``test-*.tar`` or ``val-*.tar`` beside it).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from dmjd.data.datasets import DataError, ImageFiles, StandInImages, Transform, dataset_classes, seed_transforms
from dmjd.data.pipeline import augment_seed
from dmjd.data.resample import Interpolation, pad_batch, random_resized_crop_params, resized_crop
from dmjd.data.transforms import pretrain_transform

Piece = Tensor | list[Tensor]  # images of a worker chunk: stacked [n, C, H, W], or one tensor each
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
MANIFEST = "manifest.json"
LOG = logging.getLogger(__name__)


def _webdataset() -> Any:
    """The ``webdataset`` module, imported on first use.

    Raises:
        DataError: it is not installed.
    """
    try:
        import webdataset
    except ImportError:
        raise DataError("WebDataset shards need the webdataset package: pip install 'dmjd[webdataset]'") from None
    return webdataset


def expand_shards(pattern: str) -> list[str]:
    """The shard list of a pattern (brace expansion, ``::``-separated lists, as webdataset does).

    Raises:
        DataError: the pattern names no shard, or a local shard does not exist.
    """
    urls = _webdataset().shardlists.expand_urls(pattern)
    if not urls:
        raise DataError(f"data.path={pattern!r} names no shard; give e.g. /data/train-{{000000..000099}}.tar")
    missing = [u for u in urls if _is_local(u) and not Path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards of {pattern!r} do not exist, e.g. {missing[0]}")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


@dataclass(frozen=True)
class ShardIndex:
    """Samples per shard and class names of a shard list (from ``manifest.json`` or the tar headers)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...] = ()

    def rank_samples(self, rank: int, world_size: int) -> int:
        """Samples in the shards of process ``rank``."""
        return sum(self.counts[rank::world_size])


def _key_ext(name: str) -> tuple[str, str]:
    """WebDataset's ``(key, extension)`` of a member name: the extension starts at the base name's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_index(path: str) -> list[tuple[int, int, int]]:
    """The samples of a local tar with an image member, as ``(data offset, size, label)`` in tar order
    (label -1 without ``cls``); as when streaming, a sample whose ``cls`` is not an integer is left out
    (logged), and a truncated tar gives the samples whose image is whole."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = _key_ext(member.name)
                if ext in IMAGE_KEYS:
                    samples.setdefault(key, {})["image"] = (member.offset_data, member.size)
                elif ext == "cls" and member.isfile():
                    samples.setdefault(key, {})["cls"] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as err:
        LOG.warning("shard %s is truncated or unreadable (%s); using its %d readable samples", path, err, len(samples))
    file_size = Path(path).stat().st_size
    index = []
    for key, parts in samples.items():
        label = _label(parts.get("cls"))
        if label is None:
            LOG.warning("skipping sample %s:%s: cls %r is not a class index", path, key, parts["cls"][:20])
        elif "image" in parts and sum(parts["image"]) <= file_size:
            index.append((*parts["image"], label))
    return index


def _label(cls: bytes | None) -> int | None:
    """A ``cls`` member's class index: -1 when there is none, None when it is not an integer."""
    if cls is None:
        return -1
    try:
        return int(cls.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _manifest_url(shard: str) -> str:
    """Where the manifest of a shard's folder is."""
    return shard.rsplit("/", 1)[0] + "/" + MANIFEST if "/" in shard else MANIFEST


def index_shards(pattern: str) -> ShardIndex:
    """Count the samples of each shard: ``manifest.json`` next to the shards when it lists them all,
    else (local shards) their tar headers.

    Raises:
        DataError: no shard, or remote shards without a manifest.
    """
    urls = expand_shards(pattern)
    manifest = _read_manifest(_manifest_url(urls[0]))
    if manifest is not None:
        by_name = {s["name"]: int(s["count"]) for s in manifest.get("shards", [])}
        if all(u.rsplit("/", 1)[-1] in by_name for u in urls):
            counts = tuple(by_name[u.rsplit("/", 1)[-1]] for u in urls)
            return ShardIndex(tuple(urls), counts, tuple(manifest.get("classes", ())))
    if not all(_is_local(u) for u in urls):
        raise DataError(f"shards {pattern!r} are not local files and no {MANIFEST} next to them lists them; "
                        "write one with `dmjd shard` (it gives the sample count of each shard)")  # fmt: skip
    return ShardIndex(tuple(urls), tuple(len(_tar_index(u)) for u in urls))


def _read_manifest(url: str) -> dict[str, Any] | None:
    """A manifest's content, or None when there is none (or it cannot be read)."""
    if _is_local(url):
        path = Path(url)
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        with _webdataset().gopen(url) as stream:
            return json.loads(stream.read())
    except Exception as err:  # noqa: BLE001 - any transport failure means "no manifest"
        LOG.info("no readable manifest at %s: %s", url, err)
        return None


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
        for n, sample in enumerate(_shuffled(_tar_samples(shards, bad), self.shuffle_buffer, _seed(*key, 1))):
            parts = _parts(sample, bad)
            if parts is None:
                continue
            if self.transform is None:
                images.append(torch.frombuffer(bytearray(parts[0]), dtype=torch.uint8))
            else:
                image = _pil(parts[0], sample, bad)
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


class BadCounter:
    """Counts skipped members and shards; also webdataset's error handler (log, count, continue)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        LOG.warning("skipping unreadable shard data: %s", exn)
        self.count += 1
        return True

    def take(self) -> int:
        """The count so far, reset to 0."""
        count, self.count = self.count, 0
        return count


def _tar_samples(shards: list[str], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """Samples (dicts of member bytes by extension, plus ``__key__``) of ``shards``, in order."""
    source = ({"url": url} for url in shards)
    yield from _webdataset().tarfile_to_samples(handler=handler)(source)


def _shuffled(samples: Iterator[dict[str, Any]], size: int, seed: int) -> Iterator[dict[str, Any]]:
    """A seeded shuffle buffer of ``size`` samples (0 or 1: unchanged order)."""
    if size <= 1:
        yield from samples
        return
    rng, buffer = random.Random(seed), []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _parts(sample: dict[str, Any], bad: BadCounter) -> tuple[bytes, int] | None:
    """``(encoded image, label)`` of a sample (label -1 without ``cls``), or None when it has no image
    member or an unreadable ``cls`` (counted)."""
    ext = next((e for e in IMAGE_KEYS if e in sample), None)
    label = _label(sample.get("cls"))
    if ext is not None and label is not None:
        return sample[ext], label
    why = "no image member" if ext is None else f"cls {sample['cls'][:20]!r} is not a class index"
    bad(ValueError(f"sample {sample.get('__key__')} of {sample.get('__url__')}: {why}"))
    return None


def _pil(data: bytes, sample: dict[str, Any], bad: BadCounter) -> Image.Image | None:
    """The decoded image, or None when PIL cannot decode it (counted)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        bad(ValueError(f"sample {sample.get('__key__')} of {sample.get('__url__')}: {err}"))
        return None


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

    def _passes(self, epoch: int) -> Iterator[tuple[Tensor | list[Tensor], int]]:
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
    ) -> None:
        super().__init__(samples, index, batch_size, num_workers, device)
        self.size, self.in_chans, self.interpolation, self.quantize = size, in_chans, interpolation, quantize
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
            image = _pil(data.numpy().tobytes(), {}, BadCounter())
        if image is None:
            return None
        array = torch.from_numpy(np.asarray(image.convert("L" if self.in_chans == 1 else "RGB")).copy())
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
) -> tuple[ShardBatches, ShardIndex]:
    """The trainer's batches for ``data.name=webdataset`` (``data.path`` = the shard pattern):
    decoded and augmented by PIL in the loader workers (``pretrain_transform``), or with
    ``decode_on_device`` on ``device`` (``DeviceDecodedBatches``, crops rounded to 8-bit levels
    unless ``quantize`` is False)."""
    index = index_shards(pattern)
    chunk = min(batch_size, 256)  # a worker chunk of a whole batch goes to the step without a copy
    if decode_on_device:
        samples = ShardSamples(index.urls, None, seed, rank, world_size, chunk)
        batches: ShardBatches = DeviceDecodedBatches(
            samples, index, batch_size, num_workers, device, img_size, in_chans, crop_scale, hflip, interpolation,
            quantize,
        )
    else:
        transform = pretrain_transform(img_size, in_chans, crop_scale, hflip, interpolation)
        samples = ShardSamples(index.urls, transform, seed, rank, world_size, chunk)
        batches = ShardBatches(samples, index, batch_size, num_workers, device)
    return batches, index


def first_images(pattern: str, n: int, transform: Transform) -> Tensor:
    """The first ``n`` readable images of the first shards, in order, transformed: ``[n, C, H, W]``."""
    bad = BadCounter()
    images = []
    for sample in _tar_samples(expand_shards(pattern), bad):
        parts = _parts(sample, bad)
        image = None if parts is None else _pil(parts[0], sample, bad)
        if image is not None:
            images.append(transform(image))
        if len(images) == n:
            break
    if not images:
        raise DataError(f"no readable image in the shards {pattern!r}")
    return torch.stack(images)


def split_shards(pattern: str, split: str) -> list[str]:
    """The shards of one split of a data set kept as shards.

    ``train`` is ``data.path`` itself; any other split is the local shards ``<split>-*.tar`` in the
    folder of ``data.path``'s first shard (``dmjd shard SRC DST --split val`` writes them), and
    ``test`` takes ``val-*.tar`` when there is no ``test-*.tar`` (as evaluations on an ImageFolder
    take ``val/``).

    Raises:
        DataError: no shards of that split.
    """
    urls = expand_shards(pattern)
    if split == "train":
        return urls
    folder = Path(urls[0]).parent
    for name in (split, "val") if split == "test" else (split,):
        found = sorted(folder.glob(f"{name}-*.tar")) if _is_local(urls[0]) else []
        if found:
            return [str(p) for p in found]
    raise DataError(f"no {split} shards next to data.path={pattern!r}: evaluations read data.path as the train "
                    f"split and {folder}/test-*.tar (or val-*.tar) as the test split; write them with "
                    f"`dmjd shard SRC {folder} --split val`")  # fmt: skip


class ShardImages(StandInImages):
    """The samples of local shards by index (evaluations: seeded subsets, labels read without
    decoding images); items ``(image, label, skipped)`` as ``build_dataset``'s, a member PIL cannot
    decode replaced by the next readable sample and flagged.

    The tar headers are read once (``tarfile``), then each item is one seek + read of its image.

    Raises:
        DataError: a shard is not a local file, or the shards hold no image.
    """

    def __init__(self, urls: list[str], transform: Transform) -> None:
        remote = next((u for u in urls if not _is_local(u)), None)
        if remote is not None:
            raise DataError(f"evaluations read shards from local files by index; {remote} is not one "
                            "(copy the evaluation shards to a local folder)")  # fmt: skip
        self.urls, self.transform, self.bad = list(urls), transform, BadCounter()
        members, labels = [], []
        for url in self.urls:
            for offset, size, label in _tar_index(url):
                members.append((url, offset, size))
                labels.append(label)
        if not members:
            raise DataError(f"the shards {urls[0]}, ... hold no image")
        self.members, self.labels = members, np.asarray(labels, dtype=np.int64)
        manifest = _read_manifest(_manifest_url(self.urls[0]))
        self.classes = tuple(manifest.get("classes", ())) if manifest else ()

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"ShardImages({self.urls[0]!r}, ... {len(self.urls)} shards)"

    def _open(self, index: int) -> Image.Image | None:
        url, offset, size = self.members[index]
        with open(url, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return _pil(data, {"__key__": f"at byte {offset}", "__url__": url}, self.bad)

    def _label(self, index: int) -> int:
        return int(self.labels[index])


# ---------------------------------------------------------------- writing shards
def write_shards(
    dataset: Dataset,
    dst: str | Path,
    shard_size: int,
    max_side: int | None = None,
    prefix: str = "train",
    quality: int = 90,
) -> dict[str, Any]:
    """Write ``dataset``'s images as WebDataset shards ``dst/<prefix>-000000.tar``, ... and
    ``dst/manifest.json`` (samples per prefix, classes, and per shard its name, count and sha256).

    Splits go into one folder under their own prefixes (``train``, ``val``, ...), one manifest
    listing them all: writing a new prefix adds its shards to the folder's manifest.

    Args:
        dataset: items ``(PIL image, label[, skipped])`` (skipped ones are left out), e.g.
            ``build_dataset(name, split, keep_image)``; label -1 writes no ``cls``.
        shard_size: samples per shard (the last one may hold fewer).
        max_side: re-encode images whose longer side exceeds this, shrunk to it (None: keep sizes).
            Every image is written as JPEG; a JPEG file of an ``ImageFiles`` folder that needs no
            shrinking is copied byte for byte (no second compression, and no encoding time).
        quality: JPEG quality.

    Returns:
        The manifest.

    Raises:
        DataError: ``dst`` already holds shards of that prefix, or its manifest names other classes.
    """
    wds = _webdataset()
    out = Path(dst)
    if any(out.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out} already holds {prefix}-*.tar shards; write to an empty folder or another --split")
    old = _read_manifest(str(out / MANIFEST)) or {}
    classes = list(dataset_classes(dataset))
    if old.get("classes") and classes and old["classes"] != classes:
        raise DataError(f"{out / MANIFEST} lists other classes than {prefix}'s; write this split to another folder")
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{prefix}-%06d.tar")
    written = 0
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for i in range(len(dataset)):  # type: ignore[arg-type]
            image, label, *flags = dataset[i]
            if flags and flags[0]:  # an unreadable file (ImageFiles stands another image in for it)
                continue
            written += 1
            sample = {"__key__": f"{i:09d}", "jpg": _encoded(dataset, i, image, max_side, quality)}
            if int(label) >= 0:
                sample["cls"] = str(int(label)).encode()
            sink.write(sample)
    others = [entry for entry in old.get("shards", []) if not entry["name"].startswith(f"{prefix}-")]
    shards = [{"name": p.name, "count": len(_tar_index(str(p))), "sha256": _sha256(p)}
              for p in sorted(out.glob(f"{prefix}-*.tar"))]  # fmt: skip
    splits = {**old.get("splits", {}), prefix: written}
    manifest = {
        "samples": sum(splits.values()),
        "splits": splits,
        "classes": classes or old.get("classes", []),
        "shards": others + shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def keep_image(image: Image.Image) -> Image.Image:
    """The identity transform: a data set built with it yields PIL images (for ``write_shards``)."""
    return image


def _encoded(dataset: Dataset, index: int, image: Image.Image, max_side: int | None, quality: int) -> bytes:
    """The original file's bytes when it is an RGB or gray JPEG that needs no shrinking, else a new JPEG."""
    path = dataset.samples[index][0] if isinstance(dataset, ImageFiles) else None
    fits = max_side is None or max(image.size) <= max_side
    if path is not None and path.suffix.lower() in (".jpg", ".jpeg") and fits and image.mode in ("RGB", "L"):
        return path.read_bytes()
    return _jpeg(image, max_side, quality)


def _jpeg(image: Image.Image, max_side: int | None, quality: int) -> bytes:
    """JPEG bytes of ``image`` (RGB or L), shrunk so its longer side is at most ``max_side``."""
    image = image if image.mode in ("RGB", "L") else image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
