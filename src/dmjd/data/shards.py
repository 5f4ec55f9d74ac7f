"""WebDataset tar shards as a data source: the shard list and its index, samples and their images,
and ``ShardImages`` (local shards by index). Streaming them for pre-training is ``dmjd.data.streaming``;
writing them (``dmjd shard``) is ``dmjd.data.shard_writer``.

A shard is a tar file whose members ``<key>.jpg`` (or .jpeg/.png/.webp/...) and ``<key>.cls`` (the
class index as text, optional) form one sample each; the ``webdataset`` library reads them (local
paths, brace patterns such as ``train-{000000..001023}.tar``, URLs and ``pipe:`` commands) and is
imported only when shards are used (``pip install dmjd[webdataset]``).

Evaluations read local shards by index (``ShardImages``: tar header offsets), so they take seeded
subsets and read labels without decoding; ``split_shards`` gives a split's shards (``train``:
``data.path``; ``test``: ``test-*.tar`` or ``val-*.tar`` beside it).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dmjd.data.base import UNREADABLE_ERRORS, DataError, StandInImages, Transform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
MANIFEST = "manifest.json"
LOG = logging.getLogger(__name__)


def import_webdataset() -> Any:
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
    urls = import_webdataset().shardlists.expand_urls(pattern)
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


def tar_index(path: str) -> list[tuple[int, int, int]]:
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
    manifest = read_manifest(_manifest_url(urls[0]))
    if manifest is not None:
        by_name = {s["name"]: int(s["count"]) for s in manifest.get("shards", [])}
        if all(u.rsplit("/", 1)[-1] in by_name for u in urls):
            counts = tuple(by_name[u.rsplit("/", 1)[-1]] for u in urls)
            return ShardIndex(tuple(urls), counts, tuple(manifest.get("classes", ())))
    if not all(_is_local(u) for u in urls):
        raise DataError(f"shards {pattern!r} are not local files and no {MANIFEST} next to them lists them; "
                        "write one with `dmjd shard` (it gives the sample count of each shard)")  # fmt: skip
    return ShardIndex(tuple(urls), tuple(len(tar_index(u)) for u in urls))


def read_manifest(url: str) -> dict[str, Any] | None:
    """A manifest's content, or None when there is none (or it cannot be read)."""
    if _is_local(url):
        path = Path(url)
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        with import_webdataset().gopen(url) as stream:
            return json.loads(stream.read())
    except Exception as err:
        LOG.info("no readable manifest at %s: %s", url, err)
        return None


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


def tar_samples(shards: list[str], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """Samples (dicts of member bytes by extension, plus ``__key__``) of ``shards``, in order."""
    source = ({"url": url} for url in shards)
    yield from import_webdataset().tarfile_to_samples(handler=handler)(source)


def sample_parts(sample: dict[str, Any], bad: BadCounter) -> tuple[bytes, int] | None:
    """``(encoded image, label)`` of a sample (label -1 without ``cls``), or None when it has no image
    member or an unreadable ``cls`` (counted)."""
    ext = next((e for e in IMAGE_KEYS if e in sample), None)
    label = _label(sample.get("cls"))
    if ext is not None and label is not None:
        return sample[ext], label
    why = "no image member" if ext is None else f"cls {sample['cls'][:20]!r} is not a class index"
    bad(ValueError(f"sample {sample.get('__key__')} of {sample.get('__url__')}: {why}"))
    return None


def decode_image(data: bytes, sample: dict[str, Any], bad: BadCounter) -> Image.Image | None:
    """The decoded image, or None when PIL cannot decode it (counted)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except UNREADABLE_ERRORS as err:
        bad(ValueError(f"sample {sample.get('__key__')} of {sample.get('__url__')}: {err}"))
        return None


def first_images(pattern: str, n: int, transform: Transform) -> Tensor:
    """The first ``n`` readable images of the first shards, in order, transformed: ``[n, C, H, W]``."""
    bad = BadCounter()
    images = []
    for sample in tar_samples(expand_shards(pattern), bad):
        parts = sample_parts(sample, bad)
        image = None if parts is None else decode_image(parts[0], sample, bad)
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
            for offset, size, label in tar_index(url):
                members.append((url, offset, size))
                labels.append(label)
        if not members:
            raise DataError(f"the shards {urls[0]}, ... hold no image")
        self.members, self.labels = members, np.asarray(labels, dtype=np.int64)
        manifest = read_manifest(_manifest_url(self.urls[0]))
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
        return decode_image(data, {"__key__": f"at byte {offset}", "__url__": url}, self.bad)

    def _label(self, index: int) -> int:
        return int(self.labels[index])
