"""Pins of docs/fidelity.md: each component against the paper and the official code.

Reference values come from slow, independent implementations written here from the
descriptions of the official algorithms (never from their code): the official K = 2 disjoint
masking for a fixed noise tensor, the learning rate of every preset on 8 GPUs, the decayed
parameters, the ConViT probe feature and the ConvMAE-B size. HOG and norm-pix references are in
test_targets.py.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import tiny_config
from dmjd.config import available_presets, load_config
from dmjd.engine import Pretrainer
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target
from dmjd.engine.optim import lr_rates, peak_lr, pretrain_param_groups
from dmjd.eval.features import default_pool, extract_features
from dmjd.eval.finetune import ConViTClassifier, load_encoder_weights
from dmjd.losses import dmjd_loss
from dmjd.masking import PATTERNS, DisjointMasking, MaskedViews, gather_tokens
from dmjd.models import create_encoder
from dmjd.models.convit import ConViT
from dmjd.targets import PixelTarget

# ------------------------------------------------------------------ official K = 2 disjoint masking


def official_two_views(
    noise: list[list[float]], perm_visible: list[int], perm_masked: list[int], mask_ratio: float, pred_ratio: float
) -> list[tuple[set[int], set[int]]]:
    """The official code's disjoint masking, one image at a time, on ``L`` units (tokens or cells).

    View 1 keeps the ``int(L * (1 - m))`` units of smallest noise (argsort ascending) and masks the
    rest. View 2 masks ``extra = int(min(m_pred - m, m) * L)`` of view 1's visible units and
    ``n_mask - extra`` of its masked ones, each taken in the order of one permutation of the
    positions in view 1's shuffled keep / remove lists (one permutation for the whole batch).
    """
    views = []
    for row in noise:
        kept, removed, extra = _official_view1(row, mask_ratio, pred_ratio)
        view2 = {kept[j] for j in perm_visible[:extra]} | {removed[j] for j in perm_masked[: len(removed) - extra]}
        views.append((set(removed), view2))
    return views


def _official_view1(row: list[float], mask_ratio: float, pred_ratio: float) -> tuple[list[int], list[int], int]:
    """One image's view 1 of the official code: kept and removed units in ascending noise, and the
    count ``extra`` of kept units that view 2 masks."""
    length = len(row)
    keep = int(length * (1 - mask_ratio))
    shuffled = sorted(range(length), key=lambda i: row[i])
    return shuffled[:keep], shuffled[keep:], int(min(pred_ratio - mask_ratio, mask_ratio) * length)


def _expand_cells(units: set[int], cells_per_side: int) -> set[int]:
    """Cells of a ``c x c`` cell grid -> their 2 x 2 tokens on the ``2c x 2c`` token grid."""
    side = 2 * cells_per_side
    return {
        (2 * (u // cells_per_side) + a) * side + 2 * (u % cells_per_side) + b for u in units for a in (0, 1) for b in (0, 1)
    }


def _scores_reproducing(noise: Tensor, perm_visible: list[int], perm_masked: list[int], mask_ratio: float) -> Tensor:
    """dmjd pattern scores (lower = masked first; row ``b*K + k``) that encode the same random
    draws: view 1 scores each unit by its noise rank moved down by the keep count, modulo ``L`` (the
    removed units first, then the kept ones in ascending noise); view 2 scores each unit by its
    position in the permutation of the list (view 1 visible or masked) it belongs to."""
    batch, length = noise.shape
    keep = int(length * (1 - mask_ratio))
    scores = torch.empty(batch, 2, length)
    for b in range(batch):
        order = noise[b].argsort()
        for rank in range(length):
            scores[b, 0, order[rank]] = (rank - keep) % length
        for rank, j in enumerate(perm_visible):
            scores[b, 1, order[j]] = rank
        for rank, j in enumerate(perm_masked):
            scores[b, 1, order[keep + j]] = rank
    return scores.flatten(0, 1)


def _official_draw(grid, mask_ratio, block, batch=3, seed=0):
    """Official random draws (noise, two permutations) and dmjd masking patched to replay them."""
    cells_side = grid[0] // block
    units = cells_side**2
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, units, generator=gen)
    keep = int(units * (1 - mask_ratio))
    perm_visible = torch.randperm(keep, generator=gen).tolist()
    perm_masked = torch.randperm(units - keep, generator=gen).tolist()
    cell_scores = _scores_reproducing(noise, perm_visible, perm_masked, mask_ratio)
    token_scores = (
        cell_scores.view(-1, cells_side, 1, cells_side, 1).expand(-1, -1, block, -1, block).reshape(-1, grid[0] * grid[1])
    )
    return noise, perm_visible, perm_masked, token_scores


def _replaying(monkeypatch, token_scores: Tensor, block: int) -> str:
    def fixed(batch_size, grid_size, *, generator=None, device=None, block_size=1):
        return token_scores[:batch_size]

    def fixed_tokens(batch_size, grid_size, *, generator=None, device=None):
        return token_scores[:batch_size]

    monkeypatch.setitem(PATTERNS, "fixed", fixed if block > 1 else fixed_tokens)
    return "fixed"


@pytest.mark.parametrize(
    ("grid", "mask_ratio", "pattern", "block"),
    [((14, 14), 0.75, "random", 1), ((14, 14), 0.6, "block", 2), ((14, 14), 0.5, "random", 1)],
    ids=["random-0.75", "block-0.6", "random-0.5"],
)
def test_official_k2_masking_for_a_fixed_noise(monkeypatch, grid, mask_ratio, pattern, block) -> None:
    """Same random draws -> the same two views as the official algorithm (m_pred 1.0, as the official
    code always uses): view 1 is MAE's random masking of the noise, view 2 masks every unit view 1
    left visible plus the official number of view 1's masked units, on tokens or 2 x 2 cells."""
    batch, cells_side = 3, grid[0] // block
    noise, perm_visible, perm_masked, token_scores = _official_draw(grid, mask_ratio, block, batch)
    fixed = _replaying(monkeypatch, token_scores, block)
    mask = DisjointMasking(grid, mask_ratio, num_views=2, pred_ratio=1.0, pattern=fixed, block_size=block)(batch)
    expected = official_two_views(noise.tolist(), perm_visible, perm_masked, mask_ratio, 1.0)
    for b, views in enumerate(expected):
        for k, units_masked in enumerate(views):
            tokens = units_masked if block == 1 else _expand_cells(units_masked, cells_side)
            assert set(mask[b, k].nonzero().flatten().tolist()) == tokens, (b, k)
    assert bool(mask.any(dim=1).all())  # m_pred = 1: the two views cover the image


