"""Published weights in their real formats: timm, Hugging Face ViTMAE, official MAE, dmjd exports.

For each, dmjd's encoder holding the source's weights gives the tokens of the source model's own
forward; bad sources fail with one line naming the file and the reason.
"""

import argparse
import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models import save_for_hf
from timm.models.vision_transformer import Block

from dmjd.errors import InputError
from dmjd.eval.export import export_encoder
from dmjd.eval.loading import InputSpec
from dmjd.io.checkpoint import CheckpointError
from dmjd.masking import MaskedViews
from dmjd.models import build_model, create_encoder
from dmjd.models.pos_embed import sincos_pos_embed_2d
from dmjd.models.sources import (
    load_matching,
    load_source,
    mae_sincos_pos_embed,
    mae_to_dmjd_channels,
    source_encoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_TIMM = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 0}


def tokens(model, x):
    with torch.no_grad():
        return model.eval().forward_features(x)


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM).eval()


def test_mae_pos_embed_channels_are_a_permutation_of_dmjd_s():
    for dim, side in ((16, 2), (64, 7), (512, 14)):
        perm = mae_to_dmjd_channels(dim)
        torch.testing.assert_close(mae_sincos_pos_embed(dim, side)[:, perm], sincos_pos_embed_2d(dim, (side, side))[0:])


# ------------------------------------------------------------------------------------ timm
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin", "hub-folder", "timm-name"])
def test_timm_weights_give_the_timm_model_s_tokens(tmp_path, fmt):
    model = timm_vit()
    if fmt == "hub-folder":
        save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
        source = load_source(tmp_path / "hub")
    elif fmt == "timm-name":  # the registered architecture, its weights from a local file
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
        torch.save(model.state_dict(), tmp_path / "w.pth")
        source = load_source("timm:vit_tiny_patch16_224", timm_overlay={"file": str(tmp_path / "w.pth")})
    else:
        path = tmp_path / f"w.{fmt}"
        save_file(model.state_dict(), str(path)) if fmt == "safetensors" else torch.save(model.state_dict(), path)
        source = load_source(path)
    a = source.arch
    depth, patch, side = (12, 16, 224) if fmt == "timm-name" else (2, 8, 32)
    assert (a.embed_dim, a.depth, a.num_heads, a.patch_size, a.img_size) == (192, depth, 3, patch, side)
    assert source.decoder is None
    x = torch.randn(2, 3, side, side)
    torch.testing.assert_close(tokens(source_encoder(source), x), tokens(model, x), rtol=1e-4, atol=1e-4)


