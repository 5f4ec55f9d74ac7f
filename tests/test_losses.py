"""Losses: hand-computed values, per-view target alignment, weights, skipping and gradients."""

import math
from types import SimpleNamespace

import pytest
import torch

from dmjd.losses import dmjd_loss, masked_prediction_loss, visible_distillation_loss
from dmjd.masking import MaskedViews


def test_masked_prediction_loss_by_hand() -> None:
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    # token 0: (1 + 4) / 2 = 2.5; token 1: (4 + 9) / 2 = 6.5; mean over tokens 4.5
    assert masked_prediction_loss(pred, target).item() == 4.5


def test_visible_distillation_loss_by_hand_without_normalisation() -> None:
    pred = torch.tensor([[[0.5, -3.0, 2.0, 0.0]]])
    target = torch.zeros(1, 1, 4)
    # beta 2: |0.5| -> 0.5 * 0.25 / 2 = 0.0625; |-3| -> 3 - 1 = 2; |2| (= beta) -> 1; 0 -> 0
    loss = visible_distillation_loss(pred, target, beta=2.0, normalize=False)
    assert loss.item() == pytest.approx((0.0625 + 2.0 + 1.0 + 0.0) / 4)


def test_visible_distillation_loss_by_hand_with_layer_norm() -> None:
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    pred = torch.zeros(1, 1, 4)
    # LN(target) = [-1.5, -0.5, 0.5, 1.5] / sqrt(1.25 + 1e-6) (biased variance 1.25)
    s = 1 / math.sqrt(1.25 + 1e-6)
    quadratic = [0.5 * (d * s) ** 2 / 2.0 for d in (1.5, 0.5, 0.5, 1.5)]  # all |D| < beta = 2
    assert visible_distillation_loss(pred, target, normalize=True).item() == pytest.approx(sum(quadratic) / 4)
    # beta 0.5: |D| = 1.34 takes the linear branch, |D| = 0.45 the quadratic one
    mixed = [1.5 * s - 0.25, 0.5 * (0.5 * s) ** 2 / 0.5] * 2
    assert visible_distillation_loss(pred, target, beta=0.5, normalize=True).item() == pytest.approx(sum(mixed) / 4)


def test_visible_distillation_regresses_the_target_as_given_by_default() -> None:
    """The official code feeds the same (already normalised) target to both branches: no extra
    LayerNorm. Targets 1..4: |D| = 1, 2 (quadratic: 0.25, 1.0), 3, 4 (linear: 2, 3)."""
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    pred = torch.zeros(1, 1, 4)
    assert visible_distillation_loss(pred, target).item() == pytest.approx((0.25 + 1.0 + 2.0 + 3.0) / 4)


def test_losses_reject_mismatched_shapes_and_bad_beta() -> None:
    a, b = torch.zeros(2, 3, 4), torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        masked_prediction_loss(a, b)
    with pytest.raises(ValueError, match="differ"):
        visible_distillation_loss(a, b)
    with pytest.raises(ValueError, match="beta"):
        visible_distillation_loss(a, a, beta=0.0)


def test_losses_are_float32_under_autocast() -> None:
    pred = torch.randn(2, 3, 5).to(torch.bfloat16)
    target = torch.randn(2, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mim = masked_prediction_loss(pred, target)
        vis = visible_distillation_loss(pred, target)
    assert mim.dtype == vis.dtype == torch.float32
    assert mim.item() == pytest.approx(((pred.float() - target) ** 2).mean().item(), rel=1e-6)
    assert vis.item() == pytest.approx(visible_distillation_loss(pred.float(), target).item())


# ---------------------------------------------------------------- dmjd_loss

B, K, L, T = 2, 2, 6, 3


def _views() -> MaskedViews:
    """Two images, two views each masking 4 of 6 tokens."""
    mask = torch.tensor(
        [
            [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]],
            [[0, 1, 0, 1, 1, 1], [1, 1, 1, 0, 1, 0]],
        ],
        dtype=torch.bool,
    )
    return MaskedViews.from_mask(mask)


def _expected_terms(pred_masked, pred_visible, targets, views, beta=2.0, layernorm=False):
    """Loop over images and views, picking each view's targets from its mask; both branches
    regress the same targets (the official code), with ``layernorm`` the visible ones are
    LayerNorm-ed first (``loss.vis_layernorm``)."""
    mim, vis = [], []
    for b in range(B):
        for k in range(K):
            row = b * K + k
            masked = views.mask[b, k].nonzero().flatten()
            visible = (~views.mask[b, k]).nonzero().flatten()
            mim.append(((pred_masked[row] - targets[b, masked]) ** 2).flatten())
            t = targets[b, visible]
            if layernorm:
                var = t.var(-1, unbiased=False, keepdim=True)
                t = (t - t.mean(-1, keepdim=True)) / (var + 1e-6).sqrt()
            d = (pred_visible[row] - t).abs()
            vis.append(torch.where(d <= beta, 0.5 * d**2 / beta, d - 0.5 * beta).flatten())
    return torch.cat(mim).mean(), torch.cat(vis).mean()


