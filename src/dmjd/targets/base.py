"""Target base class, target registry and patch (un)folding helpers.

A target turns raw images ``float[B, C, H, W]`` in ``[0, 1]`` into one vector per patch,
``float[B, L, T]`` with ``L = (H / p) * (W / p)`` in row-major order of the patch grid. It is
computed once per image and shared by all K masked views; the losses gather the masked and
visible tokens from it.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "Target",
    "available_targets",
    "create_target",
    "patchify",
    "register_target",
    "unpatchify",
]

_REGISTRY: dict[str, type["Target"]] = {}
_TargetT = TypeVar("_TargetT", bound="Target")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches.

    Args:
        images: ``[B, C, H, W]``, any channel count; H and W divisible by ``patch_size``.
        patch_size: patch side ``p`` in pixels.

    Returns:
        ``[B, L, p*p*C]`` with patches in row-major grid order and each patch flattened in
        ``(row, column, channel)`` order, the layout MAE uses for pixel predictions.

    Raises:
        ValueError: if ``images`` is not 4-D or H, W are not multiples of ``patch_size``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if patch_size <= 0 or h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(tokens: Tensor, patch_size: int, grid_size: int | tuple[int, int], in_chans: int) -> Tensor:
    """Inverse of :func:`patchify`: reassemble patch vectors into images.

    Args:
        tokens: ``[B, L, p*p*C]`` laid out as :func:`patchify` produces them.
        patch_size: patch side ``p`` in pixels.
        grid_size: patch grid ``(gh, gw)`` (an int means a square grid), ``L = gh * gw``.
        in_chans: channel count ``C``.

    Returns:
        ``[B, C, gh*p, gw*p]``.

    Raises:
        ValueError: if the token shape does not match the grid, patch size and channels.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    expected = (gh * gw, patch_size * patch_size * in_chans)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
        raise ValueError(f"expected tokens [B, {expected[0]}, {expected[1]}], got shape {tuple(tokens.shape)}")
    b = tokens.shape[0]
    x = tokens.reshape(b, gh, gw, patch_size, patch_size, in_chans)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, in_chans, gh * patch_size, gw * patch_size)


class Target(nn.Module, ABC):
    """Per-patch learning target computed from raw images.

    Subclasses implement :meth:`encode`; :meth:`forward` validates the input, disables
    autocast and gradients and runs ``encode`` in float32, because targets are fixed inputs
    of the loss, not part of the model.

    Attributes:
        patch_size: patch side ``p`` in pixels (the encoder's patch size).
        in_chans: channel count ``C`` of the images.
        dim: target dimension ``T`` per patch.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        if patch_size <= 0 or in_chans <= 0:
            raise ValueError(f"patch_size and in_chans must be positive, got {patch_size} and {in_chans}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.dim = dim

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Map validated float32 images ``[B, C, H, W]`` in [0, 1] to ``[B, L, T]``."""

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Compute the target of every patch.

        Args:
            images: ``float[B, C, H, W]`` in ``[0, 1]`` (raw, not mean/std-normalised),
                H and W divisible by ``patch_size``.

        Returns:
            ``float32[B, L, T]`` aligned with the patch grid in row-major order.

        Raises:
            ValueError: on a wrong rank, channel count or image size.
        """
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {self.patch_size}")
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.encode(images.float())

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, in_chans={self.in_chans}, dim={self.dim}"


def register_target(name: str) -> Callable[[type[_TargetT]], type[_TargetT]]:
    """Class decorator that makes a :class:`Target` subclass available to :func:`create_target`.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(cls: type[_TargetT]) -> type[_TargetT]:
        if name in _REGISTRY:
            raise ValueError(f"target {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_targets() -> list[str]:
    """Names accepted by :func:`create_target`, sorted."""
    return sorted(_REGISTRY)


def create_target(name: str, **kwargs: Any) -> Target:
    """Build a registered target, e.g. ``create_target("hog", patch_size=16, in_chans=3)``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the options).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown target {name!r}; available: {', '.join(available_targets())}")
    return _REGISTRY[name](**kwargs)
