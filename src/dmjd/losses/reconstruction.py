"""Loss of the masked prediction branch (Eq. 2)."""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_prediction_loss"]


def masked_prediction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """MSE between predictions and targets of the masked tokens (``L_mim``, Eq. 2).

    Squared errors are averaged over the ``T`` target values of each token, then over all
    tokens of all views. Every view predicts the same number of tokens, so this equals the
    plain mean over all elements. Computed in float32 whatever the input dtype; the target is
    detached, so gradients reach ``pred`` only.

    Args:
        pred: ``[N, n_mask, T]`` masked prediction branch output.
        target: ``[N, n_mask, T]`` targets of the same tokens.

    Returns:
        0-d float32 tensor.

    Raises:
        ValueError: if the shapes differ.
    """
    return F.mse_loss(*float32_pair(pred, target))


def float32_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(pred, detached target)`` in float32, the inputs of every token regression loss.

    Float32 keeps the losses exact under autocast; detaching the target sends gradients to
    ``pred`` only.

    Raises:
        ValueError: if the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return pred.float(), target.detach().float()
