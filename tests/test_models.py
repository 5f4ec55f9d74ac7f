"""Tests of dmjd.models: timm compatibility, masked encoding, branches, builder and registry."""

import math

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from dmjd.masking import MaskedViews
from dmjd.models import (
    VIT_SIZES,
    DMJDModel,
    MaskedPredictionBranch,
    MaskedViT,
    VisibleDistillationBranch,
    available_encoders,
    build_model,
    create_encoder,
    encoder_state_dict,
    register_encoder,
    registry,
    sincos_pos_embed_2d,
)

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


def tiny_encoder(**kwargs: object) -> MaskedViT:
    return MaskedViT(**{**TINY, **kwargs}).eval()


def random_views(batch: int, views: int, tokens: int, masked: int, seed: int = 0) -> MaskedViews:
    """Independent random masks (not disjoint masking): each view masks ``masked`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.rand(batch, views, tokens, generator=gen).argsort(-1).argsort(-1)
    return MaskedViews.from_mask(ranks < masked)


def pixel_mask(token_mask: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """``bool[L]`` token mask -> ``bool[H, W]`` pixel mask."""
    return token_mask.view(grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)


# --------------------------------------------------------------------------- pos embed


def test_sincos_hand_computed_values() -> None:
    pe = sincos_pos_embed_2d(8, (2, 3), num_prefix_tokens=1)
    assert pe.shape == (7, 8) and pe.dtype == torch.float32
    assert torch.equal(pe[0], torch.zeros(8))
    # Token 5 = row 1, column 2; bands 1 and 1/100; blocks sin(y), sin(x), cos(y), cos(x).
    y, x = 1.0, 2.0
    expected = [
        math.sin(y), math.sin(y / 100), math.sin(x), math.sin(x / 100),
        math.cos(y), math.cos(y / 100), math.cos(x), math.cos(x / 100),
    ]  # fmt: skip
    torch.testing.assert_close(pe[1 + 5], torch.tensor(expected))
    # Origin token: all sines 0, all cosines 1.
    torch.testing.assert_close(pe[1], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_sincos_non_square_grid_is_row_major() -> None:
    height, width, dim = 3, 5, 16
    pe = sincos_pos_embed_2d(dim, (height, width))
    index = torch.arange(height * width)
    quarter = dim // 4
    torch.testing.assert_close(pe[:, 0], torch.sin((index // width).float()))
    torch.testing.assert_close(pe[:, quarter], torch.sin((index % width).float()))
    assert len({tuple(row.tolist()) for row in pe}) == height * width  # all positions distinct


def test_sincos_rejects_width_not_divisible_by_4() -> None:
    with pytest.raises(ValueError, match=r"divisible by 4|% 4"):
        sincos_pos_embed_2d(10, (2, 2))


# --------------------------------------------------------------------------- encoder vs timm


def test_encoder_loads_into_timm_with_identical_features() -> None:
    enc = tiny_encoder(patch_size=4, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    expected = enc.forward_features(x)
    kwargs = enc.timm_kwargs()
    named = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    plain = VisionTransformer(**kwargs)
    for other in (named, plain):
        other.load_state_dict(enc.state_dict(), strict=True)
        torch.testing.assert_close(other.eval().forward_features(x), expected, rtol=0, atol=1e-6)
    assert enc.timm_model_name() is None  # no timm name for 32 px / patch 4


def test_base_keys_and_shapes_match_timm() -> None:
    enc = create_encoder("vit", "base", img_size=224, patch_size=16)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    ours = {k: v.shape for k, v in enc.state_dict().items()}
    assert ours == {k: v.shape for k, v in ref.state_dict().items()}
    assert enc.timm_model_name() == "vit_base_patch16_224"
    assert enc.grid_size == (14, 14) and enc.embed_dim == 768 and enc.num_prefix_tokens == 1


@pytest.mark.parametrize(("size", "patch"), [(s, 14 if s == "huge" else 16) for s in VIT_SIZES])
def test_size_presets_match_timm_architectures(size: str, patch: int) -> None:
    name = f"vit_{size}_patch{patch}_224"
    with torch.device("meta"):  # shapes only, no memory or init cost
        enc = create_encoder("vit", size, img_size=224, patch_size=patch)
        ref = timm.create_model(name, pretrained=False, num_classes=0)
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert enc.timm_model_name() == name


def test_pos_embed_is_fixed_sincos_and_frozen() -> None:
    enc = tiny_encoder(img_size=(32, 48))
    assert enc.grid_size == (4, 6)
    assert not enc.pos_embed.requires_grad and "pos_embed" in enc.state_dict()
    torch.testing.assert_close(enc.pos_embed[0], sincos_pos_embed_2d(64, (4, 6), 1))
    enc.init_weights()  # re-initialising keeps the fixed embedding (timm's would randomise it)
    torch.testing.assert_close(enc.pos_embed[0], sincos_pos_embed_2d(64, (4, 6), 1))


def test_mae_initialisation() -> None:
    torch.manual_seed(0)
    enc = create_encoder("vit", "small", img_size=64, patch_size=16, depth=1)
    qkv = enc.blocks[0].attn.qkv.weight  # xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    assert torch.all(enc.blocks[0].attn.qkv.bias == 0)
    proj = enc.patch_embed.proj.weight.flatten(1)
    assert proj.abs().max() <= math.sqrt(6 / sum(proj.shape))
    assert 0.015 < enc.cls_token.std() < 0.025  # N(0, 0.02), timm's default is 1e-6


def test_invalid_patch_size_names_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"30.*8"):
        MaskedViT(img_size=30, patch_size=8, embed_dim=64, depth=1, num_heads=4)


# --------------------------------------------------------------------------- forward_masked


def reference_view(enc: MaskedViT, image: Tensor, visible: Tensor) -> Tensor:
    """One view, one image, selected with a boolean mask and run through timm's modules."""
    patches = enc.patch_embed(image[None]) + enc.pos_embed[:, 1:]
    tokens = torch.cat([enc.cls_token + enc.pos_embed[:, :1], patches[:, visible]], dim=1)
    return enc.norm(enc.blocks(tokens))[0]


