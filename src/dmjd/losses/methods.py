"""Masked prediction losses of the MIM methods DMJD plugs into, and their joint objective.

=========  ==================================  =============================================
``mim``    method                              masked prediction loss ``L_mim``
=========  ==================================  =============================================
``mse``    MAE, MaskFeat, DMJD, teacher (CLIP) squared error on continuous targets (Eq. 2)
``l1``     SimMIM                              absolute error on continuous targets
``ce``     BEiT                                cross-entropy over the tokenizer's codebook
=========  ==================================  =============================================

:func:`method_loss` combines the chosen ``L_mim`` with the visible distillation term exactly as
Eq. 6 does, so disjoint masking and joint distillation switch on in any of these methods.
"""

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from dmjd.losses.combined import BranchPredictions
from dmjd.losses.distillation import VisPairing, pair_visible_predictions, visible_distillation_loss
from dmjd.losses.reconstruction import float32_pair, masked_prediction_loss
from dmjd.masking import MaskedViews, gather_tokens

__all__ = [
    "MIM_LOSSES",
    "MimLoss",
    "l1_prediction_loss",
    "method_loss",
    "token_prediction_loss",
]

MimLoss = Literal["mse", "l1", "ce"]


def l1_prediction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error on the masked tokens (SimMIM's ``L_mim``).

    SimMIM sums ``|pred - target|`` over masked pixels and divides by their count and the
    channel count, i.e. the mean over all values of all masked tokens, which this is. Computed
    in float32; the target is detached.

    Args:
        pred: ``[N, n_mask, T]`` predictions.
        target: ``[N, n_mask, T]`` targets of the same tokens.

    Returns:
        0-d float32 tensor.

    Raises:
        ValueError: if the shapes differ.
    """
    return F.l1_loss(*float32_pair(pred, target))


def token_prediction_loss(logits: Tensor, token_ids: Tensor) -> Tensor:
    """Cross-entropy of codebook logits against the tokenizer's ids (BEiT's ``L_mim``).

    Averaged over all tokens of all views, in float32.

    Args:
        logits: ``[N, n, V]`` scores over a codebook of ``V`` visual tokens.
        token_ids: ``long[N, n]`` the tokenizer's id of each of those tokens, in ``[0, V)``.

    Returns:
        0-d float32 tensor.

    Raises:
        ValueError: if ``token_ids`` is not an integer tensor of shape ``logits.shape[:-1]``.
    """
    if token_ids.shape != logits.shape[:-1] or token_ids.is_floating_point():
        raise ValueError(
            f"expected integer token ids of shape {tuple(logits.shape[:-1])} for logits "
            f"{tuple(logits.shape)}, got {token_ids.dtype} {tuple(token_ids.shape)}"
        )
    return F.cross_entropy(logits.float().flatten(0, -2), token_ids.flatten())


MIM_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": masked_prediction_loss,
    "l1": l1_prediction_loss,
    "ce": token_prediction_loss,
}


def method_loss(
    out: BranchPredictions,
    targets: Tensor,
    views: MaskedViews,
    mim_loss: MimLoss = "mse",
    mim_weight: float = 1.0,
    vis_weight: float = 1.0,
    vis_beta: float = 2.0,
    vis_layernorm: bool = False,
    vis_pairing: VisPairing = "token",
) -> dict[str, Tensor]:
    """``L = vis_weight * L_vis + mim_weight * L_mim`` (Eq. 6) with a method's ``L_mim``.

    With ``mim_loss="mse"`` this equals :func:`dmjd.losses.dmjd_loss`. The visible term is the
    Smooth L1 distillation of Eq. 5 for continuous targets; for discrete ones (``"ce"``) there is
    nothing to normalise and regress, so the visible distillation branch predicts the visible
    tokens' ids with the same cross-entropy (our extension; the paper runs BEiT with DM only).

    Args:
        out: model output, ``pred_masked`` ``[N, n_mask, T]`` and ``pred_visible``
            ``[N, n_vis, T]`` or None, ``N = B*K`` image-major.
        targets: per-image targets computed once for all views: ``float[B, L, T]``, or
            ``long[B, L]`` token ids for ``"ce"`` (``T`` is then the codebook size).
        views: the views' token ids.
        mim_loss: ``"mse"``, ``"l1"`` or ``"ce"``.
        mim_weight: ``lambda`` of Eq. 6.
        vis_weight: weight of the visible term.
        vis_beta: Smooth L1 ``beta`` of Eq. 5 (continuous targets only).
        vis_layernorm: extra LayerNorm of each visible target vector (not in the official code;
            see ``visible_distillation_loss``).
        vis_pairing: ``"token"`` (Eq. 5) or ``"official"`` (the official code's pairing, see
            ``pair_visible_predictions``).

    Returns:
        ``{"loss", "loss_mim", "loss_vis"}``, the unweighted terms present only when computed
        (weight > 0; ``loss_vis`` also needs a visible distillation branch); 0-d float32.

    Raises:
        ValueError: on an unknown ``mim_loss``, a negative weight, or no active term.
    """
    if mim_loss not in MIM_LOSSES:
        raise ValueError(f"mim_loss must be one of {sorted(MIM_LOSSES)}, got {mim_loss!r}")
    if mim_weight < 0 or vis_weight < 0:
        raise ValueError(f"loss weights must be >= 0, got mim {mim_weight}, vis {vis_weight}")
    vis_fn = token_prediction_loss if mim_loss == "ce" else partial(
        visible_distillation_loss, beta=vis_beta, normalize=vis_layernorm
    )
    terms: dict[str, Tensor] = {}
    if mim_weight > 0:
        masked_targets = gather_tokens(targets, views.ids_masked)
        terms["loss_mim"] = MIM_LOSSES[mim_loss](out.pred_masked, masked_targets)
    if vis_weight > 0 and out.pred_visible is not None:
        pred_visible = pair_visible_predictions(out.pred_visible, views, vis_pairing)
        terms["loss_vis"] = vis_fn(pred_visible, gather_tokens(targets, views.ids_keep))
    if not terms:
        raise ValueError("no active loss term: mim_weight is 0 and no visible term applies")
    weights = {"loss_mim": mim_weight, "loss_vis": vis_weight}
    weighted = [weights[name] * value for name, value in terms.items()]
    total = sum(weighted[1:], weighted[0])
    return {"loss": total, **terms}
