"""Figures of what a model does: an image, its K disjoint masked views and the reconstruction per view.

Pixel targets are drawn as images. With ``norm_pix`` the model predicts each masked patch
normalised by its own mean and variance, which it cannot know; the figure un-normalises the
prediction with the TRUE patch statistics and says so in its title. HOG targets are drawn as one
glyph per cell: a line along the edge of the cell's dominant orientation, brighter the stronger it
is; panels are sized so that every cell spans at least ``HOG_CELL_PX`` pixels.

The images are a seeded random sample of the test split, drawn round-robin across classes when
the data set has labels (``pick_images``), so a class-sorted folder still shows several classes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection
from torch import Tensor, nn

from dmjd.data import DataError, build_dataset
from dmjd.data.base import Transform
from dmjd.eval.features import dataset_labels
from dmjd.eval.plot import save_figure
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.targets import HOGTarget, PixelTarget, Target

DPI = 110
PANEL_INCHES = 1.4  # the smallest panel side
HOG_CELL_PX = 12  # the fewest pixels a HOG cell spans in a panel, so that its glyph reads as a line


def pick_images(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` random items (all when fewer), taking the classes in turn.

    Items are shuffled with ``seed``; the k-th pick of every class comes before the (k+1)-th of
    any, the classes in a seeded random order, so ``n >= C`` picks show all ``C`` classes and
    unlabelled data (labels -1: one class) gives a plain random sample.

    Args:
        labels: int ``[N]`` class of each item (-1: none).

    Returns:
        int64 ``[min(n, N)]`` item indices, in drawing order.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    shuffled = np.asarray(labels)[order]
    classes, cls = np.unique(shuffled, return_inverse=True)
    by_class = np.argsort(cls, kind="stable")
    first = np.searchsorted(cls[by_class], cls[by_class])  # where each item's class starts
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - first  # the item's turn within its class
    turn = rng.permutation(len(classes))[cls]
    return order[np.lexsort((turn, rank))[:n]].astype(np.int64)


@torch.no_grad()
def predict_views(
    model: nn.Module, target: Target, normalize: nn.Module, images: Tensor, views: MaskedViews
) -> tuple[Tensor, Tensor]:
    """Targets ``[B, L, T]`` and per-view completions ``[B, K, L, T]``.

    A completion holds the model's prediction at the view's masked tokens and the target at its
    visible tokens, i.e. what the masked prediction branch reconstructs for that view.
    """
    targets = target(images)
    out = model(normalize(images), views)
    B, K, L = views.mask.shape
    full = targets.unsqueeze(1).expand(B, K, L, targets.shape[-1]).clone()
    idx = views.ids_masked.unsqueeze(-1).expand(-1, -1, -1, targets.shape[-1])
    full.scatter_(2, idx, out.pred_masked.float().view(B, K, -1, targets.shape[-1]))
    return targets, full


def drawn_images(name: str, path: str | None, transform: Transform, n: int, seed: int = 0, download: bool = False) -> Tensor:
    """``pick_images`` of a data set's test split, transformed: ``[min(n, N), C, H, W]``.

    A flat ImageFolder has no test split; its own images (what a run pre-trained on) are drawn instead.

    Raises:
        DataError: as ``dmjd.data.build_dataset``.
    """
    try:
        ds = build_dataset(name, "test", transform, path, download)
    except DataError:
        if name != "imagefolder":
            raise
        ds = build_dataset(name, "train", transform, path, download)
    return torch.stack([ds[int(i)][0] for i in pick_images(dataset_labels(ds), n, seed)])


def _masked_image(images: Tensor, mask: Tensor, patch_size: int, grid: tuple[int, int]) -> Tensor:
    """Images ``[B, C, H, W]`` with the patches of ``mask [B, L]`` greyed out."""
    m = mask.view(-1, 1, *grid).float()
    m = m.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return images * (1 - m) + 0.5 * m


def _pixels(tokens: Tensor, images: Tensor, target: Target, grid: tuple[int, int]) -> Tensor:
    """Per-patch pixel tokens ``[B, L, p*p*C]`` back to ``[0, 1]`` images (see ``PixelTarget.to_images``)."""
    if not isinstance(target, PixelTarget):
        raise TypeError(f"pixel reconstructions need a PixelTarget, got {type(target).__name__}")
    return target.to_images(tokens, images, grid)


def _show(ax: plt.Axes, image: Tensor, title: str) -> None:
    arr = image.permute(1, 2, 0).cpu().numpy()
    ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def hog_cells(tokens: Tensor, target: HOGTarget, grid: tuple[int, int]) -> np.ndarray:
    """HOG tokens ``[L, T]`` -> cell histograms ``[Hc, Wc, nbins]`` (channels averaged, min-shifted)."""
    c = target.patch_size // target.cell_size
    nb = target.nbins
    x = tokens.view(*grid, c, c, target.in_chans, nb).float().mean(-2)  # [gh, gw, c, c, nb]
    x = x.permute(0, 2, 1, 3, 4).reshape(grid[0] * c, grid[1] * c, nb)
    x = x - x.amin(-1, keepdim=True)
    return x.cpu().numpy()


def hog_glyphs(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One glyph per cell of ``hog_cells``: a line through the cell centre along the edge of its
    dominant orientation (perpendicular to the gradient of the strongest bin), 0.9 cells long.

    Returns:
        ``segments [Hc * Wc, 2, 2]`` (two ``(x, y)`` end points in cell units, y down, row-major
        cells) and ``strength [Hc * Wc]`` in [0, 1]: the dominant bin over the panel's largest.
    """
    hc, wc, nb = cells.shape
    theta = (cells.argmax(-1) + 0.5) * np.pi / nb + np.pi / 2
    half = 0.45 * np.stack([np.cos(theta), np.sin(theta)], -1)  # [Hc, Wc, 2]
    cy, cx = np.meshgrid(np.arange(hc) + 0.5, np.arange(wc) + 0.5, indexing="ij")
    centre = np.stack([cx, cy], -1)
    segments = np.stack([centre - half, centre + half], -2).reshape(-1, 2, 2)
    strength = cells.max(-1) / (cells.max() + 1e-12)
    return segments, strength.reshape(-1)


