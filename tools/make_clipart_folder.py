"""Build the labelled clip-art folder of the fixed-ETE study from Debian's ``openclipart-png``.

A second real data set of semantic classes beside Fashion-MNIST (issue 30): the PNGs under
``/usr/share/openclipart/png/<category>/`` (``apt-get install openclipart-png``), one class per
category. Each image is composited on a white background (clip-art is drawn for white paper; its
transparent pixels hold arbitrary colour), padded to a square on white, resized to ``--size`` px and
written as RGB. ``--per-class`` images are drawn per category with ``--seed`` and split class by
class (``dmjd.data.split.stratified_split``) into ``OUT/train/<category>/`` and ``OUT/val/<category>/``.

    python tools/make_clipart_folder.py OUT [--size 64 --per-class 150 --val-fraction 0.2 --seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dmjd.data.base import UNREADABLE_ERRORS
from dmjd.data.split import stratified_split
from dmjd.errors import InputError

SOURCE = Path("/usr/share/openclipart/png")
# Categories of semantic content with >= 135 images in openclipart-png 0.18 ("special" and
# "unsorted" hold no common subject; the others have too few images for a 20 % test split).
CATEGORIES = ("animals", "computer", "food", "geography", "office", "people", "recreation", "shapes",
              "signs_and_symbols", "tools", "transportation")  # fmt: skip


def on_white(image: Image.Image, size: int) -> Image.Image:
    """``image`` composited on white (alpha and palette transparency), padded to a white square and
    resized to ``size`` x ``size`` RGB."""
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def build_parser() -> argparse.ArgumentParser:
    """The tool's options."""
    p = argparse.ArgumentParser(prog="make_clipart_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to create: OUT/train/<category>/ and OUT/val/<category>/")
    p.add_argument("--source", default=str(SOURCE), help=f"openclipart-png's folder (default {SOURCE})")
    p.add_argument("--size", type=int, default=64, help="side of the square RGB images (default 64)")
    p.add_argument("--per-class", type=int, default=150, help="images drawn per category (default 150)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in val/ (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw and of the split (default 0)")
    return p


def write_clipart_folder(
    out: Path, source: Path, size: int, per_class: int, val_fraction: float, seed: int
) -> dict[str, dict[str, int]]:
    """Write the folder; returns ``{split: {category: images}}``.

    Raises:
        InputError: ``out`` is not new or empty, or ``source`` lacks a category.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder; choose a new one")
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for label, category in enumerate(CATEGORIES):
        found = sorted((source / category).rglob("*.png"))
        if not found:
            raise InputError(f"{source / category}: no PNG files; install Debian's openclipart-png")
        chosen = rng.choice(len(found), size=min(per_class, len(found)), replace=False)
        files += [found[i] for i in sorted(chosen)]
        labels += [label] * len(chosen)
    train, val = stratified_split(np.asarray(labels), val_fraction, seed)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "unreadable": {}}
    for split, indices in (("train", train), ("val", val)):
        for i in indices:
            category = CATEGORIES[labels[i]]
            folder = out / split / category
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with Image.open(files[i]) as image:
                    on_white(image, size).save(folder / f"{i:05d}-{files[i].stem}.png")  # unique: stems repeat
            except UNREADABLE_ERRORS:
                counts["unreadable"][category] = counts["unreadable"].get(category, 0) + 1
                continue
            counts[split][category] = counts[split].get(category, 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Write the folder and print its counts; a bad option is one line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        counts = write_clipart_folder(Path(args.out), Path(args.source), args.size, args.per_class,
                                      args.val_fraction, args.seed)  # fmt: skip
    except InputError as err:
        print(f"make_clipart_folder: error: {err}", file=sys.stderr)
        return 2
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} images, {per_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
