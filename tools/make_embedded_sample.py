"""Build the embedded default data set shipped inside the package.

A class-balanced sample of Fashion-MNIST (Zalando, MIT licence) read from Debian's
`dataset-fashion-mnist` files: 400 train + 100 test images per class, 28x28 grayscale.

    python tools/make_embedded_sample.py /usr/share/datasets/fashion-mnist src/dmjd/data/sample
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Return `per_class` random indices of each class, shuffled."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return rng.permutation(np.concatenate(picks))


def main(src: Path, dst: Path) -> None:
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, per_class in (("train", "train", 400), ("test", "t10k", 100)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        idx = balanced_indices(labels, per_class, rng)
        out[f"{split}_images"], out[f"{split}_labels"] = images[idx], labels[idx]
    dst.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst / "fashion_mnist_sample.npz", **out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