def test_forward_masked_equals_per_view_reference() -> None:
    enc = tiny_encoder()
    x = torch.randn(3, 3, 32, 32)
    views = random_views(3, 2, 16, 12)
    out = enc.forward_masked(x, views)
    assert out.shape == (6, 1 + 4, 64)
    for b in range(3):
        for k in range(2):
            ref = reference_view(enc, x[b], ~views.mask[b, k])
            torch.testing.assert_close(out[b * 2 + k], ref, rtol=1e-5, atol=1e-5)


def test_forward_masked_one_masked_token_matches_reference() -> None:
    enc = tiny_encoder()
    x = torch.randn(2, 3, 32, 32)
    views = random_views(2, 1, 16, 1, seed=3)
    out = enc.forward_masked(x, views)
    assert out.shape == (2, 16, 64)
    for b in range(2):
        ref = reference_view(enc, x[b], ~views.mask[b, 0])
        torch.testing.assert_close(out[b], ref, rtol=1e-5, atol=1e-5)


def test_forward_masked_without_masking_equals_timm_forward_features() -> None:
    enc = tiny_encoder()
    x = torch.randn(2, 3, 32, 32)
    views = MaskedViews.from_mask(torch.zeros(2, 1, 16, dtype=torch.bool))
    torch.testing.assert_close(enc.forward_masked(x, views), enc.forward_features(x))


def test_masked_pixels_do_not_influence_their_view() -> None:
    enc = tiny_encoder()
    x = torch.randn(2, 3, 32, 32)
    views = random_views(2, 2, 16, 8, seed=1)
    out = enc.forward_masked(x, views)
    changed = x.clone()
    hidden = pixel_mask(views.mask[1, 0], enc.grid_size, 8)
    changed[1, :, hidden] = torch.randn(3, int(hidden.sum()))
    out2 = enc.forward_masked(changed, views)
    torch.testing.assert_close(out2[2], out[2], rtol=0, atol=1e-6)  # image 1, view 0
    torch.testing.assert_close(out2[:2], out[:2], rtol=0, atol=0)  # image 0 untouched
    assert not torch.allclose(out2[3], out[3])  # view 1 sees some of those patches


def test_forward_masked_rejects_views_of_another_grid() -> None:
    with pytest.raises(ValueError, match="tokens"):
        tiny_encoder().forward_masked(torch.randn(1, 3, 32, 32), random_views(1, 1, 64, 48))


def test_grad_checkpointing_gives_same_outputs_and_gradients() -> None:
    x = torch.randn(2, 3, 32, 32)
    views = random_views(2, 2, 16, 12)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        enc = MaskedViT(**TINY)
        enc.set_grad_checkpointing(checkpointing)
        out = enc.forward_masked(x, views)
        out.square().sum().backward()
        results.append((out.detach(), enc.blocks[0].attn.qkv.weight.grad))
    torch.testing.assert_close(results[0], results[1])


