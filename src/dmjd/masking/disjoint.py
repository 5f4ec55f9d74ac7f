"""Disjoint masking (DM): K masked views per image with a raised prediction rate (Eq. 3)."""

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dmjd.masking.patterns import PATTERNS, select_lowest

_EPS = 1e-6


def _masked_units(units: int, ratio: float) -> int:
    """Units masked at ``ratio``: all minus MAE's keep count ``int(u * (1 - ratio))``."""
    return units - int(units * (1.0 - ratio) + _EPS)


def _token_counter(block_size: int) -> Callable[[int], str]:
    """``count -> "N tokens"`` for unit counts, adding ``(n cells of s x s)`` for cell patterns."""

    def tokens(units: int) -> str:
        if block_size == 1:
            return f"{units} tokens"
        return f"{units * block_size**2} tokens ({units} {block_size}x{block_size} cells)"

    return tokens


def _visible_in_draw_order(scores: Tensor, view: Tensor, union: Tensor, num_visible: int) -> Tensor:
    """``long[B, num_visible]``: a view's visible units, those outside ``union`` first, then those
    inside it, each by ascending score (two stable sorts: by score, then by group)."""
    by_score = scores.argsort(dim=1, stable=True)
    group = (2 * view.long() + union.long()).gather(1, by_score)  # 0 new visible, 1 old visible, 2-3 masked
    return by_score.gather(1, group.argsort(dim=1, stable=True))[:, :num_visible]


