"""A seeded stratified train/test split, for labelled data that ships without a held-out split."""

from __future__ import annotations

import numpy as np

from dmjd.errors import InputError


def stratified_split(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into train and test, class by class, by a seeded random order.

    Each class keeps its share: ``round(n_c * test_fraction)`` of its ``n_c`` items go to test,
    at least one when the class has two or more and never all of them (a class of one item stays
    in train). Vectorised: one sort by (class, random key), no loop over items or classes.

    Args:
        labels: ``int[N]`` class of each item, ``>= 0``.
        test_fraction: share of each class held out, in (0, 1).
        seed: the split is a function of the labels and this seed.

    Returns:
        ``(train, test)`` ascending ``int64`` index arrays that together hold every item once.

    Raises:
        InputError: ``test_fraction`` outside (0, 1), or negative labels (unlabelled items).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise InputError("a stratified split needs a class label >= 0 for every item")
    counts = np.bincount(labels)
    n_test = np.minimum(np.maximum(np.rint(counts * test_fraction), counts >= 2), np.maximum(counts - 1, 0))
    keys = np.random.default_rng(seed).random(labels.size)
    order = np.lexsort((keys, labels))  # items grouped by class, random order inside each class
    sorted_labels = labels[order]
    rank = np.arange(labels.size) - (np.cumsum(counts) - counts)[sorted_labels]
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[order] = rank < n_test[sorted_labels]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