def official_visible_order(
    noise: list[list[float]], perm_visible: list[int], perm_masked: list[int], mask_ratio: float, cells_side: int | None
) -> list[tuple[list[int], list[int]]]:
    """The official ``ids_keep`` of both views, one image at a time, as token ids in the official order.

    View 1: the kept units in ascending noise. View 2: view 1's kept units that stay visible, in the
    order of their permutation, then view 1's removed units that become visible, likewise. Block
    masking (``cells_side`` given, 2 x 2 cells): the cell list is expanded into tokens as every
    cell's top-left token in cell order, then every top-right, bottom-left, bottom-right token.
    """
    out = []
    for row in noise:
        kept, removed, extra = _official_view1(row, mask_ratio, 1.0)
        view2 = [kept[j] for j in perm_visible[extra:]] + [removed[j] for j in perm_masked[len(removed) - extra :]]
        views = []
        for units in (kept, view2):
            if cells_side is None:
                views.append(list(units))
                continue
            side = 2 * cells_side
            views.append(
                [
                    (2 * (u // cells_side) + a) * side + 2 * (u % cells_side) + b
                    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))
                    for u in units
                ]
            )
        out.append(tuple(views))
    return out


@pytest.mark.parametrize(
    ("mask_ratio", "pattern", "block"), [(0.75, "random", 1), (0.6, "block", 2)], ids=["random-0.75", "block-0.6"]
)
def test_official_vis_pairing_equals_the_official_forward_loss(monkeypatch, mask_ratio, pattern, block) -> None:
    """``loss.vis_pairing=official``: the visible term equals the official ``forward_loss``'s, computed here
    from its description: ``pred_vis`` in ``ids_keep`` order against ``target[mask == 0]`` (ascending), for
    the same draws; the default ``token`` pairing gives each prediction its own token's target."""
    grid, batch, dim = (14, 14), 3, 5
    noise, perm_visible, perm_masked, token_scores = _official_draw(grid, mask_ratio, block, batch)
    masking = DisjointMasking(grid, mask_ratio, 2, 1.0, _replaying(monkeypatch, token_scores, block), block)
    mask, drawn = masking.sample(batch, with_order=True)
    views = MaskedViews.from_mask(mask, masking.num_masked, drawn)
    gen = torch.Generator().manual_seed(1)
    per_token_pred = torch.randn(batch, 196, dim, generator=gen)  # a prediction for every token of every image
    targets = torch.randn(batch, 196, dim, generator=gen)
    out = SimpleNamespace(
        pred_masked=gather_tokens(per_token_pred, views.ids_masked), pred_visible=gather_tokens(per_token_pred, views.ids_keep)
    )

    orders = official_visible_order(noise.tolist(), perm_visible, perm_masked, mask_ratio, None if block == 1 else 7)
    pred_rows, target_rows = [], []
    for b, image_views in enumerate(orders):
        for ids_keep in image_views:
            pred_rows.append(per_token_pred[b, ids_keep])  # the official encoder's output order
            target_rows.append(targets[b, sorted(ids_keep)])  # target[mask == 0]
    official = F.smooth_l1_loss(torch.stack(pred_rows), torch.stack(target_rows), beta=2.0)
    aligned = F.smooth_l1_loss(torch.stack([per_token_pred[b, sorted(v)] for b, vs in enumerate(orders) for v in vs]),
                               torch.stack(target_rows), beta=2.0)  # fmt: skip

    loss = dmjd_loss(out, targets, views, mim_weight=0.0, vis_pairing="official")["loss_vis"]
    torch.testing.assert_close(loss, official, rtol=1e-6, atol=0)
    torch.testing.assert_close(dmjd_loss(out, targets, views, mim_weight=0.0)["loss_vis"], aligned, rtol=1e-6, atol=0)
    assert official != aligned


