"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Each test image votes with its ``k`` most cosine-similar training images, each neighbour weighted
by ``exp(similarity / temperature)``; the class with the largest total weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    query_feats: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class votes of every query ``[M, num_classes]``.

    Args:
        train_feats: ``[N, D]`` memory bank; train_labels: ``int[N]`` in ``[0, num_classes)``.
        query_feats: ``[M, D]``, compared in chunks of ``chunk_size`` rows to bound memory.
        k: neighbours per query (at most N).

    Raises:
        ValueError: non-positive ``k`` or ``temperature``.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    scores = []
    for chunk in F.normalize(query_feats.float(), dim=1).split(chunk_size):
        sim, idx = (chunk.to(bank.device) @ bank.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=bank.device)
        scores.append(votes.scatter_add_(1, labels[idx], weights))
    return torch.cat(scores)


def knn_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted kNN classifier on a test set."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return (scores.argmax(1).cpu() == test_labels.cpu()).float().mean().item()
