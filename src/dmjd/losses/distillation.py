"""Loss of the visible distillation branch (Eq. 5)."""

import torch.nn.functional as F
from torch import Tensor

from dmjd.losses.reconstruction import float32_pair

__all__ = ["visible_distillation_loss"]

_TARGET_NORM_EPS = 1e-6


def visible_distillation_loss(
    pred: Tensor, target: Tensor, beta: float = 2.0, normalize: bool = True
) -> Tensor:
    """Smooth L1 between visible-token predictions and normalised targets (``L_vis``, Eq. 5).

    With ``D = pred - norm(target)`` the per-element loss is ``0.5 * D^2 / beta`` where
    ``|D| <= beta`` and ``|D| - 0.5 * beta`` elsewhere, averaged over all elements. ``norm`` is
    a LayerNorm without affine over the ``T`` values of each token (eps 1e-6), which sharpens
    patch-level contrast. Computed in float32 whatever the input dtype; the target is
    detached, so gradients reach ``pred`` only.

    Args:
        pred: ``[N, n_vis, T]`` visible distillation branch output.
        target: ``[N, n_vis, T]`` targets of the same (visible) tokens.
        beta: Smooth L1 threshold (2.0 in the paper).
        normalize: apply the LayerNorm to ``target``.

    Returns:
        0-d float32 tensor.

    Raises:
        ValueError: if the shapes differ or ``beta`` is not positive.
    """
    pred, target = float32_pair(pred, target)
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if normalize:
        target = F.layer_norm(target, target.shape[-1:], eps=_TARGET_NORM_EPS)
    return F.smooth_l1_loss(pred, target, beta=beta)
