"""Map-style data sources: the embedded sample, Fashion-MNIST IDX files, CIFAR-10/100 and STL-10,
image folders, and local shards by index; ``build_dataset`` picks one by name, ``infer_data_kind``
tells from a folder which one it holds.

Items follow ``dmjd.data.base``: ``(image, label, skipped)``.
"""

from __future__ import annotations

import copy
import gzip
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from dmjd.data.base import (
    IMAGE_EXTENSIONS,
    UNREADABLE_ERRORS,
    DataError,
    StandInImages,
    Transform,
    cache_dir,
    report_unreadable,
)
from dmjd.data.shards import ShardImages, split_shards
from dmjd.data.split import stratified_split
from dmjd.io.atomic import atomic_writer

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DATASET_NAMES = ("embedded", "imagefolder", "cifar10", "cifar100", "stl10", "fashion_mnist", "webdataset")
# The held-out split of a labelled image folder without val/ or test/: a share of each class, by seed.
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.2, 0

LOG = logging.getLogger(__name__)


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array [N, H, W] or [N, H, W, C], with labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform, classes: tuple[str, ...]) -> None:
        self.images, self.labels, self.transform, self.classes = images, labels, transform, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index]), 0


def embedded_sample(split: str, transform: Transform) -> ArrayImages:
    """The Fashion-MNIST sample shipped in the package (4,000 train / 1,000 test, 28 px gray)."""
    if split not in ("train", "test"):
        raise DataError(f"embedded data has splits 'train' and 'test', not {split!r}")
    file = resources.files("dmjd.data") / "sample" / "fashion_mnist_sample.npz"
    with resources.as_file(file) as path, np.load(path) as arrays:
        return ArrayImages(arrays[f"{split}_images"], arrays[f"{split}_labels"], transform, FASHION_MNIST_CLASSES)


def _prepare_debian_fashion_mnist(src: Path, root: Path) -> None:
    """Unpack Debian's gzip'd Fashion-MNIST files where torchvision's reader expects them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*-ubyte.gz"):
        out = raw / gz.name.removesuffix(".gz")
        if not out.exists():  # each process its own temp file: torchrun's ranks may unpack at once
            with gzip.open(gz, "rb") as fin, atomic_writer(out) as fout:
                shutil.copyfileobj(fin, fout)


def fashion_mnist(split: str, transform: Transform, path: str | None, download: bool) -> Dataset:
    """Fashion-MNIST through torchvision's reader.

    ``path`` may hold gzip'd IDX files (Debian's layout, the default /usr/share/datasets/fashion-mnist:
    unpacked once into the cache) or torchvision's ``FashionMNIST/raw`` folder; else download.
    """
    source = Path(path) if path else DEBIAN_FASHION_MNIST
    root = Path(path) if path else cache_dir()
    if source.is_dir() and any(source.glob("*-ubyte.gz")):  # Debian's layout: gzip'd IDX files
        root = cache_dir()
        _prepare_debian_fashion_mnist(source, root)
    try:
        ds = tvd.FashionMNIST(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise DataError(
            f"Fashion-MNIST not found under {root} ({err}). Install Debian's dataset-fashion-mnist "
            "package, set data.path to a folder holding FashionMNIST/raw, or set data.download=true."
        ) from None
    return ArrayImages(ds.data.numpy(), ds.targets.numpy(), transform, FASHION_MNIST_CLASSES)


class TorchvisionImages(Dataset):
    """Adapter giving a torchvision data set of (PIL image, label) the dmjd item format."""

    def __init__(self, base: Dataset, transform: Transform) -> None:
        self.base, self.transform = base, transform
        self.classes = tuple(getattr(base, "classes", ()))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.base[index]
        return self.transform(image), int(label), 0


def torchvision_dataset(name: str, split: str, transform: Transform, path: str | None, download: bool) -> Dataset:
    """CIFAR-10/100 or STL-10 (labelled splits; STL-10 pre-training uses train+unlabeled)."""
    root = path or str(cache_dir())
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            base = cls(root, train=split == "train", download=download)
        else:
            stl_split = {"train": "train", "test": "test", "pretrain": "train+unlabeled"}[split]
            base = tvd.STL10(root, split=stl_split, download=download)
    except RuntimeError as err:
        raise DataError(f"{name} not found under {root} ({err}); set data.path to its folder or data.download=true") from None
    return TorchvisionImages(base, transform)


class ImageFiles(StandInImages):
    """A folder of images: class sub-folders give labels (ImageFolder), a flat folder gives -1.

    Unreadable, truncated, empty or non-image files are replaced by the next readable file, with one
    logged warning (one line) per file, and flagged ``skipped=1`` so the trainer can count them;
    ``readable()`` leaves them out instead (evaluations). ``held_out`` counts the folder's files in
    the other part of its held-out split (``select``), 0 for a whole folder.
    """

    held_out: int = 0

    def __init__(self, root: str | Path, transform: Transform) -> None:
        self.root, self.transform = Path(root), transform
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist; set data.path to a folder of images")
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = tuple(d.name for d in subdirs)
        if subdirs:
            self.samples = [(p, c) for c, d in enumerate(subdirs) for p in _image_files(d)]
        else:
            self.samples = [(p, -1) for p in _image_files(self.root)]
        if not self.samples:
            raise DataError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root}; "
                "point data.path at a folder of images or of class sub-folders"
            )
        self._warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"ImageFiles({str(self.root)!r})"

    def select(self, ids: np.ndarray, held_out: int = 0) -> ImageFiles:
        """The same folder restricted to the files ``ids`` (its classes kept), ``held_out`` files aside."""
        part = copy.copy(self)
        part.samples, part.held_out, part._warned = [self.samples[i] for i in ids], held_out, set()
        return part

    def readable(self) -> ImageFiles:
        """The files that decode, each unreadable one logged (one line) and left out.

        Reads every file once (threads; JPEGs decoded at reduced scale), so that an evaluation's
        splits count images, not files, and hold no stand-in for a broken file.
        """
        with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
            ok = list(pool.map(_decodes, (path for path, _ in self.samples)))
        return self if all(ok) else self.select(np.flatnonzero(ok), self.held_out)

    def _open(self, index: int) -> Image.Image | None:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except UNREADABLE_ERRORS as err:
            if path not in self._warned:
                self._warned.add(path)
                report_unreadable(LOG, path, err)
            return None

    def _label(self, index: int) -> int:
        return self.samples[index][1]


def _decodes(path: Path) -> bool:
    """Whether an image file decodes to the end (JPEGs at 1/8 scale, which still reads every byte)."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        return True
    except UNREADABLE_ERRORS as err:
        report_unreadable(LOG, path, err)
        return False


