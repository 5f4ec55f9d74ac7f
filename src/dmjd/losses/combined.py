"""Joint DMJD objective ``L = w_vis * L_vis + lambda * L_mim`` (Eq. 6) as a dict of terms."""

from typing import Protocol

from torch import Tensor

from dmjd.losses.distillation import VisPairing
from dmjd.masking import MaskedViews

__all__ = ["BranchPredictions", "dmjd_loss"]


class BranchPredictions(Protocol):
    """What :func:`dmjd_loss` reads from the model output (``DMJDOutput`` satisfies it)."""

    @property
    def pred_masked(self) -> Tensor:
        """``[N, n_mask, T]`` masked prediction branch output."""
        ...

    @property
    def pred_visible(self) -> Tensor | None:
        """``[N, n_vis, T]`` visible distillation branch output, None without that branch."""
        ...


def dmjd_loss(
    out: BranchPredictions,
    targets: Tensor,
    views: MaskedViews,
    mim_weight: float = 1.0,
    vis_weight: float = 1.0,
    vis_beta: float = 2.0,
    vis_layernorm: bool = False,
    vis_pairing: VisPairing = "token",
) -> dict[str, Tensor]:
    """Combine the two branch losses; per-image targets are gathered for each view.

    A term is computed only if its weight is positive (and, for ``L_vis``, the model has a
    visible distillation branch); skipped terms are absent from the result.

    Args:
        out: model output with ``pred_masked`` ``[N, n_mask, T]`` and ``pred_visible``
            ``[N, n_vis, T]`` or None, ``N = B*K`` ordered image-major (row ``b*K + k``).
        targets: ``[B, L, T]`` per-image targets, computed once for all ``K`` views.
        views: the views' token ids (``ids_keep`` ``[B, K, n_vis]``,
            ``ids_masked`` ``[B, K, n_mask]``).
        mim_weight: ``lambda`` of Eq. 6, weight of the masked prediction loss.
        vis_weight: weight of the visible distillation loss (1 in the paper).
        vis_beta: Smooth L1 ``beta`` of Eq. 5.
        vis_layernorm: extra LayerNorm of each visible target vector (off in the official code).
        vis_pairing: ``"token"`` (Eq. 5) or ``"official"`` (``pair_visible_predictions``).

    Returns:
        ``{"loss": weighted sum, "loss_mim": L_mim, "loss_vis": L_vis}`` (unweighted terms,
        present only when computed), all 0-d float32 tensors.

    Raises:
        ValueError: on a negative weight or when no term is active.
    """
    from dmjd.losses.methods import method_loss  # local: methods builds on this module's types

    return method_loss(out, targets, views, "mse", mim_weight, vis_weight, vis_beta, vis_layernorm, vis_pairing)