def test_an_exact_predictor_scores_zero_only_under_the_token_pairing() -> None:
    """A visible branch that predicts every token's own target exactly: L_vis = 0 under Eq. 5's pairing,
    > 0 under the official one (each prediction meets another visible token's target)."""
    masking = DisjointMasking((14, 14), 0.6, 2, 1.0, "block", 2)
    mask, drawn = masking.sample(4, torch.Generator().manual_seed(0), with_order=True)
    views = MaskedViews.from_mask(mask, masking.num_masked, drawn)
    targets = torch.randn(4, 196, 108, generator=torch.Generator().manual_seed(1))
    out = SimpleNamespace(
        pred_masked=gather_tokens(targets, views.ids_masked), pred_visible=gather_tokens(targets, views.ids_keep)
    )
    assert dmjd_loss(out, targets, views, vis_pairing="token")["loss_vis"] == 0
    assert dmjd_loss(out, targets, views, vis_pairing="official")["loss_vis"] > 0.1
    with pytest.raises(ValueError, match="draw order"):
        dmjd_loss(out, targets, MaskedViews.from_mask(mask), vis_pairing="official")


def test_draw_order_lists_each_views_visible_tokens_once() -> None:
    """``DisjointMasking.sample``'s order is a permutation of each view's visible tokens, for K = 3 too."""
    for masking in (DisjointMasking((8, 8), 0.5, 3, 1.0, "block", 2), DisjointMasking((6, 10), 0.75, 3, 1.0)):
        mask, drawn = masking.sample(5, torch.Generator().manual_seed(0), with_order=True)
        assert torch.equal(mask, masking(5, torch.Generator().manual_seed(0)))
        assert torch.equal(drawn.sort(dim=-1).values, MaskedViews.from_mask(mask).ids_keep)


def test_pretrain_step_with_the_official_vis_pairing(tmp_path) -> None:
    """``loss.vis_pairing=official`` reaches the trainer's loss through the config."""
    cfg = tiny_config("loss.vis_pairing=official")
    trainer = Pretrainer(cfg, tmp_path)
    views = trainer.step_masks(0, 2)
    assert views.ids_keep_drawn is not None
    images = torch.rand(2, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size)
    official = trainer.compute_losses(images, views)["loss_vis"]
    # drawn in ascending order, the official pairing is the token pairing
    token = trainer.compute_losses(images, dataclasses.replace(views, ids_keep_drawn=views.ids_keep))["loss_vis"]
    assert torch.isfinite(official) and official != token


