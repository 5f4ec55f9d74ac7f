"""Data sets as one uint8 array ``[N, C, H, W]`` in memory, for the device-resident pipeline.

Array data sets (the embedded sample, Fashion-MNIST, CIFAR-10/100, STL-10) are read as they are
stored. An ImageFolder is decoded once into a cached array at a chosen square resolution (short
side resized to ``size`` with antialiased bicubic, centre crop): the cache file is keyed by the
folder's file list, sizes and modification times, the resolution and the channel count, so that it
is rebuilt when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dmjd.data.base import UNREADABLE_ERRORS, DataError, cache_dir, report_unreadable
from dmjd.data.datasets import ArrayImages, ImageFiles, TorchvisionImages, build_dataset
from dmjd.data.decode import to_mode
from dmjd.io.atomic import atomic_writer

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageArray:
    """A decoded data set: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]`` (-1: none).

    ``unreadable`` counts the files that could not be decoded (ImageFolder only; they are left out).
    """

    images: np.ndarray
    labels: np.ndarray
    unreadable: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def _nchw(images: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` or ``[N, H, W, C]`` -> ``[N, C, H, W]`` (no copy for the gray case)."""
    return images[:, None] if images.ndim == 3 else np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _to_gray(images: np.ndarray) -> np.ndarray:
    """RGB ``[N, 3, H, W]`` -> ``[N, 1, H, W]`` with PIL's 'L' weights (ITU-R 601-2, rounded)."""
    w = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
    return ((images.astype(np.uint32) * w).sum(1, keepdims=True) + 500) // 1000


def open_source(name: str, split: str, path: str | None, download: bool = False) -> Dataset:
    """The data set with its stored images untransformed, to size (``decoded_nbytes``) and read
    (``to_image_array``) without opening it twice.

    Raises:
        DataError: as ``dmjd.data.build_dataset``.
    """
    return build_dataset(name, split, lambda image: image, path, download)


def decoded_nbytes(source: Dataset, size: int, in_chans: int, limit: int | None = None) -> int:
    """Bytes ``to_image_array`` will take, without decoding (for the memory budget)."""
    n = len(source)  # type: ignore[arg-type]
    if isinstance(source, ArrayImages):
        per_image = source.images[0].nbytes
    elif isinstance(source, TorchvisionImages):
        raw: Any = source.base  # a torchvision data set: its images are .data
        per_image = raw.data[0].nbytes
    else:
        per_image = in_chans * size * size
    return int(per_image) * min(n, limit or n)


def to_image_array(
    source: Dataset, size: int, in_chans: int, limit: int | None = None, background: str = "white"
) -> ImageArray:
    """A data set from ``open_source`` as a uint8 array with ``in_chans`` channels (1-channel data is
    kept at 1 and expanded on the device when ``in_chans`` is 3).

    Args:
        source: from ``open_source``.
        size: decoding resolution of ImageFolder images (ignored for array data sets).
        in_chans: 1 or 3.
        limit: keep only the first ``limit`` images (``data.limit``).
        background: what transparent pixels of ImageFolder images become (``to_mode``).

    Raises:
        DataError: no image of a folder can be decoded, or the data set has no array form.
    """
    if isinstance(source, ImageFiles):
        return _cached_folder(source, size, in_chans, limit, background)
    if isinstance(source, ArrayImages):
        images, labels = source.images, source.labels
    elif isinstance(source, TorchvisionImages):
        raw: Any = source.base
        images = np.asarray(raw.data)
        labels = np.asarray(getattr(raw, "targets", None) or raw.labels)
        if images.ndim == 4 and images.shape[1] == 3:  # STL-10 is stored [N, 3, H, W]
            images = images.transpose(0, 2, 3, 1)
    else:  # pragma: no cover - build_dataset returns one of the above
        raise DataError(f"{type(source).__name__} has no array form")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    arr = _nchw(np.asarray(images))
    if in_chans == 1 and arr.shape[1] == 3:
        arr = _to_gray(arr).astype(np.uint8)
    return ImageArray(np.ascontiguousarray(arr), np.asarray(labels, dtype=np.int64))


def load_image_array(
    name: str,
    split: str,
    path: str | None,
    size: int,
    in_chans: int,
    download: bool = False,
    limit: int | None = None,
    background: str = "white",
) -> ImageArray:
    """``to_image_array(open_source(name, split, path, download), size, in_chans, limit, background)``."""
    return to_image_array(open_source(name, split, path, download), size, in_chans, limit, background)


def _folder_key(files: ImageFiles, size: int, in_chans: int, limit: int | None, background: str) -> str:
    """Cache key: every file's relative path, size and mtime, plus the decoding settings."""
    h = hashlib.blake2b(digest_size=16)
    settings = {"size": size, "in_chans": in_chans, "limit": limit, "background": background, "v": 2}  # v2: to_mode
    h.update(json.dumps(settings).encode())
    for p, label in files.samples:
        st = p.stat()
        h.update(f"{p.relative_to(files.root)}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()


def _decode(path: Path, size: int, in_chans: int, background: str) -> np.ndarray | None:
    """One image as uint8 ``[C, size, size]`` (``to_mode``): short side to ``size`` (bicubic), centre crop."""
    try:
        with Image.open(path) as file:
            image = to_mode(file, in_chans, background)
            w, h = image.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            arr = np.asarray(image.crop((left, top, left + size, top + size)))
    except UNREADABLE_ERRORS as err:
        report_unreadable(LOG, path, err)
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _cached_folder(files: ImageFiles, size: int, in_chans: int, limit: int | None, background: str) -> ImageArray:
    """Decode (once) or load the cached array of a folder of images."""
    samples = files.samples[:limit] if limit is not None else files.samples
    key = _folder_key(files, size, in_chans, limit, background)
    cache = cache_dir() / "decoded" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return ImageArray(z["images"], z["labels"], int(z["unreadable"]))
    workers = min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(lambda s: _decode(s[0], size, in_chans, background), samples))
    keep = [i for i, a in enumerate(decoded) if a is not None]
    if not keep:
        raise DataError(f"no image under {files.root} could be decoded")
    images = np.stack([a for a in decoded if a is not None])
    labels = np.array([samples[i][1] for i in keep], dtype=np.int64)
    out = ImageArray(images, labels, len(samples) - len(keep))
    with atomic_writer(cache) as f:  # a temp file of its own: torchrun's ranks decode the same folder at once
        np.savez(f, images=out.images, labels=out.labels, unreadable=np.int64(out.unreadable))
    return out
