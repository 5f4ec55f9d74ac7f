"""What a top-1 on a test split can tell: is it better than a constant answer, and which change is
larger than its sampling error?

A classifier that always answers the test split's most frequent class scores that class's share
(10 % on a balanced 10-class split). A top-1 at or below that share means the protocol learned
nothing (too few labels or steps, an lr that diverged, a collapsed encoder), so the figure says
nothing about the encoder; ``warn_if_at_chance`` says so with a ``ChanceLevelWarning``.
``sampling_error`` is the 95 % half-width of a top-1 on n test images: a change of the same
encoder's accuracy smaller than that is not called a change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class ChanceLevelWarning(RuntimeWarning):
    """A top-1 accuracy no better than always answering the most frequent test class."""


def majority_rate(labels: Tensor | np.ndarray | Sequence[int]) -> float:
    """The share of the most frequent class among ``labels`` (``int[N]``): the best constant answer's top-1."""
    labels = torch.as_tensor(np.asarray(labels)).long().flatten()
    if labels.numel() == 0:
        return 0.0
    return float(torch.bincount(labels).max()) / labels.numel()


def warn_if_at_chance(
    top1: float, test_labels: Tensor | np.ndarray | Sequence[int], protocol: str, hint: str, stacklevel: int = 2
) -> bool:
    """Warn (``ChanceLevelWarning``) when ``top1`` does not beat the majority-class rate of ``test_labels``.

    Args:
        top1: the protocol's test accuracy in [0, 1].
        test_labels: the labels it was measured on.
        protocol: what scored it, e.g. ``"kNN"``, ``"linear probe"``, ``"fine-tuning"``.
        hint: what to try next, appended to the message.
        stacklevel: as for ``warnings.warn``, counted from the caller.

    Returns:
        Whether it warned.
    """
    majority = majority_rate(test_labels)
    if top1 > majority:
        return False
    warnings.warn(
        f"{protocol} learned nothing: top-1 {top1:.1%} is no better than always answering the most frequent "
        f"test class ({majority:.1%}); {hint}",
        ChanceLevelWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def sampling_error(top1: float, num_images: int) -> float:
    """The 95 % half-width (1.96 binomial standard errors) of a top-1 ``top1`` in [0, 1] measured
    on ``num_images`` test images, as a fraction: 0.030 for 62 % on 1,000 images."""
    return 1.96 * math.sqrt(top1 * (1 - top1) / max(num_images, 1))
