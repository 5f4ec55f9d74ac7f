"""Loss of the visible distillation branch (Eq. 5)."""

import torch.nn.functional as F
from torch import Tensor

from dmjd.losses.reconstruction import float32_pair

__all__ = ["visible_distillation_loss"]

_TARGET_NORM_EPS = 1e-6


def visible_distillation_loss(
    pred: Tensor, target: Tensor, beta: float = 2.0, normalize: bool = False
) -> Tensor:
    """Smooth L1 between visible-token predictions and their targets (``L_vis``, Eq. 5).

    With ``D = pred - norm(target)`` the per-element loss is ``0.5 * D^2 / beta`` where
    ``|D| <= beta`` and ``|D| - 0.5 * beta`` elsewhere, averaged over all elements. Computed in
    float32 whatever the input dtype; the target is detached, so gradients reach ``pred`` only.

    Eq. 5's ``norm`` is the target's own normalisation, shared with the masked prediction branch
    as in the official code: the LayerNorm of each cell's histogram (HOG ``dmjd``), the L2 norm of
    each cell's histogram (HOG ``maskfeat``), the per-patch standardisation (pixels with
    ``norm_pix``), the per-token LayerNorm (teacher features). ``normalize=True`` adds a LayerNorm
    without affine over each token's whole ``T``-vector (eps 1e-6) on top, which the official code
    does not do (kept as ``loss.vis_layernorm``).

    Args:
        pred: ``[N, n_vis, T]`` visible distillation branch output.
        target: ``[N, n_vis, T]`` targets of the same (visible) tokens.
        beta: Smooth L1 threshold (2.0 in the paper).
        normalize: apply the extra LayerNorm to ``target``.

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