@pytest.mark.parametrize(("units", "mask_ratio"), [(49, 0.6), (196, 0.75)])
def test_official_dmjd_bench_replays_the_official_draws_as_scores(units: int, mask_ratio: float) -> None:
    """``benchmarks/official_dmjd.py``'s vectorised scores equal this file's per-unit reference for the
    same official draws, and it reorders HOG dimensions (cell_y, cell_x, bin, channel) -> (.., channel, bin)."""
    from dmjd.bench.official_dmjd import official_scores, official_to_dmjd_dims, replay_official_draws

    keep = int(units * (1 - mask_ratio))
    noise, perm_kept, perm_removed = replay_official_draws(0, 3, units, keep, torch.device("cpu"))
    reference = _scores_reproducing(noise, perm_kept.tolist(), perm_removed.tolist(), mask_ratio)
    torch.testing.assert_close(official_scores(noise, perm_kept, perm_removed, keep).flatten(0, 1), reference)
    official = torch.arange(108).view(2, 2, 9, 3)  # [cell_y, cell_x, bin, channel]
    assert official_to_dmjd_dims(official.flatten()).tolist() == official.permute(0, 1, 3, 2).flatten().tolist()


def test_official_dmjd_bench_names_a_folder_that_is_not_a_checkout(tmp_path) -> None:
    from dmjd.bench.official_dmjd import import_official_dmjd

    with pytest.raises(FileNotFoundError, match=r"models_dmjd.py"):
        import_official_dmjd(tmp_path)


def test_official_counts_and_the_block_cell_layout() -> None:
    """Hand counts of the official code: 147 of 196 tokens at 0.75; 30 of 49 cells (120 tokens) at
    0.6 with 2 x 2 cells, cell (r, c) covering tokens (2r + a) * 14 + 2c + b."""
    assert DisjointMasking((14, 14), 0.75, 2, 1.0).num_masked == 147
    block = DisjointMasking((14, 14), 0.6, 2, 1.0, "block", 2)
    assert (block.num_masked, block.num_predicted) == (120, 196)
    assert _expand_cells({0, 8}, 7) == {0, 1, 14, 15, 30, 31, 44, 45}
    # below m = 0.5 the official views cover n_corr + int(m L) tokens: 2 n_corr - 1 = 117 of 196 at 0.3
    noise = torch.rand(2, 196, generator=torch.Generator().manual_seed(0)).tolist()
    views = official_two_views(noise, list(range(137)), list(range(59)), 0.3, 1.0)
    assert [len(a | b) for a, b in views] == [117, 117] and DisjointMasking((14, 14), 0.3).num_masked == 59


# ------------------------------------------------------------------ learning-rate rule (Eq. 4)

GPUS = 8
# Hand-computed: blr * b_u * (m_pred / m_corr) / 256 (Eq. 4, nominal rates) or blr * b / 256
# (linear rule), with b_u = batch_size * accum_iter * 8 GPUs.
PRESET_LR_8_GPUS = {
    "beit-vit-b": 1.875e-4 * (64 * 4 * 8) / 256,  # 1.5e-3
    "beit-vit-b-dm": 1.875e-4 * (64 * 2 * 8) * (0.8 / 0.4) / 256,  # 1.5e-3
    "convmae-convit-b": 1.5e-4 * (64 * 6 * 8) / 256,  # 1.8e-3
    "demo": 1.5e-4 * (128 * 8) * (1.0 / 0.625) / 256,
    "dmjd-convit-b": 6e-4 * (64 * 8) * (1.0 / 0.6) / 256,  # 2.0e-3, official PRETRAIN.md
    "dmjd-convit-b-clip": 6e-4 * (64 * 8) * (1.0 / 0.6) / 256,
    "dmjd-convit-l": 6e-4 * (64 * 8) * (1.0 / 0.6) / 256,
    "dmjd-small-32px": 1.5e-4 * (256 * 8) * (1.0 / 0.625) / 256,
    "dmjd-vit-b": 1.5e-4 * (64 * 8) * (1.0 / 0.6) / 256,  # 5e-4
    "dmjd-vit-b-clip": 1.5e-4 * (64 * 8) * (1.0 / 0.6) / 256,
    "dmjd-vit-l": 1.5e-4 * (64 * 8) * (1.0 / 0.6) / 256,
    "mae-vit-b": 1.5e-4 * (64 * 8 * 8) / 256,  # 2.4e-3, MAE's batch 4096
    "maskfeat-vit-b": 2e-4 * (64 * 4 * 8) / 256,  # 1.6e-3
    "maskfeat-vit-b-dmjd": 2e-4 * (64 * 2 * 8) * (1.0 / 0.6) / 256,
    "simmim-vit-b": 5e-5 * (64 * 4 * 8) / 256,  # 4e-4
    "simmim-vit-b-dm": 5e-5 * (64 * 2 * 8) * (1.0 / 0.6) / 256,
}


