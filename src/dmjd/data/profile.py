"""What an automatic recipe needs to know about a training set, found in well under a second.

``profile_data`` counts a folder's images by listing it (no decoding) and reads the headers of a
seeded sample of at most ``sample_size`` of them (PIL opens a file lazily: size and mode come from
the header), so its cost does not grow with the images' size. The named data sets are described
from their known facts, without reading anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from dmjd.data.base import IMAGE_EXTENSIONS, UNREADABLE_ERRORS, DataError
from dmjd.data.datasets import HELD_OUT_FOLDERS, HOLDOUT_FRACTION, HOLDOUT_SEED, imagefolder_split, infer_data_kind
from dmjd.data.split import stratified_split

Layout = Literal["flat", "classes", "train_val"]
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class DataProfile:
    """Facts about a training set.

    Attributes:
        name: the data set (``data.name``: ``imagefolder`` or a named set).
        path: where it is read from (None: the named set's default location).
        num_images: images of the training split (STL-10: train + unlabeled, what pre-training reads; a
            folder of class sub-folders without ``val/``: the training part of its seeded split).
        typical_size: median ``(height, width)`` of the sampled images.
        min_side: the smallest shorter side among the sampled images.
        max_side: the largest longer side among the sampled images.
        channels: 1 when every sampled image has a grey PIL mode, else 3.
        labelled: class sub-folders (or a named set's labels) give labels.
        num_classes: number of classes (0 without labels).
        has_val: a held-out split exists (``val/`` or ``test/`` beside ``train/``; a named set's test split).
        layout: ``flat`` (images only), ``classes`` (class sub-folders) or ``train_val`` (``train/``
            holding the training images, a named set's splits).
        sampled: headers read to measure sizes and channels (0 for the named sets).
        held_out: files of a class folder without ``val/`` that its seeded split holds out for the
            probes (``dmjd.data.datasets.image_folder``), not counted in ``num_images``.
    """

    name: str
    path: str | None
    num_images: int
    typical_size: tuple[int, int]
    min_side: int
    max_side: int
    channels: int
    labelled: bool
    num_classes: int
    has_val: bool
    layout: Layout
    sampled: int
    held_out: int = 0


def _named(name: str, num_images: int, side: int, channels: int, num_classes: int) -> DataProfile:
    """A named set of square images with labelled train and test splits."""
    return DataProfile(
        name=name, path=None, num_images=num_images, typical_size=(side, side), min_side=side, max_side=side,
        channels=channels, labelled=True, num_classes=num_classes, has_val=True, layout="train_val", sampled=0,
    )  # fmt: skip


NAMED_PROFILES = {
    "embedded": _named("embedded", 4_000, 28, 1, 10),
    "fashion_mnist": _named("fashion_mnist", 60_000, 28, 1, 10),
    "cifar10": _named("cifar10", 50_000, 32, 3, 10),
    "cifar100": _named("cifar100", 50_000, 32, 3, 100),
    "stl10": _named("stl10", 105_000, 96, 3, 10),
}


def folder_layout(path: str | Path) -> Layout:
    """How an image folder is laid out: ``train_val`` when it is a split tree as
    ``dmjd.data.datasets.imagefolder_split`` reads it (it holds ``train/``, ``val/`` or ``test/``, or
    is a ``train/`` folder with ``val/`` or ``test/`` beside it), ``classes`` when it has other
    sub-folders (one per class), else ``flat``. Reads directory entries only.

    Raises:
        DataError: the path is not a folder.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; give a folder of images or of class sub-folders")
    in_tree = root.name == "train" and any((root.parent / v).is_dir() for v in HELD_OUT_FOLDERS)
    if in_tree or any((root / v).is_dir() for v in ("train", *HELD_OUT_FOLDERS)):
        return "train_val"
    return "classes" if _class_folders(root) else "flat"


def _class_folders(root: Path) -> list[Path]:
    """The non-hidden sub-folders of ``root``, sorted (``ImageFiles``' classes)."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_images(folder: Path) -> list[str]:
    """Image file paths below ``folder``, recursively (``os.walk``: no stat per file)."""
    suffixes = tuple(IMAGE_EXTENSIONS)
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.lower().endswith(suffixes)]


def _header(path: str) -> tuple[int, int, str] | None:
    """``(height, width, mode)`` from an image's header, None when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.height, img.width, img.mode
    except UNREADABLE_ERRORS:
        return None


def profile_data(name: str | None, path: str | Path | None, sample_size: int = 200, seed: int = 0) -> DataProfile:
    """Profile a training set: its size, typical image size, channels, labels and splits.

    Args:
        name: ``data.name``; ``imagefolder`` or None reads ``path`` (whose kind is inferred with
            ``infer_data_kind``: a folder of Fashion-MNIST or CIFAR/STL-10 files gets the named set's
            facts); a named set (``embedded``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
            ``stl10``) is described without reading.
        path: the folder (for a train/val tree: its root or its ``train/`` folder).
        sample_size: at most this many image headers are read, a seeded random sample.
        seed: seed of that sample.

    Raises:
        DataError: an unsupported name, a missing folder, or a folder without readable images.
    """
    if name in NAMED_PROFILES:
        return replace(NAMED_PROFILES[name], path=None if path is None else str(path))
    if name not in (None, "imagefolder"):
        raise DataError(f"cannot profile data set {name!r}; give an image folder or one of {', '.join(NAMED_PROFILES)}")
    if path is None:
        raise DataError("profiling an image folder needs its path")
    kind, where = infer_data_kind(path)
    if kind != "imagefolder":
        return replace(NAMED_PROFILES[kind], path=where)
    return _profile_folder(Path(where).expanduser(), sample_size, seed)


def _profile_folder(root: Path, sample_size: int, seed: int) -> DataProfile:
    """``profile_data`` of an image folder (see there)."""
    layout = folder_layout(root)
    train = imagefolder_split(root, "train")
    classes = _class_folders(train)
    per_class = [_list_images(c) for c in classes]
    files = [p for listed in per_class for p in listed] if classes else _list_images(train)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {train}")
    held_out = 0
    if layout == "classes":  # pre-training keeps the training part of the probes' split
        labels = np.repeat(np.arange(len(classes)), [len(listed) for listed in per_class])
        held_out = len(stratified_split(labels, HOLDOUT_FRACTION, HOLDOUT_SEED)[1])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(files), size=min(sample_size, len(files)), replace=False)
    headers = [h for h in map(_header, (files[i] for i in picks)) if h is not None]
    if not headers:
        raise DataError(f"none of {len(picks)} sampled files in {train} is a readable image")
    sizes = np.array([(h, w) for h, w, _ in headers])
    height, width = (int(v) for v in np.median(sizes, axis=0))
    grey = all(mode in GREY_MODES for _, _, mode in headers)
    has_val = layout == "train_val" and any((train.parent / v).is_dir() for v in HELD_OUT_FOLDERS)
    return DataProfile(
        name="imagefolder", path=str(root), num_images=len(files) - held_out, typical_size=(height, width),
        min_side=int(sizes.min(axis=1).min()), max_side=int(sizes.max()), channels=1 if grey else 3,
        labelled=bool(classes), num_classes=len(classes), has_val=has_val,
        layout=layout, sampled=len(headers), held_out=held_out,
    )  # fmt: skip
