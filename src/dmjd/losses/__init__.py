"""DMJD objectives: masked prediction (Eq. 2), visible distillation (Eq. 5), joint (Eq. 6)."""

from dmjd.losses.combined import BranchPredictions, dmjd_loss
from dmjd.losses.distillation import visible_distillation_loss
from dmjd.losses.reconstruction import masked_prediction_loss

__all__ = [
    "BranchPredictions",
    "dmjd_loss",
    "masked_prediction_loss",
    "visible_distillation_loss",
]