def test_every_preset_has_a_hand_computed_lr() -> None:
    assert set(PRESET_LR_8_GPUS) == set(available_presets())


@pytest.mark.parametrize("preset", sorted(PRESET_LR_8_GPUS))
def test_preset_lr_on_8_gpus(preset: str) -> None:
    cfg = load_config(preset)
    o = cfg.optim
    assert peak_lr(o, build_masking(cfg), o.batch_size * o.accum_iter * GPUS) == pytest.approx(
        PRESET_LR_8_GPUS[preset], rel=1e-12
    )


# preset: (gradient clipping, crop scale, ETE = K x epochs), each with its source in the preset file.
PRESET_RECIPES = {
    "dmjd-convit-b": (None, (0.5, 1.0), 800),  # official PRETRAIN.md: 400 epochs, K = 2
    "dmjd-convit-l": (3.0, (0.5, 1.0), 800),  # official: --clip_grad 3.0 for ConViT-L only
    "dmjd-convit-b-clip": (None, (0.5, 1.0), 400),  # Table VI "400+10000"
    "dmjd-vit-b": (None, (0.2, 1.0), 800),  # paper: MAE settings, no clipping
    "dmjd-vit-l": (None, (0.2, 1.0), 800),
    "dmjd-vit-b-clip": (None, (0.2, 1.0), 400),
    "convmae-convit-b": (None, (0.2, 1.0), 1600),  # ConvMAE PRETRAIN.md
    "mae-vit-b": (None, (0.2, 1.0), 800),
    "maskfeat-vit-b": (0.02, (0.5, 1.0), 1600),
    "maskfeat-vit-b-dmjd": (0.02, (0.5, 1.0), 1600),  # Table VI
    "simmim-vit-b": (5.0, (0.67, 1.0), 800),
    "simmim-vit-b-dm": (5.0, (0.67, 1.0), 800),  # Table III
    "beit-vit-b": (3.0, (0.08, 1.0), 800),
    "beit-vit-b-dm": (3.0, (0.08, 1.0), 600),  # Table III
}


@pytest.mark.parametrize("preset", sorted(PRESET_RECIPES))
def test_preset_clipping_crop_and_ete(preset: str) -> None:
    cfg = load_config(preset)
    clip, crop, ete = PRESET_RECIPES[preset]
    assert (cfg.optim.clip_grad, cfg.data.crop_scale, cfg.optim.epochs * cfg.masking.num_views) == (clip, crop, ete)


def test_lr_rule_uses_the_nominal_rates_unless_asked() -> None:
    """Official main_pretrain: lr = blr * batch * accum * world * pred_ratio / mask_ratio / 256 with
    the arguments; block 0.6 on 14 x 14 really masks 30 / 49 = 0.612, which would lower lr by 2 %."""
    cfg = load_config("dmjd-convit-b")
    masking = build_masking(cfg)
    assert lr_rates(masking) == (0.6, 1.0)
    assert lr_rates(masking, "realised") == pytest.approx((120 / 196, 1.0))
    realised = load_config("dmjd-convit-b", ["optim.lr_rates=realised"]).optim
    assert peak_lr(realised, masking, 512) == pytest.approx(6e-4 * 512 * (196 / 120) / 256)
    assert peak_lr(realised, masking, 512) / peak_lr(cfg.optim, masking, 512) == pytest.approx(0.6 * 196 / 120)
    # m_pred defaults to min(1, K * m_corr) when masking.pred_ratio is null.
    assert DisjointMasking((14, 14), 0.4, num_views=2, pattern="rectangle").nominal_pred_ratio == 0.8


