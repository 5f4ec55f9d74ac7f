"""Masking patterns as random per-token priority scores, and exact-count selection.

A pattern never decides *how many* tokens are masked: it only draws a score per token
(``float[B, H*W]``, row-major over the patch grid, lower = masked first). The caller turns
scores into masks with :func:`select_lowest`, which enforces exact counts. This split lets
one disjoint-masking algorithm (``dmjd.masking.disjoint``) serve every pattern, and lets a
view draw part of its mask from one token subset and the rest from another by the same
scores.

New patterns are added to :data:`PATTERNS` with :func:`register_pattern`. A pattern is a
callable ``fn(batch_size, grid_size, *, generator, device, **kwargs) -> float[B, H*W]``.
A pattern that accepts a ``block_size`` keyword is *cell-based*: its scores must be constant
on each ``block_size x block_size`` cell, and the selector then works on whole cells.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

PatternFn = Callable[..., Tensor]

PATTERNS: dict[str, PatternFn] = {}
"""Registry of masking patterns by name (``"random"``, ``"block"``, ``"rectangle"``)."""


def register_pattern(name: str) -> Callable[[PatternFn], PatternFn]:
    """Decorator that adds a score function to :data:`PATTERNS` under ``name``."""

    def add(fn: PatternFn) -> PatternFn:
        if name in PATTERNS:
            raise ValueError(f"masking pattern {name!r} is already registered")
        PATTERNS[name] = fn
        return fn

    return add


def _check_grid(grid_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in grid_size)
    if height < 1 or width < 1:
        raise ValueError(f"grid_size must be two integers >= 1, got {tuple(grid_size)}")
    return height, width


@register_pattern("random")
def random_scores(
    batch_size: int,
    grid_size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform noise per token (MAE's random masking).

    Returns:
        ``float[B, H*W]`` i.i.d. U[0, 1) scores.
    """
    height, width = _check_grid(grid_size)
    return torch.rand(batch_size, height * width, generator=generator, device=device)


@register_pattern("block")
def block_scores(
    batch_size: int,
    grid_size: tuple[int, int],
    *,
    block_size: int = 2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """SimMIM-style block masking: one noise value per ``s x s`` cell of tokens.

    Every token of a cell gets its cell's score, so whole cells are masked together
    (SimMIM masks 32 px cells, i.e. 2x2 cells of 16 px patches).

    Returns:
        ``float[B, H*W]`` scores, constant on each cell.

    Raises:
        ValueError: if ``block_size`` < 1 or does not divide both grid sides.
    """
    height, width = _check_grid(grid_size)
    if block_size < 1 or height % block_size or width % block_size:
        raise ValueError(f"block_size={block_size} must be >= 1 and divide the token grid {height}x{width}")
    cells_h, cells_w = height // block_size, width // block_size
    noise = torch.rand(batch_size, cells_h, 1, cells_w, 1, generator=generator, device=device)
    noise = noise.expand(batch_size, cells_h, block_size, cells_w, block_size)
    return noise.reshape(batch_size, height * width)


@register_pattern("rectangle")
def rectangle_scores(
    batch_size: int,
    grid_size: tuple[int, int],
    *,
    num_rects: int = 16,
    min_tokens: int = 4,
    max_area: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """BEiT-style random rectangles, sampled for the whole batch at once.

    Each image gets ``num_rects`` rectangles with area ~ U(min_tokens, max_area) tokens and
    log-uniform aspect ratio in [0.3, 1/0.3], clipped to the grid, at a uniform position.
    A token's score is the index of the first rectangle covering it plus U[0, 1) tie-break
    noise; tokens covered by no rectangle score ``num_rects`` + noise. Lower scores mask
    first, so rectangles are masked in order. Unlike BEiT there is no retry loop: the exact
    per-view count is enforced by the selector, so the last rectangle used can be partial
    (a random subset of it) and uncovered tokens fill in randomly if rectangles run out.

    Args:
        num_rects: rectangles per image (``R``).
        min_tokens: smallest rectangle area in tokens (BEiT uses 16 on 14x14; clamped to
            ``max_area``).
        max_area: largest rectangle area in tokens; ``None`` means 40 % of the grid
            (BEiT's 75 of 196).

    Returns:
        ``float[B, H*W]`` scores in [0, num_rects + 1).
    """
    height, width = _check_grid(grid_size)
    num_tokens = height * width
    if max_area is None:
        max_area = max(1, round(0.4 * num_tokens))
    if num_rects < 1 or min_tokens < 1 or max_area < 1:
        raise ValueError(f"num_rects, min_tokens and max_area must be >= 1, got {num_rects}, {min_tokens}, {max_area}")
    low = min(min_tokens, max_area)
    draws = torch.rand(4, batch_size, num_rects, 1, generator=generator, device=device)
    area = low + (max_area - low) * draws[0]
    log_aspect = math.log(0.3) + 2.0 * math.log(1 / 0.3) * draws[1]
    rect_h = torch.sqrt(area * log_aspect.exp()).round().clamp(1, height)
    rect_w = torch.sqrt(area / log_aspect.exp()).round().clamp(1, width)
    top = (draws[2] * (height - rect_h + 1)).floor()
    left = (draws[3] * (width - rect_w + 1)).floor()
    rows = torch.arange(height, device=area.device, dtype=area.dtype)
    cols = torch.arange(width, device=area.device, dtype=area.dtype)
    in_rows = (rows >= top) & (rows < top + rect_h)  # [B, R, H]
    in_cols = (cols >= left) & (cols < left + rect_w)  # [B, R, W]
    covered = (in_rows[..., :, None] & in_cols[..., None, :]).flatten(2)  # [B, R, L]
    rank = torch.arange(num_rects, device=area.device).view(1, num_rects, 1)
    first = torch.where(covered, rank, num_rects).amin(dim=1)  # [B, L]
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    return first.to(noise.dtype) + noise


def select_lowest(scores: Tensor, eligible: Tensor, count: int) -> Tensor:
    """Mark exactly ``count`` eligible entries per row, those with the lowest scores.

    Args:
        scores: ``float[B, L]`` priority scores (finite).
        eligible: ``bool[B, L]``; every row must hold at least ``count`` True entries
            (not checked, to avoid a device sync).
        count: entries to select per row.

    Returns:
        ``bool[B, L]`` with exactly ``count`` True per row, all inside ``eligible``.
    """
    selected = torch.zeros_like(eligible)
    if count == 0:
        return selected
    order = scores.masked_fill(~eligible, math.inf).argsort(dim=1)
    return selected.scatter_(1, order[:, :count], True)
