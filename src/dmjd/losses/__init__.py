"""DMJD objectives: masked prediction (Eq. 2), visible distillation (Eq. 5), joint (Eq. 6), and the
masked prediction losses of SimMIM (L1) and BEiT (cross-entropy) for DMJD as a plug-in."""

from dmjd.losses.combined import BranchPredictions, dmjd_loss, loss_values, method_loss
from dmjd.losses.distillation import VisPairing, pair_visible_predictions, visible_distillation_loss
from dmjd.losses.methods import MIM_LOSSES, MimLoss, l1_prediction_loss, token_prediction_loss
from dmjd.losses.reconstruction import masked_prediction_loss

__all__ = [
    "MIM_LOSSES",
    "BranchPredictions",
    "MimLoss",
    "VisPairing",
    "dmjd_loss",
    "l1_prediction_loss",
    "loss_values",
    "masked_prediction_loss",
    "method_loss",
    "pair_visible_predictions",
    "token_prediction_loss",
    "visible_distillation_loss",
]