# ------------------------------------------------------------------ rounding surprises


def test_rate_warning_names_requested_and_realised_rates() -> None:
    """Block masking at patch 8 on 32 px: a 2 x 2 grid of cells, 0.6 masks 3 of 4 cells = 0.75."""
    (warning,) = DisjointMasking((4, 4), 0.6, 2, 1.0, "block", 2).rate_warnings()
    assert "m_corr" in warning and "0.6" in warning and "12 of 16 tokens = 0.75" in warning
    assert DisjointMasking((14, 14), 0.6, 2, 1.0, "block", 2).rate_warnings() == []  # 0.612: within 0.02


def test_masking_errors_count_tokens() -> None:
    with pytest.raises(ValueError, match=r"needs 196 tokens \(49 2x2 cells\) of 196 tokens"):
        DisjointMasking((14, 14), 0.3, 2, 1.0, "block", 2)
    with pytest.raises(ValueError, match="masks 3 tokens of 3 tokens"):
        DisjointMasking((1, 3), 0.7)


def test_start_up_prints_nominal_and_realised_rates_and_the_warning(tmp_path, capsys) -> None:
    cfg = tiny_config(
        "masking.mask_ratio=0.6", "masking.pattern=block", "masking.block_size=2", "optim.epochs=1", "data.limit=64"
    )
    Pretrainer(cfg, tmp_path, overwrite=True).fit()
    out = capsys.readouterr().out
    assert "m_corr 0.6 (realised 0.75), m_pred 1 (realised 1); the lr rule uses the nominal rates" in out
    assert "WARNING: m_corr (masking.mask_ratio) 0.6 is realised as 12 of 16 tokens = 0.75" in out


# ------------------------------------------------------------------ weight decay


def _group_names(model: torch.nn.Module, decay_tokens: bool) -> tuple[set[str], set[str]]:
    ids = {id(p): name for name, p in model.named_parameters()}
    decay, plain = pretrain_param_groups(model, 0.05, decay_tokens)
    return {ids[id(p)] for p in decay["params"]}, {ids[id(p)] for p in plain["params"]}


