"""A labelled folder of natural photos, made offline from the photos installed Python packages ship.

Each source photo is one class; its images are seeded random square crops (a random position, a
side of 25-60 % of the photo's shorter side), resized to ``size x size`` RGB and flipped at random.
It gives the comparisons a data set of natural colour images that every machine with scikit-learn
and matplotlib (dmjd's dependencies) can rebuild bit for bit; scikit-image (``pip install
dmjd[photos]``) adds six more photos. ``tools/make_photo_folder.py`` is the command line.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image

from dmjd.data.split import stratified_split
from dmjd.errors import InputError

# (class name, package, file inside the package): photographs only, no plots, logos or textures.
PACKAGED_PHOTOS = (
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("astronaut", "skimage", "data/astronaut.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
)
CROP_SCALE = (0.25, 0.6)


def packaged_photos() -> tuple[dict[str, Path], list[str]]:
    """The photos of ``PACKAGED_PHOTOS`` found on this machine, without importing their packages.

    Returns:
        ``({class name: file}, [packages not installed])``.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name, package, file in PACKAGED_PHOTOS:
        spec = find_spec(package)
        path = Path(spec.submodule_search_locations[0]) / file if spec and spec.submodule_search_locations else None
        if path is not None and path.is_file():
            found[name] = path
        elif package not in missing:
            missing.append(package)
    return found, missing


def photo_crops(
    photo: Image.Image, count: int, size: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE
) -> np.ndarray:
    """Random square crops of one photo, resized (antialiased bicubic) and randomly flipped.

    The boxes and flips are drawn at once; each crop is then resized by PIL, whose separable
    kernels read only the crop (an offline tool: the batched matmul of ``dmjd.data.resized_crop``
    is made for the device, and was 10-100x slower on a CPU for these photo sizes).

    Args:
        photo: any PIL image; converted to RGB.
        count: number of crops.
        size: output side in pixels.
        rng: random source of positions, sides and flips.
        scale: range of the crop side as a fraction of the photo's shorter side.

    Returns:
        ``uint8[count, size, size, 3]``.

    Raises:
        InputError: ``count`` or ``size`` below 1, or a scale outside (0, 1].
    """
    if count < 1 or size < 1 or not 0 < scale[0] <= scale[1] <= 1:
        raise InputError(f"photo crops need count >= 1, size >= 1 and 0 < scale <= 1, got {count}, {size}, {scale}")
    rgb = photo.convert("RGB")
    width, height = rgb.size
    u = rng.random((4, count))
    side = np.maximum(np.floor(min(height, width) * (scale[0] + (scale[1] - scale[0]) * u[0])), 1).astype(int)
    top, left = np.floor(u[1] * (height - side + 1)).astype(int), np.floor(u[2] * (width - side + 1)).astype(int)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, (t, x, s) in enumerate(zip(top.tolist(), left.tolist(), side.tolist())):
        out[i] = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC, box=(x, t, x + s, t + s)))
    flip = u[3] < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def write_photo_folder(
    out: str | Path,
    photos: Mapping[str, Image.Image],
    size: int = 64,
    crops_per_photo: int = 500,
    seed: int = 0,
    val_fraction: float | None = None,
) -> dict[str, dict[str, int]]:
    """Write ``OUT/<class>/<i>.png`` crops of each photo, or ``OUT/train/<class>/`` and
    ``OUT/val/<class>/`` with ``val_fraction`` of each class's crops held out (seeded).

    Crops of one photo overlap, so a validation crop may share pixels with training crops: the
    split measures generalisation to new views of the same scenes, not to new scenes.

    Args:
        out: the folder, created; it must not hold anything yet.
        photos: ``{class name: photo}``.
        size: side of the square RGB crops.
        crops_per_photo: images per class.
        seed: seed of the crops (per class, with its name) and of the split.
        val_fraction: share of each class written to ``val/``; None writes class folders only.

    Returns:
        ``{split: {class: images written}}``, the split ``"all"`` without ``val_fraction``.

    Raises:
        InputError: ``out`` is not an empty or new folder, no photos, or a bad size, count or fraction.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder; choose a new one")
    if not photos:
        raise InputError("no photos to crop")
    if seed < 0:
        raise InputError(f"the seed must be >= 0, got {seed}")
    everything = np.arange(crops_per_photo)
    splits = (
        {"all": everything}
        if val_fraction is None
        else dict(zip(("train", "val"), stratified_split(np.zeros_like(everything), val_fraction, seed)))
    )
    counts: dict[str, dict[str, int]] = {}
    for name, photo in photos.items():  # a photo's crops depend on the seed and its name, not on the others
        crops = photo_crops(photo, crops_per_photo, size, np.random.default_rng([seed, zlib.crc32(name.encode())]))
        for split, ids in splits.items():
            folder = out / name if split == "all" else out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in ids.tolist():
                Image.fromarray(crops[i]).save(folder / f"{i:05d}.png")
            counts.setdefault(split, {})[name] = len(ids)
    return counts
