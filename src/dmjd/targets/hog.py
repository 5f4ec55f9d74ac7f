"""Histogram-of-oriented-gradients target, in the MaskFeat and the official DMJD flavours.

Both variants share the pipeline: per-channel gradients (x to the right, y downwards),
unsigned orientation hard-binned into ``nbins`` bins by ``floor(atan2(a, b) / pi * nbins) mod
nbins``, gradient magnitudes accumulated per bin and pooled over ``cell x cell`` cells, then a
per-(cell, channel) normalisation of the histogram. Each variant reproduces its reference:

========================  ====================================  ================================
step                      ``"maskfeat"`` (SlowFast HOGLayerC)    ``"dmjd"`` (official DMJD code)
========================  ====================================  ================================
gradient                  3x3 Sobel, reflect padding, SlowFast  [-1, 0, 1] (right minus left,
                          signs (gx: left minus right, gy: top  bottom minus top), zero at the
                          minus bottom)                         border
orientation               ``atan2(gx, gy)`` (from the y axis)   ``atan2(gy, gx)``
magnitude weighting       none (SlowFast's MaskFeat); optional  none
                          Gaussian window (mmpretrain: 16 px)
cell pooling              sum                                   mean (sum / cell^2)
histogram normalisation   L2 over the bins (eps 1e-12)          LayerNorm over the bins, no
                                                                affine (eps 1e-5)
========================  ====================================  ================================

SlowFast's argument order measures the angle from the y axis: a gradient at the conventional
angle theta lands in bin ``floor(((90 - theta) mod 180) / 20)`` (9 bins), i.e. the conventional
bins mirrored and shifted by half a bin (5 degrees: bin 4, 15 degrees: bin 3; conventionally
both bin 0). The ``maskfeat`` variant keeps SlowFast's order and signs, so its values equal
HOGLayerC's (up to the order of the dims, below).

Gradients are taken on the 0..255 intensity scale in both variants (as the official code
does): an 8-bit image loaded as ``k / 255`` maps back to exact integers, so its gradients are
exact and an axis-aligned edge always lands in the same bin instead of flipping between the
first and the last bin on a +-1e-7 rounding residue. Both normalisations are scale-invariant,
so only their eps sees the scale.

"Zero at the border" means the first and last row (column) get a zero vertical (horizontal)
gradient, as in the official code, instead of a spurious edge against zero padding. Both
normalisations are invariant to a per-channel affine change of intensity with a positive
scale (up to eps), so computing MaskFeat's HOG on [0, 1] images equals SlowFast computing it on
the mean/std-normalised input.

Within a patch the ``T = (p / cell)^2 * C * nbins`` values are ordered
``(cell_y, cell_x, channel, bin)``, so each cell's histogram of one channel is contiguous.
(The official DMJD code orders ``(cell_y, cell_x, bin, channel)``, SlowFast's MaskFeat
``(channel, bin, cell_y, cell_x)``; the losses do not depend on it.)
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dmjd.targets.base import Target, register_target

__all__ = ["HOGTarget"]

HOGVariant = Literal["dmjd", "maskfeat"]
_L2_EPS = 1e-12
_LAYER_NORM_EPS = 1e-5


def _differences(images: Tensor) -> tuple[Tensor, Tensor]:
    """Valid [-1, 0, 1] differences of ``[..., H, W]``.

    Returns:
        ``(dx [..., H, W-2], dy [..., H-2, W])``: right minus left, bottom minus top.
    """
    return images[..., :, 2:] - images[..., :, :-2], images[..., 2:, :] - images[..., :-2, :]


def _central_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """[-1, 0, 1] gradients of ``[B, C, H, W]``, zero on the border columns (gx) / rows (gy)."""
    dx, dy = _differences(images)
    return F.pad(dx, (1, 1, 0, 0)), F.pad(dy, (0, 0, 1, 1))


def _sobel_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 Sobel gradients of ``[B, C, H, W]`` with reflect padding, each ``[B, C, H, W]``.

    Computed separably (difference, then [1, 2, 1] smoothing across it) rather than as one
    3x3 convolution: equal pixels then cancel exactly, so a reflected border row or column
    has an exactly zero normal gradient instead of a rounding residue whose sign would flip
    an edge along the border between the first and the last orientation bin.
    """
    dx, dy = _differences(F.pad(images, (1, 1, 1, 1), mode="reflect"))
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]
    return gx, gy


def _orientation_bins(numerator: Tensor, denominator: Tensor, nbins: int) -> Tensor:
    """Unsigned bin ``floor(atan2(numerator, denominator) / pi * nbins) mod nbins`` in ``[0, nbins)``.

    The official DMJD code passes ``(gy, gx)``; SlowFast's HOGLayerC passes ``(gx, gy)``.
    """
    return torch.floor(torch.atan2(numerator, denominator) / math.pi * nbins).long().remainder(nbins)