@pytest.mark.parametrize("style", ["mae", "simmim"])
def test_tokens_are_decayed_like_mae_and_the_official_code(style: str) -> None:
    """MAE's add_weight_decay without a skip list: every parameter with more than one dimension is
    decayed (cls and mask tokens included), 1-d parameters and biases are not."""
    cfg = tiny_config(f"model.style={style}", "model.vdb=false")
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    decay, plain = _group_names(model, decay_tokens=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay == {n for n in trainable if model.get_parameter(n).ndim > 1 and not n.endswith(".bias")}
    assert plain == trainable - decay
    tokens = {"encoder.cls_token", "mpb.mask_token" if style == "mae" else "mask_token"}
    assert tokens <= decay
    old_decay, old_plain = _group_names(model, decay_tokens=False)
    assert tokens <= old_plain and old_decay == decay - tokens


# ------------------------------------------------------------------ targets and the two branches


def test_pixel_targets_come_from_the_normalised_image_by_default() -> None:
    images = torch.rand(2, 3, 32, 32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cfg = load_config("mae-vit-b", ["model.img_size=32"])
    torch.testing.assert_close(build_target(cfg)(images), PixelTarget(16, 3, mean=mean, std=std)(images))
    raw = load_config("mae-vit-b", ["model.img_size=32", "target.pixel_space=raw"])
    torch.testing.assert_close(build_target(raw)(images), PixelTarget(16, 3)(images))


@pytest.mark.parametrize("preset", ["dmjd-convit-b", "maskfeat-vit-b-dmjd", "dmjd-vit-b"])
def test_both_branches_regress_the_same_target(preset: str) -> None:
    """Official forward_loss: MSE on masked tokens and Smooth L1 (beta 2) on visible tokens against
    the one normalised target tensor, no further normalisation."""
    cfg = load_config(preset)
    views = MaskedViews.from_mask(build_masking(cfg)(2, generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(1)
    targets = torch.randn(2, 196, 108, generator=gen)
    out = type("Out", (), {})()
    out.pred_masked = torch.randn(4, views.num_masked, 108, generator=gen)
    out.pred_visible = torch.randn(4, views.num_visible, 108, generator=gen)
    losses = build_loss(cfg)(out, targets, views)
    masked, visible = gather_tokens(targets, views.ids_masked), gather_tokens(targets, views.ids_keep)
    torch.testing.assert_close(losses["loss_mim"], ((out.pred_masked - masked) ** 2).mean())
    torch.testing.assert_close(losses["loss_vis"], F.smooth_l1_loss(out.pred_visible, visible, beta=2.0))


# ------------------------------------------------------------------ ConViT: size and probe features


def _count(arch_kwargs: dict) -> int:
    with torch.device("meta"):
        encoder = create_encoder(**arch_kwargs)
    return sum(p.numel() for p in encoder.parameters())


def test_convmae_baseline_has_convmae_b_mlp_ratios() -> None:
    """ConvMAE-B (models_convmae.py): MLP ratios 4, 4, 4; DMJD's ConViT-B: 8, 8, 4 (3.41 M more)."""
    cfg = load_config("convmae-convit-b")
    assert cfg.model.mlp_ratios == (4.0, 4.0, 4.0)
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    assert [b.mlp.fc1.out_channels // b.mlp.fc1.in_channels for b in (*model.encoder.blocks1, *model.encoder.blocks2)] == [
        4
    ] * 4
    convmae = _count({"arch": "convit", "size": "base", "mlp_ratios": (4.0, 4.0, 4.0)})
    dmjd = _count({"arch": "convit", "size": "base"})
    assert (convmae, dmjd) == (88_932_736, 92_345_728)
    assert load_config("dmjd-convit-b").model.mlp_ratios is None


def _official_probe_feature(encoder: ConViT, x: Tensor) -> Tensor:
    """models_convit.ConvViT.forward_features with global_pool, written out: the stages without the
    fusion convolutions, mean over tokens, then a fresh LayerNorm (eps 1e-6) as fc_norm."""
    h = encoder.patch_embed1(x)
    for block in encoder.blocks1:
        h = block(h)
    h = encoder.patch_embed2(h)
    for block in encoder.blocks2:
        h = block(h)
    tokens = encoder.patch_embed4(encoder.patch_embed3(h).flatten(2).transpose(1, 2)) + encoder.pos_embed
    for block in encoder.blocks3:
        tokens = block(tokens)
    fc_norm = torch.nn.LayerNorm(encoder.embed_dim, eps=1e-6)
    return fc_norm(tokens.mean(dim=1))


def test_convit_probe_features_follow_the_official_protocol() -> None:
    torch.manual_seed(0)
    encoder = ConViT(img_size=32, patch_size=8, embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2).eval()
    for p in encoder.parameters():  # non-trivial norms and fusion so that a wrong path shows
        p.data.add_(0.1 * torch.randn_like(p))
    images = torch.rand(6, 3, 32, 32)
    dataset = [(images[i], i % 2) for i in range(6)]
    assert default_pool(encoder) == "avg_fc_norm"
    feats, _ = extract_features(encoder, dataset, batch_size=4, progress=False)
    with torch.no_grad():
        expected = _official_probe_feature(encoder, images)
        classifier = ConViTClassifier(encoder.arch_kwargs(), num_classes=2).eval()
        load_encoder_weights(classifier, encoder.state_dict())
        finetune_view = classifier.forward_head(classifier.forward_features(images), pre_logits=True)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(finetune_view, expected, atol=1e-4, rtol=1e-4)  # the fine-tuning classifier agrees
    old, _ = extract_features(encoder, dataset, batch_size=4, pool="avg", progress=False)
    assert not torch.allclose(old, expected, atol=1e-2)  # the earlier feature (fused, normed) differs
    assert math.isclose(float(feats.mean(dim=1).abs().max()), 0.0, abs_tol=1e-5)  # LayerNorm: zero mean