# --------------------------------------------------------------------------- branches


def reference_decoder(mpb: MaskedPredictionBranch, latent: Tensor, mask: Tensor) -> Tensor:
    """One view: scatter latents and mask tokens onto the grid with a boolean mask (no ids)."""
    prefix = mpb.num_prefix_tokens
    x = mpb.decoder_embed(latent)
    grid = mpb.mask_token[0].repeat(mask.numel(), 1)
    grid[~mask] = x[prefix:]
    seq = torch.cat([x[:prefix], grid + mpb.pos_embed[0]])[None]
    out = mpb.blocks(seq)[0, prefix:]
    return mpb.pred(mpb.norm(out[mask]))


@pytest.mark.parametrize(("depth", "prefix"), [(2, 1), (0, 1), (1, 0)])
def test_masked_prediction_branch_equals_reference(depth: int, prefix: int) -> None:
    torch.manual_seed(0)
    mpb = MaskedPredictionBranch(48, 20, (4, 4), decoder_dim=32, depth=depth, num_heads=4,
                                 num_prefix_tokens=prefix).eval()  # fmt: skip
    views = random_views(2, 3, 16, 10, seed=2)
    latent = torch.randn(6, prefix + 6, 48)
    out = mpb(latent, views)
    assert out.shape == (6, 10, 20)
    mask = views.mask.flatten(0, 1)
    for i in range(6):
        torch.testing.assert_close(out[i], reference_decoder(mpb, latent[i], mask[i]))


def test_masked_prediction_branch_depends_on_position() -> None:
    torch.manual_seed(0)
    mpb = MaskedPredictionBranch(16, 4, (4, 4), decoder_dim=16, depth=1, num_heads=2)
    latent = torch.randn(1, 1 + 15, 16)
    a = mpb(latent, MaskedViews.from_mask(torch.arange(16).view(1, 1, 16) == 0))
    b = mpb(latent, MaskedViews.from_mask(torch.arange(16).view(1, 1, 16) == 15))
    assert not torch.allclose(a, b)  # same inputs, masked token at another grid position


def test_visible_distillation_branch_structure() -> None:
    vdb = VisibleDistillationBranch(48, 20, hidden_dim=32)
    kinds = [type(m) for m in vdb.projector]
    lin, ln, act = nn.Linear, nn.LayerNorm, nn.GELU
    assert kinds == [lin, ln, act, lin, ln, act, lin, ln]
    assert [m.out_features for m in vdb.projector if isinstance(m, lin)] == [32, 32, 32]
    assert not vdb.projector[-1].elementwise_affine
    assert [m.eps for m in vdb.projector if isinstance(m, ln)] == [1e-6] * 3  # the official proj_embed's
    assert (vdb.predictor.in_features, vdb.predictor.out_features) == (32, 20)
    tokens = torch.randn(3, 5, 48)
    projected = vdb.projector(tokens)  # last LN without affine: each token standardised
    torch.testing.assert_close(projected.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    variance = projected.var(-1, unbiased=False)
    torch.testing.assert_close(variance, torch.ones(3, 5), atol=1e-3, rtol=0)
    assert vdb(tokens).shape == (3, 5, 20)


def test_visible_distillation_branch_linear_projector() -> None:
    vdb = VisibleDistillationBranch(48, 20, hidden_dim=32, projector="linear")
    assert isinstance(vdb.projector, nn.Linear) and vdb.projector.out_features == 32
    tokens = torch.randn(2, 3, 48)
    torch.testing.assert_close(vdb(tokens), vdb.predictor(vdb.projector(tokens)))
    with pytest.raises(ValueError, match="projector"):
        VisibleDistillationBranch(48, 20, projector="mlp")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DMJD model


def tiny_model(**kwargs: object) -> DMJDModel:
    cfg = {"target_dim": 24, "size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64,
           "depth": 2, "num_heads": 4, "decoder_dim": 32, "decoder_depth": 1,
           "decoder_heads": 4, "vdb_hidden": 32}  # fmt: skip
    return build_model(**{**cfg, **kwargs})


def test_dmjd_forward_shapes_and_branch_inputs() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    views = random_views(2, 3, 16, 12)
    out = model(torch.randn(2, 3, 32, 32), views)
    assert out.latent.shape == (6, 5, 64)
    assert out.pred_masked.shape == (6, 12, 24) and out.pred_visible.shape == (6, 4, 24)
    torch.testing.assert_close(out.pred_visible, model.vdb(out.latent[:, 1:]))
    torch.testing.assert_close(out.pred_masked, model.mpb(out.latent, views))
    no_vdb = tiny_model(vdb=False)
    assert no_vdb.vdb is None and no_vdb(torch.randn(2, 3, 32, 32), views).pred_visible is None


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    views = random_views(2, 2, 16, 12)
    out = model(torch.randn(2, 3, 32, 32), views)
    loss = (out.pred_masked - 1).square().mean() + (out.pred_visible - 1).square().mean()
    loss.backward()
    for name, param in model.named_parameters():
        if name == "encoder.pos_embed":
            assert not param.requires_grad and param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dmjd_runs_under_bfloat16_autocast() -> None:
    model = tiny_model()
    views = random_views(2, 2, 16, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32), views)
    assert out.pred_masked.shape == (4, 12, 24) and torch.isfinite(out.pred_masked).all()
    assert torch.isfinite(out.pred_visible).all()