def test_grid_and_channels_are_adapted_as_timm_does(tmp_path):
    model = timm_vit()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    encoder = source_encoder(load_source(tmp_path / "w.safetensors"), img_size=48, in_chans=1)
    grey = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=48, patch_size=8, depth=2,
                             in_chans=1, pretrained_cfg_overlay={"file": str(tmp_path / "w.safetensors"), "num_classes": 0})  # fmt: skip
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(tokens(encoder, x), tokens(grey, x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- Hugging Face
def hf_vit_mae(tmp_path, mask_ratio=0.75):
    transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=8,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
        mask_ratio=mask_ratio,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # the fixed sin-cos embeddings published checkpoints hold (transformers 5 leaves zeros)
        model.decoder.initialize_weights(16)
        model.vit.embeddings.position_embeddings.copy_(torch.cat([torch.zeros(1, 32), mae_sincos_pos_embed(32, 4)])[None])
    assert model.decoder.decoder_pos_embed.abs().sum() > 0
    model.save_pretrained(tmp_path / "hf")
    return model


def test_hf_vit_mae_encoder_gives_its_tokens(tmp_path):
    hf = hf_vit_mae(tmp_path, mask_ratio=0.0)
    source = load_source(tmp_path / "hf")
    assert source.kind == "Hugging Face ViTMAE folder" and source.arch.decoder is not None
    assert any("eps 1e-12" in note for note in source.notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # mask ratio 0 and increasing noise: every token, in grid order
        theirs = hf.vit(x, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    torch.testing.assert_close(tokens(source_encoder(source), x), theirs, rtol=1e-4, atol=1e-4)


def test_hf_vit_mae_decoder_predicts_what_it_predicts(tmp_path):
    """Encoder and decoder together: dmjd's model with the folder's weights predicts the masked
    patches as ViTMAEForPreTraining does, with MAE's position embedding turned into dmjd's."""
    hf = hf_vit_mae(tmp_path)
    source = load_source(tmp_path / "hf")
    d = source.arch.decoder
    model = build_model(target_dim=d.target_dim, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                        decoder_dim=d.dim, decoder_depth=d.depth, decoder_heads=d.num_heads,
                        decoder_mlp_ratio=d.mlp_ratio, vdb=False).eval()  # fmt: skip
    load_matching(model.encoder, source.encoder, source.source)
    load_matching(model.mpb, source.decoder, source.source)
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(x, noise=noise)
        views = MaskedViews.from_mask(out.mask.bool()[:, None])
        ours = model(x, views).pred_masked
    theirs = torch.gather(out.logits, 1, views.ids_masked[:, 0, :, None].expand(-1, -1, out.logits.shape[-1]))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- official MAE
def official_mae_checkpoint(path, with_decoder=True):
    """``{'model': state_dict}`` in the layout of facebookresearch/mae's MaskedAutoencoderViT."""
    state = dict(timm_vit().state_dict())
    if with_decoder:
        torch.manual_seed(1)
        blocks = torch.nn.Sequential(Block(16, 2, 4.0, qkv_bias=True))
        state |= {"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, 192),
                  "decoder_embed.bias": torch.randn(16),
                  "decoder_pos_embed": torch.cat([torch.zeros(1, 16), mae_sincos_pos_embed(16, 4)])[None],
                  "decoder_norm.weight": torch.rand(16), "decoder_norm.bias": torch.randn(16),
                  "decoder_pred.weight": torch.randn(192, 16), "decoder_pred.bias": torch.randn(192),
                  **{f"decoder_blocks.{k}": v for k, v in blocks.state_dict().items()}}  # fmt: skip
    torch.save({"model": state}, path)


@pytest.mark.parametrize("with_decoder", [True, False])
def test_official_mae_checkpoint(tmp_path, with_decoder):
    official_mae_checkpoint(tmp_path / "mae_pretrain.pth", with_decoder)
    source = load_source(tmp_path / "mae_pretrain.pth")
    assert (source.decoder is not None) == with_decoder and source.arch.embed_dim == 192
    if with_decoder:
        assert set(source.decoder) >= {"decoder_embed.weight", "mask_token", "blocks.0.attn.qkv.weight", "pred.bias"}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tokens(source_encoder(source), x), tokens(timm_vit(), x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- export
def test_dmjd_export_is_a_source(tmp_path):
    torch.manual_seed(0)
    encoder = create_encoder("vit", "tiny", img_size=32, patch_size=8, in_chans=1, depth=2).eval()
    export_encoder(encoder, tmp_path / "export", InputSpec(32, 1, (0.5,), (0.25,)))
    source = load_source(tmp_path / "export")
    assert source.arch.in_chans == 1 and source.arch.mean == (0.5,) and source.arch.std == (0.25,)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(tokens(source_encoder(source), x), tokens(encoder, x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- bad input
class NotAllowed:
    pass


def bad_sources(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    torch.manual_seed(0)
    torch.save({"model": timm.create_model("resnet10t", pretrained=False).state_dict()}, tmp_path / "resnet.pth")
    torch.save({"model": {}, "args": NotAllowed()}, tmp_path / "code.pth")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return {
        "notes.txt": "not a PyTorch checkpoint but a text file",
        "resnet.pth": "no ViT or ConViT encoder",
        "code.pth": "could run code",
        "empty": "without config.json",
        "bert": "model type 'bert'",
        "missing.pth": "does not exist",
    }


def test_bad_sources_fail_in_one_line_naming_the_file(tmp_path):
    for name, reason in bad_sources(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_source(tmp_path / name)
        message = str(err.value)
        assert "\n" not in message and name in message and reason in message, message
    with pytest.raises(CheckpointError, match="timm has no such model"):
        load_source("timm:vit_nonexistent_patch3")


def test_official_convmae_namespace_args_are_allowed(tmp_path):
    official_mae_checkpoint(tmp_path / "mae.pth")
    state = torch.load(tmp_path / "mae.pth")
    torch.save({**state, "args": argparse.Namespace(model="mae_vit_tiny")}, tmp_path / "with_args.pth")
    assert load_source(tmp_path / "with_args.pth").arch.depth == 2


# ---------------------------------------------------------------- evaluations of any source
def colour_folder(root):
    for split in ("train", "val"):
        for c, color in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (20, 20), color=tuple(v + 3 * i for v in color)).save(root / split / c / f"{i}.png")
    return [f"data.path={root}", "data.num_workers=0"]


def test_evaluations_read_published_sources(tmp_path, capsys):
    from test_eval_checkpoints import cli, json_lines

    hf_vit_mae(tmp_path)
    save_file(timm_vit().state_dict(), str(tmp_path / "timm.safetensors"))
    data, out = colour_folder(tmp_path / "tree"), ["--output-dir", str(tmp_path / "out")]
    for source in (tmp_path / "hf", tmp_path / "timm.safetensors"):
        cli(["knn", "--checkpoint", str(source), *out, *data])
    cli(["linprobe", "--checkpoint", str(tmp_path / "hf"), "--fast", *out, *data])
    cli(["visualize", "--checkpoint", str(tmp_path / "hf"), "--num-images", "2", *out, *data])
    lines = json_lines(capsys.readouterr().out)
    assert [r["kind"] for r in lines] == ["knn", "knn", "linprobe", "visualize"]
    assert lines[0]["checkpoint"] == str(tmp_path / "hf") and lines[0]["train_images"] == 12
    assert lines[2]["linprobe_top1"] == 1.0  # red vs blue
    assert (tmp_path / "out" / "visualize.png").stat().st_size > 0
    with pytest.raises(CheckpointError, match="no decoder dmjd can use"):
        cli(["visualize", "--checkpoint", str(tmp_path / "timm.safetensors"), *out, *data])
    with pytest.raises(InputError, match="give --output-dir"):
        cli(["knn", "--checkpoint", str(tmp_path / "hf"), *data])
    with pytest.raises(InputError, match="names no data set"):
        cli(["knn", "--checkpoint", str(tmp_path / "hf"), *out])


def test_official_convit_checkpoint(tmp_path):
    from dmjd.models.convit import CONVIT_SIZES, ConViT

    torch.manual_seed(0)
    tiny = CONVIT_SIZES["tiny"]
    convit = ConViT(img_size=32, patch_size=8, in_chans=3, embed_dims=tiny["embed_dims"], depths=tiny["depths"],
                    num_heads=tiny["num_heads"], mlp_ratios=tiny["mlp_ratios"]).eval()  # fmt: skip
    state = {**convit.state_dict(), "decoder_embed.weight": torch.zeros(4, 192), "mask_token": torch.zeros(1, 1, 4)}
    torch.save({"model": state, "args": argparse.Namespace(model="convmae_convvit_tiny")}, tmp_path / "convmae.pth")
    source = load_source(tmp_path / "convmae.pth")
    assert source.arch.arch == "convit" and source.arch.convit_size == "tiny" and source.decoder is None
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tokens(source_encoder(source), x), tokens(convit, x), rtol=1e-4, atol=1e-4)
