"""Pixel target with optional per-patch normalisation (MAE's ``norm_pix_loss``)."""

from collections.abc import Sequence

import torch
from torch import Tensor

from dmjd.targets.base import Target, patchify, register_target, unpatchify

__all__ = ["PixelTarget"]


def _moments(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance over the last dim of ``[B, L, D]`` -> two ``[B, L, 1]``."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


def _channel_stats(values: Sequence[float] | None, in_chans: int, name: str) -> Tensor | None:
    """Per-channel statistics as a ``[1, C, 1, 1]`` tensor, None when not given."""
    if values is None:
        return None
    if len(values) != in_chans:
        raise ValueError(f"{name} has {len(values)} values for {in_chans} channels")
    return torch.tensor([float(v) for v in values]).view(1, in_chans, 1, 1)


@register_target("pixels")
class PixelTarget(Target):
    """Patch pixels of the model's input image, each patch optionally standardised.

    With ``mean`` and ``std`` (what :func:`dmjd.engine.builders.build_target` passes: the
    normalisation of the model's input) the pixels are those of ``(images - mean) / std``, the
    tensor MAE's and ConvMAE's ``forward_loss`` receive as ``imgs``; without them, the ``[0, 1]``
    images as given. With ``norm_pix`` a patch ``x`` of all its ``p*p*C`` values (channels
    together) becomes ``(x - mean(x)) / sqrt(var(x) + eps)`` with the unbiased variance
    (``torch.var``), eps 1e-6. With ``mean``/``std`` this is exactly MAE's ``norm_pix_loss``
    target; for RGB it differs from the one of ``[0, 1]`` pixels, because the per-channel affine
    map changes the statistics taken over the three channels together. ``T = p*p*C`` in
    :func:`patchify` order. :meth:`to_images` maps (normalised) predictions back to pictures.

    Args:
        patch_size: patch side ``p`` in pixels.
        in_chans: channel count ``C``.
        norm_pix: standardise each patch (enhances local contrast, as in MAE).
        eps: added to the variance before the square root.
        mean, std: per-channel normalisation applied to the ``[0, 1]`` images first; both or
            neither.

    Raises:
        ValueError: if ``norm_pix`` is set for one-value patches (no variance to divide by), or
            ``mean``/``std`` are incomplete, of the wrong length, or ``std`` is not positive.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        norm_pix: bool = True,
        eps: float = 1e-6,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(patch_size, in_chans, dim=patch_size * patch_size * in_chans)
        if norm_pix and self.dim < 2:
            raise ValueError("norm_pix needs at least two values per patch")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the model's input normalisation) or neither")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.norm_pix = norm_pix
        self.eps = eps
        self.mean: Tensor | None
        self.std: Tensor | None
        self.register_buffer("mean", _channel_stats(mean, in_chans, "mean"), persistent=False)
        self.register_buffer("std", _channel_stats(std, in_chans, "std"), persistent=False)

    def input_pixels(self, images: Tensor) -> Tensor:
        """The image the target is taken from: ``(images - mean) / std``, or ``images``."""
        if self.mean is None or self.std is None:
            return images
        return (images - self.mean.to(images)) / self.std.to(images)

    def patch_stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per-patch mean and (unbiased) variance used by the normalisation.

        A visualiser un-normalises a prediction with ``pred * (var + eps).sqrt() + mean``;
        honest reconstructions therefore borrow the statistics of the true patch.

        Args:
            images: ``[B, C, H, W]`` in ``[0, 1]``.

        Returns:
            ``(mean, var)``, each ``[B, L, 1]``, of the patches of :meth:`input_pixels`.
        """
        return _moments(patchify(self.input_pixels(images.float()), self.patch_size))

    def to_images(self, tokens: Tensor, images: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
        """Predicted tokens back to ``[0, 1]`` pictures (clamped), inverting every step.

        Norm-pix tokens are un-normalised with the TRUE per-patch statistics of ``images``
        (the model cannot know them), then the mean/std normalisation is undone.

        Args:
            tokens: ``[B, L, p*p*C]`` predictions or targets.
            images: ``[B, C, H, W]`` the ``[0, 1]`` images they belong to.
            grid_size: patch grid ``(gh, gw)`` (an int means square).

        Returns:
            ``[B, C, gh*p, gw*p]`` in ``[0, 1]``.
        """
        tokens = tokens.float()
        if self.norm_pix:
            mean, var = self.patch_stats(images)
            tokens = tokens * (var + self.eps).sqrt() + mean
        pixels = unpatchify(tokens, self.patch_size, grid_size, self.in_chans)
        if self.mean is not None and self.std is not None:
            pixels = pixels * self.std.to(pixels) + self.mean.to(pixels)
        return pixels.clamp(0, 1)

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, L, p*p*C]``, normalised per patch if ``norm_pix``."""
        patches = patchify(self.input_pixels(images), self.patch_size)
        if not self.norm_pix:
            return patches
        mean, var = _moments(patches)
        return (patches - mean) / (var + self.eps).sqrt()

    def extra_repr(self) -> str:
        space = "mean/std-normalised" if self.mean is not None else "[0, 1]"
        return f"{super().extra_repr()}, norm_pix={self.norm_pix}, eps={self.eps}, pixels={space}"