def _outputs(requires_grad: bool = False) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        pred_masked=torch.randn(B * K, 4, T, generator=g).requires_grad_(requires_grad),
        pred_visible=torch.randn(B * K, 2, T, generator=g).requires_grad_(requires_grad),
    )


def test_dmjd_loss_aligns_targets_with_each_view() -> None:
    targets = torch.randn(B, L, T, generator=torch.Generator().manual_seed(1))
    out, views = _outputs(), _views()
    losses = dmjd_loss(out, targets, views)
    mim, vis = _expected_terms(out.pred_masked, out.pred_visible, targets, views)
    assert set(losses) == {"loss", "loss_mim", "loss_vis"}
    torch.testing.assert_close(losses["loss_mim"], mim)
    torch.testing.assert_close(losses["loss_vis"], vis)
    torch.testing.assert_close(losses["loss"], vis + mim)
    half = dmjd_loss(out, targets, views, vis_beta=0.5)
    torch.testing.assert_close(half["loss_vis"], _expected_terms(out.pred_masked, out.pred_visible, targets, views, 0.5)[1])
    normed = dmjd_loss(out, targets, views, vis_layernorm=True)
    torch.testing.assert_close(
        normed["loss_vis"], _expected_terms(out.pred_masked, out.pred_visible, targets, views, layernorm=True)[1]
    )
    assert not torch.allclose(normed["loss_vis"], losses["loss_vis"])


def test_dmjd_loss_honours_weights() -> None:
    targets = torch.randn(B, L, T)
    out, views = _outputs(), _views()
    base = dmjd_loss(out, targets, views)
    weighted = dmjd_loss(out, targets, views, mim_weight=0.5, vis_weight=2.0)
    assert torch.equal(weighted["loss_mim"], base["loss_mim"])
    assert torch.equal(weighted["loss_vis"], base["loss_vis"])
    assert torch.equal(weighted["loss"], 2.0 * base["loss_vis"] + 0.5 * base["loss_mim"])
    assert not torch.equal(weighted["loss"], base["loss"])


def test_dmjd_loss_skips_terms_with_zero_weight_or_no_branch() -> None:
    targets, views = torch.randn(B, L, T), _views()
    good = _outputs()
    # A wrongly shaped prediction would raise if its term were computed.
    no_mim = SimpleNamespace(pred_masked=torch.zeros(1), pred_visible=good.pred_visible)
    losses = dmjd_loss(no_mim, targets, views, mim_weight=0.0)
    assert set(losses) == {"loss", "loss_vis"} and torch.equal(losses["loss"], losses["loss_vis"])
    no_vis = SimpleNamespace(pred_masked=good.pred_masked, pred_visible=torch.zeros(1))
    losses = dmjd_loss(no_vis, targets, views, vis_weight=0.0)
    assert set(losses) == {"loss", "loss_mim"} and torch.equal(losses["loss"], losses["loss_mim"])
    without_branch = SimpleNamespace(pred_masked=good.pred_masked, pred_visible=None)
    assert set(dmjd_loss(without_branch, targets, views)) == {"loss", "loss_mim"}
    with pytest.raises(ValueError, match="no active loss term"):
        dmjd_loss(without_branch, targets, views, mim_weight=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        dmjd_loss(good, targets, views, vis_weight=-1.0)


def test_dmjd_loss_gradients_reach_predictions_only() -> None:
    targets = torch.randn(B, L, T).requires_grad_()
    out, views = _outputs(requires_grad=True), _views()
    dmjd_loss(out, targets, views, mim_weight=0.5)["loss"].backward()
    assert targets.grad is None
    masked_targets = torch.stack([targets[b, views.ids_masked[b, k]] for b in range(B) for k in range(K)]).detach()
    # d(0.5 * mean((p - t)^2)) / dp = (p - t) / numel
    expected = (out.pred_masked - masked_targets).detach() / out.pred_masked.numel()
    torch.testing.assert_close(out.pred_masked.grad, expected)
    assert out.pred_visible.grad is not None and out.pred_visible.grad.abs().sum() > 0
