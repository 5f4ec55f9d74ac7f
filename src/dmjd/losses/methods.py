"""Masked prediction losses of the MIM methods DMJD plugs into.

=========  ==================================  =============================================
``mim``    method                              masked prediction loss ``L_mim``
=========  ==================================  =============================================
``mse``    MAE, MaskFeat, DMJD, teacher (CLIP) squared error on continuous targets (Eq. 2)
``l1``     SimMIM                              absolute error on continuous targets
``ce``     BEiT                                cross-entropy over the tokenizer's codebook
=========  ==================================  =============================================

:func:`dmjd.losses.method_loss` combines the chosen ``L_mim`` with the visible distillation term
exactly as Eq. 6 does, so disjoint masking and joint distillation switch on in any of these methods.
"""

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from dmjd.losses.reconstruction import float32_pair, masked_prediction_loss

__all__ = [
    "MIM_LOSSES",
    "MimLoss",
    "l1_prediction_loss",
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
