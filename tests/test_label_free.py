"""Label-free measures: RankMe and the held-out masked-prediction loss."""

import math

import pytest
import torch

from conftest import tiny_config
from dmjd.data import Normalize
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target, mean_std
from dmjd.eval.label_free import heldout_loss, rankme, target_key
from dmjd.masking import MaskedViews


# --------------------------------------------------------------------------------------- RankMe
@pytest.mark.parametrize("n, d", [(16, 16), (32, 8), (8, 32)])
def test_rankme_of_orthogonal_features_is_the_full_rank(n, d):
    features = torch.linalg.qr(torch.randn(max(n, d), max(n, d), generator=torch.Generator().manual_seed(0)))[0]
    assert rankme(features[:n, :d] if n >= d else features[:d, :n].T) == pytest.approx(min(n, d), rel=1e-4)


def test_rankme_of_rank_one_features_is_one():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(64, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert rankme(features) == pytest.approx(1.0, abs=1e-3)


def test_rankme_is_scale_invariant_and_between_one_and_full_rank():
    features = torch.randn(100, 20, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.01, 1, 20)
    value = rankme(features)
    assert 1.0 < value < 20.0
    assert rankme(features * 1e3) == pytest.approx(value, rel=1e-6)
    assert rankme(features * 1e-3) == pytest.approx(value, rel=1e-6)


def test_rankme_hand_computed():
    features = torch.diag(torch.tensor([3.0, 1.0]))  # singular values 3 and 1: p = 0.75, 0.25
    p = torch.tensor([0.75, 0.25], dtype=torch.float64) + 1e-7
    assert rankme(features) == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-9)


@pytest.mark.parametrize("bad", [torch.zeros(4, 3), torch.ones(5), torch.empty(0, 3), torch.full((2, 2), math.nan)])
def test_rankme_rejects_bad_features(bad):
    with pytest.raises(ValueError):
        rankme(bad)


# ---------------------------------------------------------------------------- held-out loss
@pytest.fixture
def parts():
    torch.manual_seed(0)
    cfg = tiny_config()
    target = build_target(cfg)
    model = build_dmjd_model(cfg, target.dim)
    return cfg, model, target, build_masking(cfg), Normalize(*mean_std(cfg)), build_loss(cfg)


def _images(n=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, 32).view(1, 1, 32, 1)
    return (rows * torch.rand(n, 1, 1, 1, generator=g) + 0.1 * torch.rand(n, 1, 32, 32, generator=g)).clamp(0, 1)


def test_heldout_loss_equals_the_loss_on_the_seeded_masks(parts):
    _, model, target, masking, normalize, loss_fn = parts
    images = _images()
    result = heldout_loss(model, target, masking, normalize, images, loss_fn, batch_size=len(images), seed=5)
    key = target_key(target)
    assert set(result) == {f"{key}/loss_mim", f"{key}/loss_vis"} and key.startswith("PixelTarget(")
    mask = masking(len(images), generator=torch.Generator().manual_seed(5))
    views = MaskedViews.from_mask(mask)
    model.eval()
    with torch.no_grad():
        expected = loss_fn(model(normalize(images), views), target(images), views)
    for name in ("loss_mim", "loss_vis"):
        assert result[f"{key}/{name}"] == pytest.approx(float(expected[name]), rel=1e-5)


def test_heldout_loss_is_seeded_batch_independent_and_leaves_the_model_as_it_was(parts):
    _, model, target, masking, normalize, loss_fn = parts
    images = _images()
    model.train()
    a = heldout_loss(model, target, masking, normalize, images, loss_fn, batch_size=5, seed=1)
    assert a == heldout_loss(model, target, masking, normalize, images, loss_fn, batch_size=5, seed=1)
    whole = heldout_loss(model, target, masking, normalize, images, loss_fn, batch_size=64, seed=1)
    assert whole == pytest.approx(a, rel=1e-5)
    assert heldout_loss(model, target, masking, normalize, images, loss_fn, seed=2) != a
    uint8 = heldout_loss(model, target, masking, normalize, (images * 255).round().byte(), loss_fn, seed=1)
    assert uint8 == pytest.approx(a, rel=1e-2)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(math.isfinite(v) for v in a.values())


def test_heldout_loss_falls_when_the_model_trains_on_those_images(parts):
    _, model, target, masking, normalize, loss_fn = parts
    images = _images(16)
    before = heldout_loss(model, target, masking, normalize, images, loss_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(9)
    for _ in range(15):
        views = MaskedViews.from_mask(masking(len(images), generator=g))
        loss = loss_fn(model(normalize(images), views), target(images), views)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = heldout_loss(model, target, masking, normalize, images, loss_fn)
    assert all(after[k] < before[k] for k in before)


def test_heldout_loss_without_a_visible_branch_and_bad_input():
    cfg = tiny_config("model.vdb=false")
    target = build_target(cfg)
    model = build_dmjd_model(cfg, target.dim)
    result = heldout_loss(model, target, build_masking(cfg), Normalize(*mean_std(cfg)), _images(4), build_loss(cfg))
    assert [k.rsplit("/", 1)[1] for k in result] == ["loss_mim"]
    with pytest.raises(ValueError, match="images"):
        heldout_loss(model, target, build_masking(cfg), Normalize(*mean_std(cfg)), torch.zeros(0, 1, 32, 32))