def _image_files(folder: Path) -> list[Path]:
    """Image files below `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# Folder names torchvision's readers look for below their root, and the data set each marks.
_TORCHVISION_FOLDERS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100", "stl10_binary": "stl10"}


def infer_data_kind(path: str | Path) -> tuple[str, str]:
    """The data set a folder holds, as ``(data.name, data.path)``: Fashion-MNIST IDX files (gzip'd
    or below ``FashionMNIST/``), CIFAR-10/100 or STL-10 batches (their folder or its parent), or
    images (``imagefolder``; class sub-folders give labels).

    Raises:
        DataError: the path is missing, not a folder, or holds none of these.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise DataError(f"data.path={path} {what}; give a folder of images (class sub-folders give labels), "
                        "of Fashion-MNIST IDX files or of CIFAR/STL-10 batches")  # fmt: skip
    if folder.name in _TORCHVISION_FOLDERS:
        return _TORCHVISION_FOLDERS[folder.name], str(folder.parent)
    for marker, name in _TORCHVISION_FOLDERS.items():
        if (folder / marker).is_dir():
            return name, str(folder)
    if any(folder.glob("*-ubyte.gz")) or (folder / "FashionMNIST").is_dir():
        return "fashion_mnist", str(folder)
    if next((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), None) is not None:
        return "imagefolder", str(folder)
    raise DataError(
        f"data.path={path} holds no images ({', '.join(IMAGE_EXTENSIONS)}), Fashion-MNIST IDX files "
        "(*-ubyte.gz) or CIFAR/STL-10 batches; point it at one of these, or set data.name"
    )


HELD_OUT_FOLDERS = ("val", "test")


