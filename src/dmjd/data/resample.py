"""Batched RandomResizedCrop + flip as tensor ops on the training device.

Two pieces (plus ``pad_batch`` for images of different sizes), both vectorised over the batch (no per-sample Python):

* ``random_resized_crop_params`` draws torchvision's ``RandomResizedCrop.get_params`` for every
  sample at once: 10 tries of (area ~ U(scale) * H * W, log-aspect ~ U(log ratio)), the first try
  whose rounded box fits, uniform top-left corner, and torchvision's centre-crop fallback when no
  try fits.
* ``resized_crop`` crops those boxes and resizes them to ``size x size`` with the separable,
  antialiased bilinear / bicubic filter of PIL and ``torch.nn.functional.interpolate(...,
  antialias=True)`` (kernel support stretched by the scale when shrinking, weights normalised per
  output pixel, bicubic a = -0.5). Each sample's crop, resize and optional flip is one pair of
  ``[size, H]`` / ``[size, W]`` weight matrices, applied with two batched matmuls.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Interpolation = Literal["bilinear", "bicubic"]
MAX_TRIES = 10  # torchvision's RandomResizedCrop.get_params
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_params(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = DEFAULT_RATIO,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Crop boxes of ``n`` samples, distributed as torchvision's ``RandomResizedCrop``.

    Args:
        n: number of samples.
        height, width: source image size, one for all samples or ``[n]`` tensors (images of
            different sizes, e.g. decoded JPEGs padded into one batch).
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        generator: random source on ``device`` (the run's seeded generator).
        device: where the boxes live; defaults to the generator's device.

    Returns:
        ``long[n, 4]`` boxes ``(top, left, height, width)``.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    img_h = torch.as_tensor(height, dtype=torch.float64, device=device).reshape(-1)
    img_w = torch.as_tensor(width, dtype=torch.float64, device=device).reshape(-1)
    u = torch.rand(4, n, MAX_TRIES, generator=generator, dtype=torch.float64, device=device)
    area = (img_h * img_w).view(-1, 1) * (scale[0] + (scale[1] - scale[0]) * u[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= img_w.view(-1, 1)) & (h > 0) & (h <= img_h.view(-1, 1))
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting try (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top = torch.floor(u[2].gather(1, first).squeeze(1) * (img_h - h + 1))
    left = torch.floor(u[3].gather(1, first).squeeze(1) * (img_w - w + 1))
    fallback = _centre_fallback(img_h, img_w, ratio)
    found = fits.any(dim=1)
    boxes = torch.stack([torch.where(found, a, b) for a, b in zip((top, left, h, w), fallback)], dim=1)
    return boxes.long()


def _centre_fallback(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, ...]:
    """torchvision's box when no try fits: the whole image, clipped to the ratio range, centred
    (``(top, left, height, width)``, each broadcastable to the samples)."""
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    w = torch.where(wide, torch.round(height * max(ratio)), width)
    h = torch.where(narrow, torch.round(width / min(ratio)), height)
    return torch.div(height - h, 2, rounding_mode="floor"), torch.div(width - w, 2, rounding_mode="floor"), h, w


def _filter(x: Tensor, interpolation: Interpolation) -> Tensor:
    """PIL's antialiasing kernels: triangle (bilinear) or Keys cubic with a = -0.5 (bicubic)."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1.0 - x).clamp_min(0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, interpolation: Interpolation) -> Tensor:
    """Per-sample 1-d resampling matrices from crops ``[start, start + length)`` to ``out_size``.

    Args:
        start, length: ``long[n]`` crop offsets and lengths along one axis.
        in_size: the source length along that axis.
        out_size: the output length.
        interpolation: ``bilinear`` or ``bicubic``.

    Returns:
        ``float32[n, out_size, in_size]``; row ``o`` holds the normalised weights of output pixel
        ``o`` over the source pixels (zero outside the crop and outside the kernel's window).
    """
    support = 1.0 if interpolation == "bilinear" else 2.0
    length = length.to(torch.float64).view(-1, 1, 1)
    scale = length / out_size
    stretch = scale.clamp_min(1.0)
    centre = (torch.arange(out_size, dtype=torch.float64, device=start.device).view(1, -1, 1) + 0.5) * scale
    pos = torch.arange(in_size, dtype=torch.float64, device=start.device).view(1, 1, -1) - start.view(-1, 1, 1)
    lo = torch.trunc(centre - support * stretch + 0.5).clamp_min(0.0)
    hi = torch.minimum(torch.trunc(centre + support * stretch + 0.5), length)
    weights = _filter((pos - centre + 0.5) / stretch, interpolation) * ((pos >= lo) & (pos < hi))
    return (weights / weights.sum(dim=-1, keepdim=True)).to(torch.float32)


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: int,
    interpolation: Interpolation = "bicubic",
    flip: Tensor | None = None,
    quantize: bool = False,
) -> Tensor:
    """Crop each image to its box, resize to ``size x size`` (antialiased) and optionally flip.

    Args:
        images: ``uint8`` or float ``[n, C, H, W]``; uint8 is read as ``value / 255``.
        boxes: ``long[n, 4]`` ``(top, left, height, width)`` inside the image.
        size: output side.
        interpolation: ``bilinear`` or ``bicubic``.
        flip: optional ``bool[n]``, True = mirror horizontally after resizing.
        quantize: resample as PIL and torchvision's uint8 path do, so that targets such as HOG see
            the loader path's (and the official code's) 8-bit crops: the horizontal pass first, each
            pass's result rounded to the 256 levels of 8-bit pixels and clipped (``k / 255`` out).

    Returns:
        ``float32[n, C, size, size]`` in [0, 1] (bicubic overshoot clamped).
    """
    n, _, height, width = images.shape
    rows = resize_weights(boxes[:, 0], boxes[:, 2], height, size, interpolation)  # [n, size, H]
    cols = resize_weights(boxes[:, 1], boxes[:, 3], width, size, interpolation)  # [n, size, W]
    if flip is not None:
        cols = torch.where(flip.view(n, 1, 1), cols.flip(1), cols)
    x = images.to(torch.float32)
    if quantize:
        levels = x if images.dtype == torch.uint8 else (x * 255.0).round_()
        wide = (levels @ cols.transpose(1, 2).unsqueeze(1)).round_().clamp_(0.0, 255.0)
        return (rows.unsqueeze(1) @ wide).round_().clamp_(0.0, 255.0).div_(255.0)
    if images.dtype == torch.uint8:
        rows = rows / 255.0
    out = rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)
    return out.clamp_(0.0, 1.0)


def pad_batch(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack images of different sizes ``[C, H_i, W_i]`` into one zero-padded ``[n, C, H, W]`` batch.

    Returns:
        The batch and ``long[n, 2]`` sizes ``(H_i, W_i)``, so that crop boxes can be drawn inside each
        image (``random_resized_crop_params`` with per-sample sizes): ``resized_crop`` weighs only the
        pixels inside a box, so the padding never reaches the output.
    """
    sizes = torch.tensor([image.shape[-2:] for image in images], device=images[0].device)
    side_h, side_w = (int(v) for v in sizes.max(dim=0).values)
    padded = [F.pad(image, (0, side_w - image.shape[-1], 0, side_h - image.shape[-2])) for image in images]
    return torch.stack(padded), sizes