def test_no_weight_decay_names() -> None:
    model = tiny_model()
    expected = {"encoder.cls_token", "encoder.pos_embed", "mpb.mask_token"}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(prefix=module_name, recurse=False):
            if isinstance(module, nn.LayerNorm) or name.endswith(".bias"):
                expected.add(name)
    assert model.no_weight_decay() == expected
    assert "encoder.blocks.0.attn.qkv.weight" not in expected  # sanity of the derivation


def test_encoder_state_dict_from_model_state_and_checkpoint() -> None:
    model = tiny_model()
    reference = model.encoder.state_dict()
    state = model.state_dict()
    sources = [
        model,
        state,
        {"model": state, "epoch": 3},
        {f"module.{k}": v for k, v in state.items()},
        {f"_orig_mod.{k}": v for k, v in state.items()},
    ]
    for source in sources:
        weights = encoder_state_dict(source)
        assert weights.keys() == reference.keys()
        timm_model = VisionTransformer(**model.encoder.timm_kwargs())
        timm_model.load_state_dict(weights, strict=True)
    with pytest.raises(ValueError, match="encoder"):
        encoder_state_dict({"head.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- registry


def test_registry_and_create_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "vit" in available_encoders()
    monkeypatch.setattr(registry, "_ENCODERS", dict(registry._ENCODERS))
    calls = []

    @register_encoder("toy")
    def toy(**kwargs: object) -> nn.Module:
        calls.append(kwargs)
        return nn.Identity()

    assert "toy" in available_encoders()
    create_encoder("toy", "small", img_size=32, patch_size=4, in_chans=1, depth=None, width=7)
    assert calls == [{"size": "small", "img_size": 32, "patch_size": 4, "in_chans": 1, "width": 7}]
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("toy")(toy)
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="unknown ViT size"):
        create_encoder("vit", "gigantic")


def test_create_encoder_overrides_keep_other_preset_fields() -> None:
    enc = create_encoder("vit", "tiny", img_size=32, patch_size=4, in_chans=1, depth=1,
                         embed_dim=None)  # fmt: skip
    assert enc.embed_dim == 192 and len(enc.blocks) == 1 and enc.patch_embed.proj.in_channels == 1
    assert enc.timm_kwargs() == {"img_size": 32, "patch_size": 4, "in_chans": 1, "embed_dim": 192,
                                 "depth": 1, "num_heads": 3, "mlp_ratio": 4.0, "num_classes": 0,
                                 "global_pool": "token"}  # fmt: skip


def test_build_model_wires_dimensions_and_checkpointing() -> None:
    model = tiny_model(grad_checkpointing=True, decoder_depth=0, projector="linear")
    assert model.encoder.grad_checkpointing
    assert len(model.mpb.blocks) == 0 and model.mpb.decoder_embed.in_features == 64
    assert model.mpb.pred.out_features == 24 and isinstance(model.vdb.projector, nn.Linear)
    assert model.mpb.pos_embed.shape == (1, 16, 32)


def test_decoder_mlp_ratio_is_configurable():
    """The official ConViT decoder uses MLP ratio 8; the config key reaches the decoder blocks."""
    from dmjd.config import load_config

    assert load_config("dmjd-convit-b").model.decoder_mlp_ratio == 8.0
    model = build_model(target_dim=8, size="tiny", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                        decoder_dim=16, decoder_depth=1, decoder_heads=2, decoder_mlp_ratio=8.0)  # fmt: skip
    assert model.mpb.blocks[0].mlp.fc1.out_features == 16 * 8