def draw_hog(ax: plt.Axes, cells: np.ndarray, title: str) -> None:
    """The ``hog_glyphs`` of ``cells [Hc, Wc, nbins]``, white on black, brightness = strength."""
    hc, wc, _ = cells.shape
    segments, strength = hog_glyphs(cells)
    colors = np.stack([strength] * 3 + [np.ones_like(strength)], -1)
    # matplotlib's stub wants a Sequence of segments; an [N, 2, 2] array is documented and works.
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.2, capstyle="round"))  # type: ignore[arg-type]
    ax.set_xlim(0, wc)
    ax.set_ylim(hc, 0)
    ax.set_facecolor("black")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def panel_inches(target: Target, grid: tuple[int, int]) -> float:
    """Side of a figure panel: ``PANEL_INCHES``, or larger for HOG so that every cell spans at least
    ``HOG_CELL_PX`` pixels at ``DPI``."""
    if not isinstance(target, HOGTarget):
        return PANEL_INCHES
    cells = max(grid) * target.patch_size // target.cell_size
    return max(PANEL_INCHES, cells * HOG_CELL_PX / DPI)


def describe_masking(masking: DisjointMasking) -> str:
    """The masking in words, e.g. ``K=2 disjoint views, 40 of 64 tokens masked each, block 2x2,
    64 of 64 predicted in all``."""
    total = masking.grid_size[0] * masking.grid_size[1]
    pattern = f"block {masking.block_size}x{masking.block_size}" if masking.pattern == "block" else masking.pattern
    if masking.num_views == 1:
        return f"K=1 view, {masking.num_masked} of {total} tokens masked, {pattern}"
    return (
        f"K={masking.num_views} disjoint views, {masking.num_masked} of {total} tokens masked each, {pattern}, "
        f"{masking.num_predicted} of {total} predicted in all"
    )


def can_draw(target: Target) -> bool:
    """Reconstructions can be drawn for pixel and HOG targets (not for token ids or teacher features)."""
    return isinstance(target, (PixelTarget, HOGTarget))


@torch.no_grad()
def save_reconstruction_figure(
    model: nn.Module,
    target: Target,
    masking: DisjointMasking,
    normalize: nn.Module,
    images: Tensor,
    path: str | Path,
    seed: int = 0,
) -> Path:
    """Draw each image, its K masked views and the per-view reconstructions into a PNG.

    Args:
        images: ``[B, C, H, W]`` in [0, 1] on the model's device (a few images).
        path: output PNG path.

    Raises:
        ValueError: a target that has no picture (BEiT token ids, teacher features).
    """
    if not can_draw(target):
        raise ValueError(f"cannot draw reconstructions of {type(target).__name__} targets; only pixels and HOG")
    was_training = model.training
    model.eval()
    device = images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    views = MaskedViews.from_mask(masking(images.shape[0], generator=gen, device=device))
    targets, full = predict_views(model, target, normalize, images, views)
    model.train(was_training)
    grid = masking.grid_size
    B, K = views.mask.shape[:2]
    is_hog = isinstance(target, HOGTarget)
    cols = 1 + K + K + (1 if is_hog else 0)
    side = panel_inches(target, grid)
    fig, axes = plt.subplots(B, cols, figsize=(side * cols, (side + 0.1) * B + 0.4), squeeze=False)
    for b in range(B):
        _show(axes[b, 0], images[b], "image")
        for k in range(K):
            masked = _masked_image(images[b : b + 1], views.mask[b, k : k + 1], target.patch_size, grid)[0]
            _show(axes[b, 1 + k], masked, f"view {k + 1} (masked)")
            if isinstance(target, HOGTarget):
                draw_hog(axes[b, 1 + K + k], hog_cells(full[b, k], target, grid), f"view {k + 1} HOG pred")
            else:
                recon = _pixels(full[b : b + 1, k], images[b : b + 1], target, grid)[0]
                _show(axes[b, 1 + K + k], recon, f"view {k + 1} recon")
        if isinstance(target, HOGTarget):
            draw_hog(axes[b, -1], hog_cells(targets[b], target, grid), "HOG target")
    note = (
        "norm-pix predictions un-normalised with the TRUE per-patch mean/std of the image"
        if getattr(target, "norm_pix", False)
        else (
            "HOG predicted at masked cells, target at visible cells; one line per cell along its dominant edge "
            "orientation, brighter = stronger"
            if is_hog
            else "raw pixel predictions"
        )
    )
    fig.suptitle(textwrap.fill(describe_masking(masking), 110) + f"\n{note}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=DPI)
