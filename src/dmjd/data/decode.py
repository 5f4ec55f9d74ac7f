"""Decoding: any PIL image as the 'L' or 'RGB' image every path reads (folder cache, loader, shards,
evaluations), upright and opaque."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

BACKGROUNDS = {"white": 255, "gray": 128, "black": 0}
"""Gray levels of the uniform backgrounds transparent pixels are composited on (``data.background``)."""
_ORIENTATION = 0x0112  # the EXIF Orientation tag


def to_mode(image: Image.Image, in_chans: int, background: str = "white") -> Image.Image:
    """Any PIL image (L, RGBA, LA, P, CMYK, I;16, ...) as 'L' or 'RGB', upright and opaque: the one
    decoding step of every path (folder cache, loader, shards, evaluations).

    The EXIF orientation is applied (a phone photo tagged "rotate 90" is decoded as it is shown), 16/32-bit
    gray is rescaled to 8 bits by the image's range, and an alpha channel or a transparent palette or
    colour key is composited on a uniform ``background`` (a key of ``BACKGROUNDS``): the colour left
    under fully transparent pixels is never seen.
    """
    if image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: rescale to 8 bit by the image's own range.
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32))
        hi = float(arr.max()) if arr.numel() else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        image = Image.fromarray((arr * scale).clamp(0, 255).to(torch.uint8).numpy(), mode="L")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        level = BACKGROUNDS[background]
        flat = Image.new("RGBA", image.size, (level, level, level, 255))
        flat.alpha_composite(image.convert("RGBA"))
        image = flat.convert("RGB")
    target = "L" if in_chans == 1 else "RGB"
    return image if image.mode == target else image.convert(target)