def _gaussian_window(size: int) -> Tensor:
    """``[size, size]`` separable Gaussian with std ``size / 2``, centred, peak near 1."""
    n = torch.arange(size, dtype=torch.float32)
    g = torch.exp(-0.5 * ((n - n.mean()) / (size / 2)) ** 2)
    return g[:, None] * g[None, :]


@register_target("hog")
class HOGTarget(Target):
    """HOG features per patch (MaskFeat's target, and the one of the official DMJD code).

    Args:
        patch_size: patch side ``p`` in pixels; must be a multiple of ``cell_size``.
        in_chans: channel count ``C`` (1 for grey images, 3 for RGB; any count works).
        variant: ``"dmjd"`` or ``"maskfeat"``, see the module docstring.
        cell_size: cell side in pixels (8 in both papers).
        nbins: orientation bins over [0, pi) (9 in both papers).
        gaussian_window: ``"maskfeat"`` only: side in pixels of a Gaussian (std = side / 2)
            that weights the magnitudes, tiled over the image; must divide ``patch_size``.
            0 disables it, as SlowFast's MaskFeat builds HOGLayerC; mmpretrain's
            HOGGenerator uses 16 with 16-pixel patches.

    Raises:
        ValueError: on an unknown variant or inconsistent sizes.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        variant: HOGVariant = "dmjd",
        cell_size: int = 8,
        nbins: int = 9,
        gaussian_window: int = 0,
    ) -> None:
        if variant not in ("dmjd", "maskfeat"):
            raise ValueError(f"unknown HOG variant {variant!r}; use 'dmjd' or 'maskfeat'")
        if cell_size <= 0 or nbins <= 0 or patch_size % cell_size:
            raise ValueError(
                f"patch_size {patch_size} must be a multiple of a positive cell_size "
                f"(got {cell_size}) and nbins must be positive (got {nbins})"
            )
        if gaussian_window < 0 or (gaussian_window and patch_size % gaussian_window):
            raise ValueError(f"gaussian_window {gaussian_window} must be 0 or divide {patch_size}")
        if gaussian_window and variant == "dmjd":
            raise ValueError("the 'dmjd' HOG variant has no Gaussian window")
        cells_per_side = patch_size // cell_size
        super().__init__(patch_size, in_chans, dim=cells_per_side**2 * in_chans * nbins)
        self.variant = variant
        self.cell_size = cell_size
        self.nbins = nbins
        self.gaussian_window = gaussian_window
        self.window: Tensor | None
        self.register_buffer(
            "window",
            _gaussian_window(gaussian_window) if gaussian_window else None,
            persistent=False,
        )

    def cell_histograms(self, images: Tensor) -> Tensor:
        """Normalised orientation histogram of every cell and channel.

        Args:
            images: float32 ``[B, C, H, W]`` in [0, 1], H and W multiples of ``cell_size``.
                Both variants work on ``images * 255``.

        Returns:
            ``[B, C, nbins, H / cell, W / cell]``.
        """
        intensities = images * 255.0
        if self.variant == "dmjd":
            gx, gy = _central_gradients(intensities)
            bins = _orientation_bins(gy, gx, self.nbins)
        else:
            gx, gy = _sobel_gradients(intensities)
            gx, gy = -gx, -gy  # SlowFast's Sobel kernels: left minus right, top minus bottom
            bins = _orientation_bins(gx, gy, self.nbins)
        _, c, h, w = images.shape
        magnitude = torch.hypot(gx, gy)
        if self.window is not None:
            tiles = (h // self.gaussian_window, w // self.gaussian_window)
            magnitude = magnitude * self.window.to(magnitude.dtype).repeat(tiles)
        # One-hot by comparison rather than scatter_add_: deterministic on every device.
        bin_ids = torch.arange(self.nbins, device=images.device).view(1, 1, -1, 1, 1)
        one_hot = bins.unsqueeze(2) == bin_ids
        hist = one_hot * magnitude.unsqueeze(2)  # [B, C, nbins, H, W]
        cells = F.avg_pool2d(hist.flatten(1, 2), self.cell_size).unflatten(1, (c, self.nbins))
        if self.variant == "maskfeat":
            return F.normalize(cells * self.cell_size**2, dim=2, eps=_L2_EPS)
        normed = F.layer_norm(cells.movedim(2, -1), (self.nbins,), eps=_LAYER_NORM_EPS)
        return normed.movedim(-1, 2)

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, L, T]``, ``(cell_y, cell_x, channel, bin)`` per patch."""
        cells = self.cell_histograms(images)
        b, c, nbins, hc, wc = cells.shape
        k = self.patch_size // self.cell_size
        gh, gw = hc // k, wc // k
        x = cells.reshape(b, c, nbins, gh, k, gw, k).permute(0, 3, 5, 4, 6, 1, 2)
        return x.reshape(b, gh * gw, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, variant={self.variant!r}, cell_size={self.cell_size}, "
            f"nbins={self.nbins}, gaussian_window={self.gaussian_window}"
        )
