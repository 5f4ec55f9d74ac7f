"""Loss of the visible distillation branch (Eq. 5)."""

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from dmjd.losses.reconstruction import float32_pair
from dmjd.masking import MaskedViews

__all__ = ["VisPairing", "pair_visible_predictions", "visible_distillation_loss"]

VisPairing = Literal["token", "official"]

_TARGET_NORM_EPS = 1e-6


def visible_distillation_loss(pred: Tensor, target: Tensor, beta: float = 2.0, normalize: bool = False) -> Tensor:
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


def pair_visible_predictions(pred: Tensor, views: MaskedViews, pairing: VisPairing = "token") -> Tensor:
    """The visible predictions in the order that meets the targets ``gather_tokens(targets, views.ids_keep)``.

    ``"token"`` (Eq. 5): each token's prediction meets its own target, ``pred`` as given (both in
    ascending token order). ``"official"``: the official ``forward_loss`` pairs ``pred_vis``, which
    leaves its encoder in the draw order of ``ids_keep``, with ``target[mask == 0]``, in ascending
    order; so row ``i`` here holds the prediction of the ``i``-th token in draw order
    (``views.ids_keep_drawn``) and meets the ``i``-th visible target. Almost every visible token is
    then regressed onto another visible token's target, as in the official code.

    Args:
        pred: ``[N, n_vis, T]`` visible distillation branch output, ascending token order per view.
        views: the views; ``"official"`` needs ``ids_keep_drawn`` (``DisjointMasking.sample``).
        pairing: ``"token"`` or ``"official"``.

    Returns:
        ``[N, n_vis, T]``.

    Raises:
        ValueError: on an unknown ``pairing``, or ``"official"`` without ``views.ids_keep_drawn``.
    """
    if pairing == "token":
        return pred
    if pairing != "official":
        raise ValueError(f"vis_pairing must be 'token' or 'official', got {pairing!r}")
    if views.ids_keep_drawn is None:
        raise ValueError("vis_pairing='official' needs the views' draw order: build them with DisjointMasking.sample")
    rank = views.ids_restore.gather(-1, views.ids_keep_drawn).flatten(0, 1)  # [N, n_vis] rank among visible
    return pred.gather(1, rank.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
