"""Image transforms: the pre-training recipe (RandomResizedCrop + flip) and the evaluation resize.

Transforms output float tensors in [0, 1] with the configured channel count; mean/std
normalisation happens on the device (`Normalize`), because targets such as HOG are computed on the
raw image while the encoder sees the normalised one.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2

from dmjd.data.decode import to_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)


def default_mean_std(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB, 0.5/0.5 for one channel."""
    return (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else (GRAY_MEAN, GRAY_STD)


class ToChannels:
    """Picklable transform: a PIL image decoded by ``to_mode`` to `in_chans` channels on `background`."""

    def __init__(self, in_chans: int, background: str = "white") -> None:
        self.in_chans, self.background = in_chans, background

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_mode(image, self.in_chans, self.background) if isinstance(image, Image.Image) else image

    def __repr__(self) -> str:
        return f"ToChannels(in_chans={self.in_chans}, background={self.background!r})"


def pretrain_transform(
    img_size: int,
    in_chans: int,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
    interpolation: str = "bicubic",
    background: str = "white",
) -> v2.Compose:
    """RandomResizedCrop (bicubic or bilinear, antialiased) + horizontal flip -> float[C, H, W] in [0, 1]
    (decoded by ``to_mode`` on ``background``)."""
    mode = v2.InterpolationMode(interpolation)
    steps: list = [
        ToChannels(in_chans, background),
        v2.PILToTensor(),
        v2.RandomResizedCrop(img_size, scale=crop_scale, interpolation=mode, antialias=True),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Lambda(_clamp01)]
    return v2.Compose(steps)


def eval_transform(img_size: int, in_chans: int, crop_pct: float = 1.0, background: str = "white") -> v2.Compose:
    """Resize the short side to img_size/crop_pct and center-crop img_size -> float in [0, 1] (decoded by
    ``to_mode`` on ``background``)."""
    resize = int(round(img_size / crop_pct))
    return v2.Compose(
        [
            ToChannels(in_chans, background),
            v2.PILToTensor(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Lambda(_clamp01),
        ]
    )


def _clamp01(x: Tensor) -> Tensor:
    """Bicubic resampling overshoots slightly; keep images in [0, 1]."""
    return x.clamp_(0.0, 1.0)


class Normalize(nn.Module):
    """(x - mean) / std on the device, for images of shape [B, C, H, W] in [0, 1]."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
