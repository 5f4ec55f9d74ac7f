"""Label-free measures of a pre-training run: RankMe of its features and its held-out masked-prediction loss.

Both need no labels, so they apply to any data a user brings (``dmjd compare``) and can be read
during training. Neither replaces a probe: RankMe tracks how many directions the features use,
and the held-out loss how well the model predicts what it was trained to predict.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dmjd.losses import BranchPredictions, method_loss
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.targets import Target

if TYPE_CHECKING:
    from dmjd.eval.features import Pool

LossFn = Callable[[BranchPredictions, Tensor, MaskedViews], dict[str, Tensor]]
HELD_OUT_TERMS = ("loss_mim", "loss_vis")


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): the effective rank of a set of embeddings.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / ||s||_1 + eps`` over the singular values ``s``
    of the feature matrix (no centring, as in the paper). It lies in ``[1, min(N, D)]``: about 1
    when every feature points one way (collapse), ``min(N, D)`` for equally spread directions.
    Computed in float64; invariant to the features' scale.

    Args:
        features: ``[N, D]`` one embedding per image.
        eps: the paper's ``epsilon``, keeps ``log`` finite for zero singular values.

    Raises:
        ValueError: ``features`` is not a non-empty 2-d tensor, or it is all zero or not finite.
    """
    if features.ndim != 2 or features.numel() == 0:
        raise ValueError(f"expected features [N, D] with N, D >= 1, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all() or not features.any():
        raise ValueError("RankMe needs finite features that are not all zero")
    singular = torch.linalg.svdvals(features.double())
    total = singular.sum()
    p = singular / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def target_key(target: Target) -> str:
    """The target and every setting that changes its values, e.g.
    ``PixelTarget(patch_size=8, in_chans=1, dim=64, norm_pix=True, eps=1e-06, pixels=[0, 1])``:
    held-out losses are comparable only under equal keys."""
    return f"{type(target).__name__}({target.extra_repr()})"


@torch.no_grad()
def heldout_loss(
    model: nn.Module,
    target: Target,
    masking: DisjointMasking,
    normalize: nn.Module,
    images: Tensor,
    loss_fn: LossFn = method_loss,
    batch_size: int = 256,
    seed: int = 0,
    with_order: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean masked-prediction loss of a pre-training model on held-out images, with fixed masks.

    The masks of all images are drawn at once on the CPU from ``seed`` (the same masks on every
    device and for every ``batch_size``); the model runs in eval mode without gradients and is put
    back in its previous mode. Each term is the mean over all images (every image has the same
    number of masked and visible tokens, so batch means weighted by batch size give it exactly).

    A loss measures prediction of one target under one masking: values of two models are comparable
    only when both use the same target settings (the key prefix, ``target_key``), the same
    ``masking`` and the same ``loss_fn``. MAE on normalised pixels and DMJD on HOG give different
    keys; pass one ``masking`` for every model compared.

    Args:
        model: a ``DMJDModel`` (``model(x, views)`` -> predictions), as ``dmjd.engine.builders`` builds it.
        target: the run's target (``build_target``), on the model's device.
        masking: the masking that draws the held-out views (e.g. the run's, ``build_masking``).
        normalize: the model's input normalisation (``dmjd.data.Normalize``), on the model's device.
        images: ``[N, C, H, W]`` held-out images, float in [0, 1] or uint8 in [0, 255], on any device.
        loss_fn: ``loss_fn(out, targets, views) -> {"loss_mim", "loss_vis", ...}``; the run's
            ``build_loss(cfg)`` (default: Eq. 6 with the MSE ``L_mim``).
        batch_size: images per forward pass.
        seed: seed of the held-out masks.
        with_order: draw the visible tokens' order too (``loss.vis_pairing=official``).
        amp_dtype: autocast dtype (the trainer's ``amp_dtype``); None evaluates in float32.

    Returns:
        ``{"<target_key>/loss_mim": ..., "<target_key>/loss_vis": ...}``, the terms ``loss_fn``
        computes (``loss_vis`` only with a visible distillation branch).

    Raises:
        ValueError: ``images`` is not a non-empty ``[N, C, H, W]`` batch or ``batch_size < 1``.
    """
    if images.ndim != 4 or len(images) == 0 or batch_size < 1:
        raise ValueError(f"expected images [N, C, H, W] with N >= 1 and batch_size >= 1, got {tuple(images.shape)}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    mask, drawn = masking.sample(len(images), generator, "cpu", with_order=with_order)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    sums: dict[str, Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            x = images[rows].to(device, non_blocking=True)
            x = x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x.float()
            order = None if drawn is None else drawn[rows].to(device)
            views = MaskedViews.from_mask(mask[rows].to(device), masking.num_masked, order)
            with autocast:
                terms = loss_fn(model(normalize(x), views), target(x), views)
            for name in HELD_OUT_TERMS:
                if name in terms:
                    sums[name] = sums.get(name, 0) + terms[name].float() * len(x)
    finally:
        model.train(was_training)
    key = target_key(target)
    return {f"{key}/{name}": float(total) / len(images) for name, total in sums.items()}


class LabelFreeMonitor:
    """``monitor(encoder) -> {"rankme": ...}`` on a fixed set of images, for runs on unlabelled data;
    ``heldout(trainer)`` adds the run's masked-prediction loss on the same images (end of a run).

    Args:
        images: ``uint8[N, C, H, W]`` evaluation images at the encoder's input size, on the device.
        normalize: the encoder's input normalisation.
        pool: how tokens become one feature per image (``dmjd.eval.features.pool_tokens``).
        batch_size: images per forward pass.
        source: where the images come from, for reports (e.g. the data set's split).
    """

    def __init__(
        self, images: Tensor, normalize: nn.Module, pool: Pool = "avg", batch_size: int = 256, source: str = ""
    ) -> None:
        self.images, self.normalize, self.pool, self.batch_size = images, normalize, pool, batch_size
        self.source = source

    @torch.no_grad()
    def features(self, encoder: nn.Module) -> Tensor:
        """Pooled features ``[N, D]`` of the images (the encoder is put back in its mode)."""
        from dmjd.eval.features import encoder_tokens, pool_tokens

        was_training = encoder.training
        encoder.eval()
        try:
            feats = [pool_tokens(encoder, encoder_tokens(encoder, self.normalize(x.float() / 255), self.pool), self.pool)
                     for x in self.images.split(self.batch_size)]  # fmt: skip
        finally:
            encoder.train(was_training)
        return torch.cat(feats).float()

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        return {"rankme": rankme(self.features(encoder))}

    def heldout(self, model: nn.Module, target: Target, masking: DisjointMasking, loss_fn: LossFn) -> dict[str, float]:
        """The masked-prediction (and visible distillation) loss of ``model`` on the images."""
        return heldout_loss(model, target, masking, self.normalize, self.images, loss_fn, self.batch_size)
