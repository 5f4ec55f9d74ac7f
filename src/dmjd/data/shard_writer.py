"""Writing a data set as WebDataset shards with a manifest (``dmjd shard``)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from dmjd.data.base import DataError, dataset_classes
from dmjd.data.datasets import ImageFiles
from dmjd.data.decode import to_mode
from dmjd.data.shards import MANIFEST, import_webdataset, read_manifest, tar_index
from dmjd.io.atomic import atomic_write


def write_shards(
    dataset: Dataset,
    dst: str | Path,
    shard_size: int,
    max_side: int | None = None,
    prefix: str = "train",
    quality: int = 90,
    background: str = "white",
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
            Every image is written as JPEG, upright and opaque (``to_mode``); a JPEG file of an
            ``ImageFiles`` folder that needs no shrinking and no EXIF rotation is copied byte for byte
            (no second compression, and no encoding time).
        quality: JPEG quality.
        background: what transparent pixels become (``to_mode``).

    Returns:
        The manifest.

    Raises:
        DataError: ``dst`` already holds shards of that prefix, or its manifest names other classes.
    """
    wds = import_webdataset()
    out = Path(dst)
    if any(out.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out} already holds {prefix}-*.tar shards; write to an empty folder or another --split")
    old = read_manifest(str(out / MANIFEST)) or {}
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
            sample = {"__key__": f"{i:09d}", "jpg": _encoded(dataset, i, image, max_side, quality, background)}
            if int(label) >= 0:
                sample["cls"] = str(int(label)).encode()
            sink.write(sample)
    others = [entry for entry in old.get("shards", []) if not entry["name"].startswith(f"{prefix}-")]
    shards = [{"name": p.name, "count": len(tar_index(str(p))), "sha256": _sha256(p)}
              for p in sorted(out.glob(f"{prefix}-*.tar"))]  # fmt: skip
    splits = {**old.get("splits", {}), prefix: written}
    manifest = {
        "samples": sum(splits.values()),
        "splits": splits,
        "classes": classes or old.get("classes", []),
        "shards": others + shards,
    }
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def keep_image(image: Image.Image) -> Image.Image:
    """The identity transform: a data set built with it yields PIL images (for ``write_shards``)."""
    return image


def _encoded(dataset: Dataset, index: int, image: Image.Image, max_side: int | None, quality: int, background: str) -> bytes:
    """The original file's bytes when it is an upright RGB or gray JPEG that needs no shrinking, else a
    new JPEG of the image decoded by ``to_mode`` (gray images stay gray)."""
    path = dataset.samples[index][0] if isinstance(dataset, ImageFiles) else None
    fits = max_side is None or max(image.size) <= max_side
    upright = image.getexif().get(0x0112, 1) == 1
    if path is not None and path.suffix.lower() in (".jpg", ".jpeg") and fits and upright and image.mode in ("RGB", "L"):
        return path.read_bytes()
    gray = image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L")
    return _jpeg(to_mode(image, 1 if gray else 3, background), max_side, quality)


def _jpeg(image: Image.Image, max_side: int | None, quality: int) -> bytes:
    """JPEG bytes of ``image`` (RGB or L), shrunk so its longer side is at most ``max_side``."""
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
        )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
