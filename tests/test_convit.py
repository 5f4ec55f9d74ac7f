"""Tests of the ConViT (ConvMAE) encoder: masked convolutions, K views, official checkpoints, presets."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from timm.optim import param_groups_layer_decay
from torch import Tensor

from conftest import tiny_config
from dmjd.config import load_config
from dmjd.engine import Pretrainer
from dmjd.engine.builders import build_dmjd_model, build_target
from dmjd.io.checkpoint import CheckpointError
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.models import DMJDModel, build_model, create_encoder, encoder_state_dict
from dmjd.models.convert import infer_convit_arch, load_official_convit, official_encoder_weights
from dmjd.models.convit import CONVIT_SIZES, ConViT, stage_strides

SMALL = {"embed_dims": (8, 12, 16), "depths": (1, 1, 2), "num_heads": 2, "mlp_ratios": (2.0, 2.0, 2.0)}


def small_convit(img_size: int | tuple[int, int] = 32, patch_size: int = 8, in_chans: int = 3, **kw) -> ConViT:
    torch.manual_seed(0)
    return ConViT(img_size=img_size, patch_size=patch_size, in_chans=in_chans, **{**SMALL, **kw}).eval()


def random_views(batch: int, views: int, grid: tuple[int, int], masked: int, seed: int = 0) -> MaskedViews:
    """Independent random masks per view, ``masked`` tokens each."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.rand(batch, views, grid[0] * grid[1], generator=gen).argsort(-1).argsort(-1)
    return MaskedViews.from_mask(ranks < masked)


