"""Masking: patterns as token scores, disjoint K-view sampling (Eq. 3), view index helpers, and the
seeded masks of each training step."""

from torch import Tensor

from dmjd.masking.disjoint import DisjointMasking
from dmjd.masking.patterns import (
    PATTERNS,
    block_scores,
    random_scores,
    rectangle_scores,
    register_pattern,
    select_lowest,
)
from dmjd.masking.steps import StepMasks, step_seed
from dmjd.masking.views import MaskedViews, gather_tokens


def measured_pred_ratio(mask: Tensor) -> Tensor:
    """Measured prediction rate: mean over images of ``|union of the K views| / L``.

    Args:
        mask: ``bool[B, K, L]``, True = masked.

    Returns:
        0-d float tensor on ``mask``'s device (no host sync).
    """
    return mask.any(dim=1).float().mean()


__all__ = [
    "PATTERNS",
    "DisjointMasking",
    "MaskedViews",
    "StepMasks",
    "block_scores",
    "gather_tokens",
    "measured_pred_ratio",
    "random_scores",
    "rectangle_scores",
    "register_pattern",
    "select_lowest",
    "step_seed",
]
