"""Write a small labelled image folder drawn from Fashion-MNIST: a user's "small domain data set".

The target of the continued pre-training evidence (issue 31): ``--train-per-class`` images per class
drawn with ``--seed`` from Fashion-MNIST's training split into ``OUT/train/<class>/`` and
``--test-per-class`` from its test split into ``OUT/val/<class>/``, as 28 px grey PNGs (class names
with '/' get '_'). Reads Debian's ``dataset-fashion-mnist`` (or ``--path``) through
``dmjd.data.datasets.fashion_mnist``.

    python tools/make_fmnist_folder.py OUT [--train-per-class 100 --test-per-class 100 --seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dmjd.data.base import DataError
from dmjd.data.datasets import FASHION_MNIST_CLASSES, fashion_mnist
from dmjd.errors import InputError


def per_class_draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` items of each class (all of a smaller class), drawn with ``seed``,
    in index order."""
    order = np.random.default_rng(seed).permutation(len(labels))
    by_class = order[np.argsort(labels[order], kind="stable")]
    sorted_labels = labels[by_class]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    return np.sort(by_class[np.arange(len(by_class)) - first < per_class])


FOLDERS = {"train": "train", "val": "test"}  # folder written: Fashion-MNIST split drawn from


def write_fmnist_folder(out: Path, path: str | None, per_class: dict[str, int], seed: int) -> dict[str, int]:
    """Write ``OUT/train`` (from the training split) and ``OUT/val`` (from the test split),
    ``per_class[folder]`` images per class each; returns images written per folder.

    Raises:
        InputError: ``out`` is not new or empty.
        DataError: Fashion-MNIST is not found.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder; choose a new one")
    counts = {}
    for folder, split in FOLDERS.items():
        source = fashion_mnist(split, lambda image: image, path, download=False)
        chosen = per_class_draw(source.labels, per_class[folder], seed)
        for i in chosen:
            target = out / folder / FASHION_MNIST_CLASSES[source.labels[i]].replace("/", "_")
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[i]).save(target / f"{split}-{i:05d}.png")
        counts[folder] = len(chosen)
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The tool's options."""
    p = argparse.ArgumentParser(prog="make_fmnist_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to create: OUT/train/<class>/ and OUT/val/<class>/")
    p.add_argument("--path", default=None, help="Fashion-MNIST's files (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--train-per-class", type=int, default=100, help="training images per class (default 100)")
    p.add_argument("--test-per-class", type=int, default=100, help="test images per class (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the folder and print its counts; bad input is one line, exit 2."""
    args = build_parser().parse_args(argv)
    per_class = {"train": args.train_per_class, "val": args.test_per_class}
    try:
        if min(per_class.values()) < 1:
            raise InputError("--train-per-class and --test-per-class must be at least 1")
        counts = write_fmnist_folder(Path(args.out), args.path, per_class, args.seed)
    except (InputError, DataError) as err:
        print(f"make_fmnist_folder: error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{folder}/: {n} images" for folder, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
