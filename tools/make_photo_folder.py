"""Build a labelled folder of natural photos for the comparisons, offline and reproducibly.

One class per photo shipped inside installed packages (scikit-learn's sample images, matplotlib's
Grace Hopper and, with ``pip install dmjd[photos]``, six scikit-image photos); each class holds
seeded random crops of its photo (see ``dmjd.data.photos``).

    python tools/make_photo_folder.py OUT --size 64 --crops-per-photo 500 --seed 0 [--val-fraction 0.2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from PIL import Image

from dmjd.data.photos import packaged_photos, write_photo_folder
from dmjd.errors import InputError

DISTRIBUTIONS = {"skimage": "scikit-image (pip install 'dmjd[photos]')", "sklearn": "scikit-learn"}


def build_parser() -> argparse.ArgumentParser:
    """The tool's options."""
    p = argparse.ArgumentParser(prog="make_photo_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to create: OUT/<photo>/<i>.png (or OUT/train|val/<photo>/)")
    p.add_argument("--size", type=int, default=64, help="side of the square RGB images (default 64)")
    p.add_argument("--crops-per-photo", type=int, default=500, help="images per class (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and of the split (default 0)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="write OUT/train/ and OUT/val/ with this share of each class in val/")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the folder and print its classes and counts; a bad option is one line, exit 2."""
    args = build_parser().parse_args(argv)
    found, missing = packaged_photos()
    for package in missing:
        print(f"note: {DISTRIBUTIONS.get(package, package)} is not installed: its photos are left out")
    try:
        photos = {name: Image.open(path) for name, path in found.items()}
        counts = write_photo_folder(args.out, photos, args.size, args.crops_per_photo, args.seed, args.val_fraction)
    except InputError as err:
        print(f"make_photo_folder: error: {err}", file=sys.stderr)
        return 2
    for split, classes in counts.items():
        where = args.out if split == "all" else f"{args.out}/{split}"
        listed = ", ".join(f"{name} {n}" for name, n in classes.items())
        print(f"{where}: {len(classes)} classes, {sum(classes.values()):,} images ({listed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