def _cell_tokens(cells: Tensor, cells_w: int, block_size: int) -> Tensor:
    """Token ids of ``s x s`` cells ``long[..., n]`` on a grid ``cells_w`` cells wide, ``[..., s*s*n]``:
    every cell's token ``(0, 0)`` in the given cell order, then every cell's ``(0, 1)``, and so on."""
    width = cells_w * block_size
    offsets = torch.arange(block_size, device=cells.device)
    within = (offsets.view(-1, 1) * width + offsets.view(1, -1)).flatten()  # [s*s] row-major in the cell
    corner = (cells // cells_w) * block_size * width + (cells % cells_w) * block_size
    return (corner.unsqueeze(-2) + within.view(-1, 1)).flatten(-2)


class DisjointMasking:
    """Sample ``K`` masked views per image that share a corruption rate and jointly cover
    a larger prediction rate (paper Sec. III-B, Eq. 3).

    Views are drawn sequentially. View 1 masks ``n_corr`` units by the pattern. View
    ``k >= 2`` splits the units into never-masked ones (outside the union of views
    ``1..k-1``) and previously-masked ones, and masks the ``new_k`` never-masked and the
    ``n_corr - new_k`` previously-masked units with the lowest fresh pattern scores. The
    ``new_k`` sum to ``n_pred - n_corr`` and are split as evenly as possible (earlier views
    take the remainder), so every view adds at least one never-masked unit while any remain
    (the disjoint regulation) and the union of the K views holds exactly ``n_pred`` units.

    Counting: a *unit* is a ``block_size x block_size`` cell for cell-based patterns
    (``"block"``) and a token otherwise; with ``u`` units,
    ``n_corr = u - int(u * (1 - mask_ratio) + 1e-6)`` (MAE's keep count: 147 of 196 tokens
    at 0.75, 30 of 49 cells at 0.6) and ``n_pred = max(n_corr,
    u - int(u * (1 - pred_ratio) + 1e-6))``; ``pred_ratio=None`` means the largest reachable
    ``n_pred = min(u, K * n_corr)``. Cell-based patterns select on the cell grid and each
    selected cell masks its ``s*s`` tokens, so ties between scores can never split a cell.

    Args:
        grid_size: token grid ``(H, W)``.
        mask_ratio: corruption rate ``m_corr`` of every view, in (0, 1).
        num_views: number of masked views ``K`` per image.
        pred_ratio: prediction rate ``m_pred`` (fraction of tokens in the union of the
            views), in [mask_ratio, 1]; ``None`` for the maximum reachable.
        pattern: name in :data:`dmjd.masking.patterns.PATTERNS`.
        block_size: cell side ``s`` in tokens for cell-based patterns (must be 1 otherwise).
        **pattern_kwargs: extra keywords for the pattern (e.g. ``num_rects`` for
            ``"rectangle"``).

    Raises:
        ValueError: for an impossible or inconsistent configuration (one-line message naming
            the parameter and the allowed values).
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        mask_ratio: float,
        num_views: int = 1,
        pred_ratio: float | None = None,
        pattern: str = "random",
        block_size: int = 1,
        **pattern_kwargs: Any,
    ) -> None:
        height, width = (int(v) for v in grid_size)
        if height < 1 or width < 1:
            raise ValueError(f"grid_size must be two integers >= 1, got {tuple(grid_size)}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if num_views < 1:
            raise ValueError(f"num_views must be an integer >= 1, got {num_views}")
        if pred_ratio is not None and not (0.0 < pred_ratio <= 1.0 and pred_ratio >= mask_ratio):
            raise ValueError(f"pred_ratio must be None or in [mask_ratio={mask_ratio}, 1], got {pred_ratio}")
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {sorted(PATTERNS)}, got {pattern!r}")
        fn = PATTERNS[pattern]
        cell_based = "block_size" in inspect.signature(fn).parameters
        if block_size < 1 or height % block_size or width % block_size:
            raise ValueError(f"block_size={block_size} must be >= 1 and divide the token grid {height}x{width}")
        if block_size != 1 and not cell_based:
            raise ValueError(
                f"block_size={block_size} needs a cell-based pattern such as 'block', got pattern={pattern!r}; use block_size=1"
            )
        if cell_based:
            pattern_kwargs = {**pattern_kwargs, "block_size": block_size}

        units = (height // block_size) * (width // block_size)
        tokens = _token_counter(block_size)
        n_corr = _masked_units(units, mask_ratio)
        if n_corr in (0, units):
            raise ValueError(
                f"mask_ratio={mask_ratio} masks {tokens(n_corr)} of {tokens(units)}; it must leave "
                "at least one masked and one visible " + ("cell" if block_size > 1 else "token")
            )
        if pred_ratio is None:
            n_pred = min(units, num_views * n_corr)
        else:
            n_pred = max(n_corr, _masked_units(units, pred_ratio))
        if n_pred > num_views * n_corr:
            raise ValueError(
                f"pred_ratio={pred_ratio} needs {tokens(n_pred)} of {tokens(units)} but num_views="
                f"{num_views} views of {tokens(n_corr)} cover at most {tokens(num_views * n_corr)}; "
                "raise num_views or lower pred_ratio"
            )
        extra = n_pred - n_corr
        if n_pred < units and extra < num_views - 1:
            raise ValueError(
                f"pred_ratio={pred_ratio} adds only {tokens(extra)} over view 1 for {num_views - 1} "
                "later views, each must add new ones (disjoint regulation); raise pred_ratio or "
                "lower num_views"
            )

        self.grid_size = (height, width)
        self.mask_ratio = mask_ratio
        self.num_views = num_views
        self.pred_ratio = pred_ratio
        self.pattern = pattern
        self.block_size = block_size
        self.pattern_kwargs = pattern_kwargs
        self._score_fn = fn
        self._n_corr = n_corr
        self._n_pred = n_pred
        later = max(num_views - 1, 1)
        self._new_counts = [n_corr] + [extra // later + (1 if k < extra % later else 0) for k in range(num_views - 1)]
        # Dry run on a private generator: bad pattern keywords fail here, not in training.
        fn(1, self.grid_size, generator=torch.Generator(), **pattern_kwargs)

    @property
    def num_masked(self) -> int:
        """Tokens masked in every view (``m_corr * L`` after rounding)."""
        return self._n_corr * self.block_size**2

    @property
    def num_predicted(self) -> int:
        """Tokens in the union of the K views, the same for every image (``m_pred * L``)."""
        return self._n_pred * self.block_size**2

    @property
    def num_visible(self) -> int:
        """Tokens visible in every view."""
        return self.grid_size[0] * self.grid_size[1] - self.num_masked

    @property
    def nominal_pred_ratio(self) -> float:
        """The requested ``m_pred``: ``pred_ratio``, or ``min(1, K * m_corr)`` when it is None."""
        return self.pred_ratio if self.pred_ratio is not None else min(1.0, self.num_views * self.mask_ratio)

    @property
    def realised_mask_ratio(self) -> float:
        """Fraction of the tokens each view really masks (``m_corr`` after rounding)."""
        return self.num_masked / (self.grid_size[0] * self.grid_size[1])

    @property
    def realised_pred_ratio(self) -> float:
        """Fraction of the tokens the K views really cover (``m_pred`` after rounding)."""
        return self.num_predicted / (self.grid_size[0] * self.grid_size[1])

    def rate_warnings(self, tolerance: float = 0.02) -> list[str]:
        """One message per rate whose realised value differs from the requested one by more
        than ``tolerance`` (e.g. block masking 0.6 on a 2 x 2 cell grid masks 3 of 4 cells)."""
        height, width = self.grid_size
        cells = f" of {self.block_size}x{self.block_size}-token cells" if self.block_size > 1 else ""
        pairs = (
            ("m_corr (masking.mask_ratio)", self.mask_ratio, self.num_masked),
            ("m_pred (masking.pred_ratio)", self.nominal_pred_ratio, self.num_predicted),
        )
        return [
            f"{name} {requested:g} is realised as {count} of {height * width} tokens = "
            f"{count / (height * width):.4g} on the {height}x{width} token grid{cells}"
            for name, requested, count in pairs
            if abs(count / (height * width) - requested) > tolerance
        ]

    def __call__(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Sample the K views for a batch.

        Args:
            batch_size: number of images ``B``.
            generator: random source on ``device``; ``None`` uses torch's default generator
                for that device.
            device: output device; defaults to the generator's device, else CPU.

        Returns:
            ``bool[B, K, H*W]``, True = masked.
        """
        return self.sample(batch_size, generator, device)[0]

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        with_order: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Sample the K views for a batch, optionally with the order the draw lists their visible tokens.

        The order is the official code's ``ids_keep`` order, derived from the same scores: in view
        ``k``, the visible units outside the union of views ``1..k-1`` come first, then the visible
        units inside it, each group by ascending score (the official code: view 1's ``argsort`` of the
        noise, view 2's kept parts of its two permutations); a cell-based pattern lists the cells'
        top-left tokens in that cell order, then their next tokens (row-major within the cell), as the
        official block masking does. ``loss.vis_pairing=official`` needs it (``MaskedViews.ids_keep_drawn``).

        Args:
            batch_size, generator, device: as for ``__call__``.
            with_order: also return the visible tokens in draw order.

        Returns:
            ``(mask bool[B, K, H*W], ids_keep_drawn long[B, K, n_vis] or None)``.
        """
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        height, width = self.grid_size
        s = self.block_size
        cells_h, cells_w = height // s, width // s
        scores = self._score_fn(
            batch_size * self.num_views,
            self.grid_size,
            generator=generator,
            device=device,
            **self.pattern_kwargs,
        )
        # One representative token per cell: cell-based scores are constant on cells.
        scores = scores.view(batch_size, self.num_views, cells_h, s, cells_w, s)[:, :, :, 0, :, 0]
        scores = scores.reshape(batch_size, self.num_views, cells_h * cells_w)

        union = torch.zeros(batch_size, cells_h * cells_w, dtype=torch.bool, device=device)
        views, orders = [], []
        for k, new in enumerate(self._new_counts):
            view = select_lowest(scores[:, k], ~union, new) | select_lowest(scores[:, k], union, self._n_corr - new)
            if with_order:
                orders.append(_visible_in_draw_order(scores[:, k], view, union, cells_h * cells_w - self._n_corr))
            union = union | view
            views.append(view)
        mask = torch.stack(views, dim=1).view(batch_size, self.num_views, cells_h, 1, cells_w, 1)
        mask = mask.expand(-1, -1, -1, s, -1, s).reshape(batch_size, self.num_views, height * width)
        if not with_order:
            return mask, None
        return mask, _cell_tokens(torch.stack(orders, dim=1), cells_w, s)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.pattern_kwargs.items() if k != "block_size")
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, mask_ratio={self.mask_ratio}, "
            f"num_views={self.num_views}, pred_ratio={self.pred_ratio}, "
            f"pattern={self.pattern!r}, block_size={self.block_size}{extra}, "
            f"num_masked={self.num_masked}, num_predicted={self.num_predicted})"
        )