def imagefolder_split(path: str | Path, split: str) -> Path:
    """The folder of one split of an ImageFolder tree, the same for pre-training, the API and every
    evaluation.

    A tree is a root with ``train/`` and ``val/`` or ``test/`` folders (``path`` may also name its
    ``train`` folder, what pre-training configs often point at): ``train`` is ``ROOT/train``, and
    ``test`` or ``val`` is ``ROOT/val`` or ``ROOT/test``, whichever exists (``val`` first); any other
    split is ``ROOT/<split>``. A root without such folders is the data itself, for ``train`` only
    (``image_folder`` splits it when it has class sub-folders).

    Raises:
        DataError: the split has no folder (a held-out split of a root without ``val/`` or ``test/``).
    """
    root = Path(path)
    beside = any((root.parent / name).is_dir() for name in HELD_OUT_FOLDERS)
    if root.name == "train" and beside and not (root / "train").is_dir():
        root = root.parent  # the tree's train folder was given
    names = HELD_OUT_FOLDERS if split in HELD_OUT_FOLDERS else (split,)
    found = next((root / name for name in names if (root / name).is_dir()), None)
    if found is not None:
        return found
    if split == "train" and not _is_tree(root):
        return root
    where = " or ".join(f"{root}/{name}" for name in names)
    raise DataError(
        f"data.name=imagefolder has no {split} split: no folder {where}; give data.path a root with train/ and "
        "val/ (or test/) class folders"
    )


def image_folder(path: str | Path, split: str, transform: Transform) -> ImageFiles:
    """One split of an image folder, the same for pre-training, the API and every evaluation.

    A tree's splits are its folders (``imagefolder_split``). A folder of class sub-folders without
    ``val/`` or ``test/`` is split class by class (``stratified_split`` of ``HOLDOUT_FRACTION``, seeded
    by ``HOLDOUT_SEED``): ``train`` is one part, ``test`` or ``val`` the other, so that pre-training
    does not see the probes' test images; ``all`` is the whole folder (``data.split_holdout=false``).
    A flat folder has no labels to split by: ``train`` and ``all`` are all of it.

    Raises:
        DataError: the folder is missing or empty, or has no such split.
    """
    if split == "all" or _is_tree(Path(path)):
        return ImageFiles(imagefolder_split(path, "train" if split == "all" else split), transform)
    files = ImageFiles(imagefolder_split(path, "train"), transform)  # the folder itself
    if not files.classes or split not in ("train", *HELD_OUT_FOLDERS):
        return ImageFiles(imagefolder_split(path, split), transform)  # all of a flat folder, or no such split
    train, test = stratified_split(np.array([c for _, c in files.samples]), HOLDOUT_FRACTION, HOLDOUT_SEED)
    return files.select(train, len(test)) if split == "train" else files.select(test, len(train))


def _is_tree(root: Path) -> bool:
    """Whether ``root`` is a split tree or its ``train/`` folder (``imagefolder_split``)."""
    beside = root.name == "train" and any((root.parent / name).is_dir() for name in HELD_OUT_FOLDERS)
    return beside or any((root / name).is_dir() for name in ("train", *HELD_OUT_FOLDERS))


def build_dataset(name: str, split: str, transform: Transform, path: str | None = None, download: bool = False) -> Dataset:
    """Build a data set by name: embedded, imagefolder, cifar10, cifar100, stl10, fashion_mnist, or
    webdataset (local shards read by index, for evaluation and ``dmjd shard``; pre-training streams
    them through ``dmjd.data.shards.shard_batches``).

    Raises:
        DataError: unknown name, missing files or an empty folder, with the options to fix it.
    """
    if name == "embedded":
        ds: Dataset = embedded_sample(split, transform)
    elif name == "imagefolder":
        if not path:
            raise DataError("data.name=imagefolder needs data.path (a folder of images or class folders)")
        ds = image_folder(path, split, transform)
    elif name == "fashion_mnist":
        ds = fashion_mnist(split, transform, path, download)
    elif name in ("cifar10", "cifar100", "stl10"):
        ds = torchvision_dataset(name, split, transform, path, download)
    elif name == "webdataset":
        if not path:
            raise DataError("data.name=webdataset needs data.path (a shard pattern such as train-{000000..000009}.tar)")
        ds = ShardImages(split_shards(path, split), transform)
    else:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if len(ds) == 0:  # type: ignore[arg-type]
        raise DataError(f"data set {name!r} ({split}) is empty")
    return ds