def pixel_mask(token_mask: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """``bool[B, L]`` token mask -> ``bool[B, 1, H, W]`` pixel mask."""
    cells = token_mask.view(-1, 1, *grid)
    return cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


# --------------------------------------------------------------------------- geometry


def test_stage_strides_hand_values() -> None:
    assert stage_strides(16) == (4, 2, 2)  # ConvMAE at 224 px
    assert stage_strides(8) == (2, 2, 2)
    assert stage_strides(4) == (1, 2, 2)
    assert stage_strides(2) == (1, 1, 2)
    assert stage_strides(1) == (1, 1, 1)
    assert stage_strides(12) == (3, 2, 2)
    with pytest.raises(ValueError, match="patch_size"):
        stage_strides(0)


@given(st.integers(1, 128))
def test_stage_strides_multiply_to_patch_size(patch: int) -> None:
    s1, s2, s3 = stage_strides(patch)
    assert s1 * s2 * s3 == patch
    assert s3 == (2 if patch % 2 == 0 else 1) and s2 in (1, 2)


@pytest.mark.parametrize(("img_size", "patch_size"), [(32, 8), ((16, 32), 4), (64, 16)])
def test_shapes_and_gradients(img_size: int | tuple[int, int], patch_size: int) -> None:
    model = small_convit(img_size, patch_size).train()
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    grid = (height // patch_size, width // patch_size)
    assert model.grid_size == grid and model.embed_dim == 16 and model.num_prefix_tokens == 0
    tokens = grid[0] * grid[1]
    views = random_views(2, 2, grid, masked=tokens // 2)
    x = torch.randn(2, 3, height, width)
    latent = model.forward_masked(x, views)
    assert latent.shape == (2 * 2, tokens - tokens // 2, 16)
    features = model.forward_features(x)
    assert features.shape == (2, tokens, 16)
    (latent.square().mean() + features.square().mean()).backward()
    for name, param in model.named_parameters():
        if name == "pos_embed":
            assert not param.requires_grad and param.grad is None
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_rejects_views_of_another_grid_and_bad_sizes() -> None:
    model = small_convit()
    with pytest.raises(ValueError, match="tokens"):
        model.forward_masked(torch.randn(1, 3, 32, 32), random_views(1, 1, (2, 2), 1))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ConViT(img_size=30, patch_size=8, **SMALL)
    with pytest.raises(ValueError, match="num_heads"):
        ConViT(img_size=32, patch_size=8, **{**SMALL, "num_heads": 3})


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize("pattern", ["block", "random"])
def test_masked_pixels_do_not_reach_visible_tokens(pattern: str) -> None:
    """Replacing every pixel masked in view k leaves view k's visible outputs unchanged."""
    model, grid, patch = small_convit(), (4, 4), 8
    masking = DisjointMasking(grid, 0.5, num_views=2, pattern=pattern, block_size=2 if pattern == "block" else 1)
    views = MaskedViews.from_mask(masking(3, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        base = model.forward_masked(x, views).view(3, 2, views.num_visible, -1)
        for k in range(2):
            hidden = pixel_mask(views.mask[:, k], grid, patch)
            changed = torch.where(hidden, 10 * torch.randn_like(x), x)
            out = model.forward_masked(changed, views).view(3, 2, views.num_visible, -1)
            torch.testing.assert_close(out[:, k], base[:, k], rtol=0, atol=1e-5)
            # The other view sees part of that region (disjoint masking), so its tokens move.
            assert not torch.allclose(out[:, 1 - k], base[:, 1 - k], atol=1e-3)
            # Without masked convolution the change does leak into the visible tokens.
            full, full_changed = model.forward_features(x), model.forward_features(changed)
            visible = ~views.mask[:, k]
            assert not torch.allclose(full_changed[visible], full[visible], atol=1e-3)


def test_k_view_batching_matches_one_view_at_a_time() -> None:
    model, grid = small_convit(), (4, 4)
    views = random_views(2, 3, grid, masked=10, seed=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        batched = model.forward_masked(x, views).view(2, 3, views.num_visible, -1)
        for k in range(3):
            single = model.forward_masked(x, MaskedViews.from_mask(views.mask[:, k : k + 1]))
            torch.testing.assert_close(batched[:, k], single)


def reference_forward_masked(model: ConViT, x: Tensor, views: MaskedViews) -> Tensor:
    """Slow per-image, per-view ConvMAE forward written from the official algorithm: the visible
    mask multiplies the 1x1-conv output, upsampled by nearest interpolation; ``torch.gather``."""
    _, s2, s3 = model.strides
    height, width = model.grid_size
    rows = []
    for b in range(views.batch_size):
        for k in range(views.num_views):
            visible = (~views.mask[b, k]).float().view(1, 1, height, width)
            h = model.patch_embed1(x[b : b + 1])
            for stage, factor in ((model.blocks1, s2 * s3), (model.blocks2, s3)):
                keep = F.interpolate(visible, scale_factor=factor, mode="nearest")
                for blk in stage:
                    h = h + blk.conv2(blk.attn(keep * blk.conv1(blk.norm1(h))))
                    h = h + blk.mlp(blk.norm2(h))
                if stage is model.blocks1:
                    stage1 = model.stage1_output_decode(h).flatten(2).transpose(1, 2)
                    h = model.patch_embed2(h)
            stage2 = model.stage2_output_decode(h).flatten(2).transpose(1, 2)
            tokens = model.patch_embed4(model.patch_embed3(h).flatten(2).transpose(1, 2)) + model.pos_embed
            index = views.ids_keep[b, k].view(1, -1, 1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
            for blk in model.blocks3:
                tokens = blk(tokens)
            fused = torch.gather(stage1, 1, index) + torch.gather(stage2, 1, index)
            rows.append(model.norm(tokens + fused))
    return torch.cat(rows)


def test_matches_independent_reference_on_a_non_square_grid() -> None:
    model = small_convit((32, 48), 8)  # 4 x 6 tokens: a transposed mask would show
    views = random_views(2, 2, (4, 6), masked=14, seed=5)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_masked(x, views), reference_forward_masked(model, x, views))


def test_nothing_masked_equals_forward_features() -> None:
    model = small_convit()
    views = MaskedViews.from_mask(torch.zeros(2, 1, 16, dtype=torch.bool))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_masked(x, views), model.forward_features(x))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    views = random_views(2, 2, (4, 4), masked=8)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = small_convit().train()
        model.set_grad_checkpointing(enable)
        model.forward_masked(x, views).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_bf16_autocast() -> None:
    model = small_convit()
    views = random_views(2, 2, (4, 4), masked=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_masked(torch.randn(2, 3, 32, 32), views)
    assert out.shape == (4, 8, 16) and torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------- registry, sizes


def test_registry_overrides_and_dmjd_model() -> None:
    encoder = create_encoder("convit", "tiny", 32, 8, 1, embed_dim=32, depth=2, num_heads=2)
    assert isinstance(encoder, ConViT)
    assert encoder.embed_dims == (32, 64, 32) and len(encoder.blocks3) == 2 and len(encoder.blocks1) == 2
    with pytest.raises(ValueError, match="unknown ConViT size 'huge'"):
        create_encoder("convit", "huge", 224, 16, 3)
    torch.manual_seed(0)
    model = build_model(
        target_dim=7, arch="convit", size="tiny", img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=1,
        num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2, vdb_hidden=16,
    )  # fmt: skip
    assert model.mpb.num_prefix_tokens == 0
    views = random_views(3, 2, (4, 4), masked=10)
    out = model(torch.randn(3, 1, 32, 32), views)
    assert out.latent.shape == (6, 6, 32)
    assert out.pred_masked.shape == (6, 10, 7) and out.pred_visible.shape == (6, 6, 7)


def _closed_form_params(size: str, img: int = 224, patch: int = 16, chans: int = 3, fusion: bool = True) -> int:
    """Parameter count of ConvMAE's encoder written out layer by layer."""
    p = CONVIT_SIZES[size]
    (d1, d2, d3), depths, ratios = p["embed_dims"], p["depths"], p["mlp_ratios"]
    s1, s2, s3 = 4, 2, 2
    embed = lambda cin, d, s: cin * d * s * s + d + 2 * d  # conv + LayerNorm  # noqa: E731

    def conv_block(d: int, r: float) -> int:
        h = int(d * r)
        return 2 * d + (d * d + d) + (25 * d + d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)

    def attn_block(d: int, r: float) -> int:
        h = int(d * r)
        return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)

    total = embed(chans, d1, s1) + embed(d1, d2, s2) + embed(d2, d3, s3) + d3 * d3 + d3
    total += depths[0] * conv_block(d1, ratios[0]) + depths[1] * conv_block(d2, ratios[1])
    total += depths[2] * attn_block(d3, ratios[2]) + 2 * d3 + (img // patch) ** 2 * d3
    if fusion:
        total += d1 * d3 * (s2 * s3) ** 2 + d3 + d2 * d3 * s3**2 + d3
    return total


@pytest.mark.parametrize("size", sorted(CONVIT_SIZES))
def test_parameter_counts_match_closed_form(size: str) -> None:
    with torch.device("meta"):
        encoder = create_encoder("convit", size, 224, 16, 3)
    assert sum(p.numel() for p in encoder.parameters()) == _closed_form_params(size)


def test_base_matches_convmae_published_88m() -> None:
    """ConvMAE-B's published size (88M, fine-tuning network: no fusion convolutions)."""
    assert round(_closed_form_params("base", fusion=False) / 1e6) == 88


def test_group_matcher_gives_convmae_layer_decay() -> None:
    model = small_convit(depths=(1, 1, 3))
    decay = 0.5
    groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=decay)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    num_layers = len(model.blocks3) + 1  # ConvMAE's util/lr_decay.py
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(("patch_embed", "blocks1", "blocks2")):
            layer = 0
        elif name.startswith("blocks3"):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        assert scale[id(param)] == pytest.approx(decay ** (num_layers - layer)), name


# --------------------------------------------------------------------------- official checkpoints


def official_state_dict(
    dims: tuple[int, int, int] = (8, 12, 16),
    depths: tuple[int, int, int] = (1, 2, 2),
    mlp: tuple[int, int, int] = (8, 8, 4),
    grid: int = 14,
    chans: int = 3,
    decoder: int = 8,
    target: int = 108,
) -> dict[str, Tensor]:
    """Random tensors under the key names and shapes of the official ``DMJDConViT`` (ConvMAE's
    ``MaskedAutoencoderConvViT`` plus ``proj_embed`` / ``predictor``), strides (4, 2, 2)."""
    shapes: dict[str, tuple[int, ...]] = {}
    cins = (chans, dims[0], dims[1])
    for i, (cin, d, s) in enumerate(zip(cins, dims, (4, 2, 2)), start=1):
        shapes |= {f"patch_embed{i}.proj.weight": (d, cin, s, s), f"patch_embed{i}.proj.bias": (d,),
                   f"patch_embed{i}.norm.weight": (d,), f"patch_embed{i}.norm.bias": (d,)}  # fmt: skip
    d3 = dims[2]
    shapes |= {"patch_embed4.weight": (d3, d3), "patch_embed4.bias": (d3,),
               "stage1_output_decode.weight": (d3, dims[0], 4, 4), "stage1_output_decode.bias": (d3,),
               "stage2_output_decode.weight": (d3, dims[1], 2, 2), "stage2_output_decode.bias": (d3,),
               "pos_embed": (1, grid * grid, d3), "norm.weight": (d3,), "norm.bias": (d3,)}  # fmt: skip
    for stage in (1, 2):
        d, h = dims[stage - 1], dims[stage - 1] * mlp[stage - 1]
        for j in range(depths[stage - 1]):
            p = f"blocks{stage}.{j}."
            shapes |= {p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "conv1.weight": (d, d, 1, 1),
                       p + "conv1.bias": (d,), p + "conv2.weight": (d, d, 1, 1), p + "conv2.bias": (d,),
                       p + "attn.weight": (d, 1, 5, 5), p + "attn.bias": (d,), p + "norm2.weight": (d,),
                       p + "norm2.bias": (d,), p + "mlp.fc1.weight": (h, d, 1, 1), p + "mlp.fc1.bias": (h,),
                       p + "mlp.fc2.weight": (d, h, 1, 1), p + "mlp.fc2.bias": (d,)}  # fmt: skip

    def vit_block(p: str, d: int, h: int) -> dict[str, tuple[int, ...]]:
        return {p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                p + "norm2.weight": (d,), p + "norm2.bias": (d,), p + "mlp.fc1.weight": (h, d),
                p + "mlp.fc1.bias": (h,), p + "mlp.fc2.weight": (d, h), p + "mlp.fc2.bias": (d,)}  # fmt: skip

    for j in range(depths[2]):
        shapes |= vit_block(f"blocks3.{j}.", d3, d3 * mlp[2])
    shapes |= {"decoder_embed.weight": (decoder, d3), "decoder_embed.bias": (decoder,),
               "mask_token": (1, 1, decoder), "decoder_pos_embed": (1, grid * grid, decoder),
               "decoder_norm.weight": (decoder,), "decoder_norm.bias": (decoder,),
               "decoder_pred.weight": (target, decoder), "decoder_pred.bias": (target,)}  # fmt: skip
    shapes |= vit_block("decoder_blocks.0.", decoder, decoder * mlp[0])
    # DMJD's visible distillation branch: Linear, LN, GELU, Linear, LN, GELU, Linear, LN (no affine).
    shapes |= {"proj_embed.0.weight": (decoder, d3), "proj_embed.0.bias": (decoder,),
               "proj_embed.1.weight": (decoder,), "proj_embed.1.bias": (decoder,),
               "proj_embed.3.weight": (decoder, decoder), "proj_embed.3.bias": (decoder,),
               "proj_embed.4.weight": (decoder,), "proj_embed.4.bias": (decoder,),
               "proj_embed.6.weight": (decoder, decoder), "proj_embed.6.bias": (decoder,),
               "predictor.0.weight": (target, decoder), "predictor.0.bias": (target,)}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) for key, shape in shapes.items()}


def test_official_checkpoint_round_trip(tmp_path) -> None:
    official = official_state_dict()
    path = tmp_path / "dmjd_convit.pth"
    args = argparse.Namespace(model="dmjd_convit_base_patch16_dec8_hog", mask_ratio=0.6, blr=6e-4)
    torch.save({"model": official, "optimizer": {}, "epoch": 399, "args": args}, path)
    encoder = load_official_convit(path)
    assert encoder.arch_kwargs() == {
        "img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dims": (8, 12, 16), "depths": (1, 2, 2),
        "num_heads": 1, "mlp_ratios": (8.0, 8.0, 4.0),
    }  # fmt: skip
    encoder_keys = {k for k in official if not k.startswith(("decoder_", "mask_token", "proj_embed", "predictor"))}
    state = encoder.state_dict()
    assert set(state) == encoder_keys
    for key in encoder_keys:
        assert torch.equal(state[key], official[key]), key
    # Back to the official names: the encoder export of a DMJD model built on it.
    mpb_model = build_model(target_dim=108, arch="convit", size="tiny", decoder_dim=8, decoder_depth=1, decoder_heads=2)
    model = DMJDModel(encoder, mpb_model.mpb, mpb_model.vdb)
    exported = encoder_state_dict({"model": {f"module.{k}": v for k, v in model.state_dict().items()}})
    assert set(exported) == encoder_keys
    assert all(torch.equal(exported[k], official[k]) for k in encoder_keys)


def test_official_mapping_strips_wrappers_and_reads_convmae_mlp_ratios() -> None:
    official = official_state_dict(dims=(8, 16, 768), depths=(2, 2, 1), mlp=(4, 4, 4), grid=2)
    weights = official_encoder_weights({f"module.{k}": v for k, v in official.items()})
    assert "mask_token" not in weights and "patch_embed1.proj.weight" in weights
    arch = infer_convit_arch(weights)
    assert arch["mlp_ratios"] == (4.0, 4.0, 4.0) and arch["img_size"] == 32 and arch["depths"] == (2, 2, 1)
    assert arch["num_heads"] == 12  # ConViT-B's stage-3 width
    assert infer_convit_arch(weights, num_heads=8)["num_heads"] == 8
    encoder = load_official_convit(official, num_heads=8)
    x = torch.randn(1, 3, 32, 32)
    assert torch.isfinite(encoder.forward_features(x)).all()


def test_official_mapping_rejects_classifiers_and_mismatches() -> None:
    official = official_state_dict()
    with pytest.raises(CheckpointError, match="fine-tuned"):
        official_encoder_weights({**official, "head.weight": torch.zeros(10, 16)})
    broken = {**official, "blocks3.0.attn.qkv.weight": torch.zeros(40, 16)}
    with pytest.raises(CheckpointError, match="do not fit"):
        load_official_convit(broken)
    with pytest.raises(CheckpointError, match="not a ConvMAE"):
        official_encoder_weights({"encoder.patch_embed.proj.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="lack"):
        load_official_convit({k: v for k, v in official.items() if k != "pos_embed"})


def test_encoder_export_reloads_strictly() -> None:
    torch.manual_seed(0)
    model = build_model(
        target_dim=12, arch="convit", size="tiny", img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2,
        decoder_dim=16, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip
    fresh = ConViT(**model.encoder.arch_kwargs())
    fresh.load_state_dict(encoder_state_dict(model), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_features(x), model.encoder.eval().forward_features(x))


def test_exported_convit_is_callable_like_a_timm_model(tmp_path) -> None:
    from dmjd.eval.export import export_encoder
    from dmjd.eval.loading import InputSpec

    encoder = small_convit(in_chans=1)
    exported = export_encoder(encoder, tmp_path / "export", InputSpec(32, 1, (0.5,), (0.25,)))
    scope: dict = {}
    exec(exported.snippet, scope)  # the printed line: rebuild, load strictly, eval mode
    model, x = scope["model"], torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        pooled = model(x)
        torch.testing.assert_close(pooled, encoder.forward_features(x).mean(1))
        assert pooled.shape == (2, 16) and torch.equal(model.forward_head(model.forward_features(x)), pooled)
    classifier = ConViT(**exported.kwargs, num_classes=5).eval()
    missing, unexpected = classifier.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    with torch.no_grad():
        assert classifier(x).shape == (2, 5)
        assert classifier.forward_head(encoder.forward_features(x), pre_logits=True).shape == (2, 16)
    assert classifier.arch_kwargs()["num_classes"] == 5 and "num_classes" not in encoder.arch_kwargs()


# --------------------------------------------------------------------------- presets, training


def test_convit_presets() -> None:
    b = load_config("dmjd-convit-b")
    m, k, o = b.model, b.masking, b.optim
    assert (m.arch, m.size, m.img_size, m.patch_size, m.decoder_dim, m.decoder_depth, m.vdb) == (
        "convit", "base", 224, 16, 512, 8, True,
    )  # fmt: skip
    assert (k.pattern, k.mask_ratio, k.num_views, k.pred_ratio, k.block_size) == ("block", 0.6, 2, 1.0, 2)
    assert (b.target.name, b.target.hog_variant, build_target(b).dim) == ("hog", "dmjd", 108)
    assert (o.epochs, o.warmup_epochs, o.blr, o.betas, o.weight_decay, o.lr_rule, o.batch_size) == (
        400, 20, 6e-4, (0.9, 0.95), 0.05, "dmjd", 64,
    )  # fmt: skip
    assert o.clip_grad is None
    large = load_config("dmjd-convit-l")
    assert large.model.size == "large" and large.optim.clip_grad == 3.0
    assert large.model_dump(exclude={"model": {"size"}, "optim": {"clip_grad"}}) == b.model_dump(
        exclude={"model": {"size"}, "optim": {"clip_grad"}}
    )
    base = load_config("convmae-convit-b")
    model, target = base.model, base.target
    assert (model.arch, model.vdb, target.name, target.norm_pix) == ("convit", False, "pixels", True)
    assert (base.masking.pattern, base.masking.mask_ratio, base.masking.num_views) == ("random", 0.75, 1)


TINY_CONVIT = ("model.arch=convit", "model.size=tiny", "data.limit=128", "optim.batch_size=16", "optim.lr=2e-3")


def test_convit_pretraining_loss_goes_down(tmp_path) -> None:
    cfg = tiny_config(*TINY_CONVIT)
    trainer = Pretrainer(cfg, tmp_path)
    assert isinstance(trainer.model.encoder, ConViT)
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert summary["steps"] == 2 * 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert isinstance(build_dmjd_model(cfg, 64).encoder, ConViT)
