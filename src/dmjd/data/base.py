"""What every data source shares: the item format, its error, and where prepared data is cached.

Every data set yields ``(image, label, skipped)``: the transformed image, its class (-1 when the
data set has no labels) and 1 when the requested file was unreadable and another one stands in
(so bad files are counted in the metrics instead of crashing an epoch).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from dmjd.errors import InputError

# What a file that does not decode raises (UnidentifiedImageError is an OSError; PIL refuses images
# above Image.MAX_IMAGE_PIXELS with DecompressionBombError): such a file is reported and skipped.
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

Transform = Callable[[Image.Image], Any]  # a tensor for training; PIL images for open_source and write_shards


class DataError(InputError):
    """A data set is missing, empty or unreadable; the message names the options."""


_reported: set[str] | None = None  # the unreadable files logged inside ``unreadable_once`` (None: outside)


@contextmanager
def unreadable_once() -> Iterator[None]:
    """Inside this block each unreadable image file is logged once, however many readers meet it: a
    pre-training run decodes its training set, and its monitor checks the same files for its splits."""
    global _reported
    outer = _reported
    _reported = set() if outer is None else outer
    try:
        yield
    finally:
        _reported = outer


def report_unreadable(log: logging.Logger, path: str | Path, err: BaseException) -> None:
    """Log one line for an image file that cannot be read (once per file inside ``unreadable_once``)."""
    if _reported is not None:
        if str(path) in _reported:
            return
        _reported.add(str(path))
    log.warning("skipping unreadable image %s: %s", path, err)


def cache_dir() -> Path:
    """Where dmjd unpacks data it prepares (``$DMJD_CACHE``, default ``~/.cache/dmjd``)."""
    return Path(os.environ.get("DMJD_CACHE", Path.home() / ".cache" / "dmjd"))


class StandInImages(Dataset, ABC):
    """A data set whose unreadable images are replaced by the next readable one and flagged
    ``skipped=1``, so that bad files are counted in the metrics instead of crashing an epoch.

    Subclasses set ``transform`` and give ``__len__``, ``_open`` and ``_label``.
    """

    transform: Transform

    @abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @abstractmethod
    def _open(self, index: int) -> Image.Image | None:
        """The image of item ``index``, or None when it cannot be read (logged by the subclass)."""

    @abstractmethod
    def _label(self, index: int) -> int:
        """The class of item ``index`` (-1: unlabelled)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for offset in range(n):
            image = self._open((index + offset) % n)
            if image is not None:
                return self.transform(image), self._label((index + offset) % n), int(offset > 0)
        raise DataError(f"no readable image in {self!r}")


def dataset_classes(dataset: Dataset) -> tuple[str, ...]:
    """A data set's class names, looking through ``Subset`` / ``SeededSamples`` wrappers (empty: no labels)."""
    while not hasattr(dataset, "classes"):
        inner = getattr(dataset, "dataset", getattr(dataset, "base", None))
        if inner is None:
            return ()
        dataset = inner
    return tuple(dataset.classes)


def describe_data(
    name: str, path: str | None, split: str, count: int, num_classes: int, class_names: Sequence[str] = ()
) -> str:
    """One start-up line: the data set, where it is read from, its split, image count and classes."""
    where = "the packaged Fashion-MNIST sample" if name == "embedded" else (path or f"the {name} default location")
    names = f" ({', '.join(class_names[:4])}{', ...' if len(class_names) > 4 else ''})" if class_names else ""
    labels = f"{num_classes} classes{names}" if num_classes else "no labels"
    return f"data {name} from {where}, {split} split: {count:,} images, {labels}"
