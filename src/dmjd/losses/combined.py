"""Joint objective ``L = w_vis * L_vis + lambda * L_mim`` (Eq. 6) as a dict of terms: DMJD's
(``dmjd_loss``) and any plugged-in method's (``method_loss``, with that method's ``L_mim``)."""

from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from dmjd.losses.distillation import VisPairing, pair_visible_predictions, visible_distillation_loss
from dmjd.losses.methods import MIM_LOSSES, MimLoss, token_prediction_loss
from dmjd.masking import MaskedViews, gather_tokens

__all__ = ["BranchPredictions", "dmjd_loss", "method_loss"]


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
    return method_loss(out, targets, views, "mse", mim_weight, vis_weight, vis_beta, vis_layernorm, vis_pairing)


def loss_values(losses: dict[str, Tensor]) -> dict[str, float]:
    """The loss terms as plain floats for logging: detached, with one host synchronisation
    (``float(losses["loss"])`` would warn that the tensor requires grad)."""
    values = torch.stack([value.detach().float() for value in losses.values()]).tolist()
    return dict(zip(losses, values, strict=True))


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
    vis_fn = (
        token_prediction_loss
        if mim_loss == "ce"
        else partial(visible_distillation_loss, beta=vis_beta, normalize=vis_layernorm)
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
