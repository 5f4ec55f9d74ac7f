"""DMJD as a plug-in: SimMIM style, MaskFeat, BEiT tokens and frozen-teacher targets, DM on and off.

Every tokenizer and teacher here is small, randomly initialised, saved to disk and loaded through
the path a user's weights take; nothing touches the network.
"""

from __future__ import annotations

import math
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import tiny_config
from dmjd.config import ConfigError, available_presets, load_config
from dmjd.engine import Pretrainer
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target
from dmjd.engine.metrics import read_metrics
from dmjd.losses import dmjd_loss, l1_prediction_loss, method_loss, token_prediction_loss
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.models import DMJDOutput, SimMIMModel, encoder_state_dict
from dmjd.models.simmim import LinearPredictionHead, encode_full_sequence
from dmjd.targets import DALLEEncoder, TeacherTarget, TeacherWeightsError, TokenizerTarget
from dmjd.targets.hog import HOGTarget

# ------------------------------------------------------------------------------------ losses


def _views(mask_rows: list[list[list[int]]]) -> MaskedViews:
    return MaskedViews.from_mask(torch.tensor(mask_rows, dtype=torch.bool))


def test_l1_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 4.0]]])
    assert l1_prediction_loss(pred, target).item() == pytest.approx((1 + 2 + 2 + 0) / 4)


def test_cross_entropy_over_the_codebook_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0]]])
    ids = torch.tensor([[1, 2]])
    # softmax row 1: [1, 3, 1] / 5 -> p(1) = 3/5; row 2: [2, 1, 1] / 4 -> p(2) = 1/4.
    expected = (-math.log(3 / 5) - math.log(1 / 4)) / 2
    assert token_prediction_loss(logits, ids).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="integer token ids"):
        token_prediction_loss(logits, ids.float())


def test_method_loss_gathers_each_views_targets_by_hand():
    # One image, L = 4 tokens, K = 2 views masking tokens {0, 1} and {2, 3}.
    views = _views([[[1, 1, 0, 0], [0, 0, 1, 1]]])
    targets = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    pred = torch.tensor([[[0.0], [0.0]], [[3.0], [6.0]]])
    out = DMJDOutput(pred_masked=pred, pred_visible=None, latent=torch.empty(0))
    # view 1: |0-1| + |0-2| ; view 2: |3-3| + |6-4|  -> 5 / 4
    losses = method_loss(out, targets, views, mim_loss="l1", mim_weight=2.0)
    assert losses["loss_mim"].item() == pytest.approx(5 / 4)
    assert losses["loss"].item() == pytest.approx(2 * 5 / 4) and "loss_vis" not in losses


def test_method_loss_ce_scores_masked_and_visible_ids_by_hand():
    views = _views([[[1, 0], [0, 1]]])  # L = 2, view 1 masks token 0, view 2 masks token 1
    ids = torch.tensor([[0, 1]])
    masked_logits = torch.tensor([[[math.log(3.0), 0.0]], [[0.0, 0.0]]])  # p = 3/4 (id 0), 1/2 (id 1)
    visible_logits = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # visible: id 1, then id 0
    out = DMJDOutput(pred_masked=masked_logits, pred_visible=visible_logits, latent=torch.empty(0))
    losses = method_loss(out, ids, views, mim_loss="ce", vis_weight=0.5)
    mim = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    vis = (-math.log(1 / 2) - math.log(1 / 4)) / 2
    assert losses["loss_mim"].item() == pytest.approx(mim, rel=1e-6)
    assert losses["loss_vis"].item() == pytest.approx(vis, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(mim + 0.5 * vis, rel=1e-6)


def test_method_loss_mse_is_exactly_dmjd_loss():
    g = torch.Generator().manual_seed(0)
    views = MaskedViews.from_mask(DisjointMasking((4, 4), 0.5, num_views=2)(3, generator=g))
    out = DMJDOutput(torch.randn(6, 8, 5, generator=g), torch.randn(6, 8, 5, generator=g), torch.empty(0))
    targets = torch.randn(3, 16, 5, generator=g)
    ours = method_loss(out, targets, views, mim_weight=0.7, vis_weight=1.3, vis_beta=1.5)
    ref = dmjd_loss(out, targets, views, mim_weight=0.7, vis_weight=1.3, vis_beta=1.5)
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="mim_loss"):
        method_loss(out, targets, views, mim_loss="huber")


# ------------------------------------------------------------------------- SimMIM-style model


def _simmim(target_dim: int = 5, vdb: bool = True) -> SimMIMModel:
    cfg = tiny_config("model.style=simmim", f"model.vdb={str(vdb).lower()}", "model.in_chans=3")
    return build_dmjd_model(cfg, target_dim).eval()


def _reference_full_sequence(model: SimMIMModel, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One view at a time: replace masked patch embeddings, add positions, prepend cls, encode."""
    enc, rows = model.encoder, []
    for b in range(mask.shape[0]):
        for k in range(mask.shape[1]):
            patches = enc.patch_embed(x[b : b + 1])[0].clone()
            patches[mask[b, k]] = model.mask_token[0, 0]
            seq = torch.cat([enc.cls_token[0], patches]) + enc.pos_embed[0]
            rows.append(enc.norm(enc.blocks(seq[None]))[0])
    return torch.stack(rows)


def test_full_sequence_encoding_matches_a_per_view_reference():
    torch.manual_seed(0)
    model = _simmim()
    x = torch.randn(2, 3, 32, 32)
    views = MaskedViews.from_mask(DisjointMasking((4, 4), 0.5, num_views=2)(2))
    with torch.no_grad():
        fast = encode_full_sequence(model.encoder, x, views, model.mask_token)
        ref = _reference_full_sequence(model, x, views.mask)
        out = model(x, views)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    patches = ref[:, 1:]
    rows = torch.arange(4)[:, None]
    ids_masked, ids_keep = views.ids_masked.flatten(0, 1), views.ids_keep.flatten(0, 1)
    torch.testing.assert_close(out.pred_masked, model.mpb(patches[rows, ids_masked]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pred_visible, model.vdb(patches[rows, ids_keep]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.latent, torch.cat([ref[:, :1], patches[rows, ids_keep]], 1), rtol=1e-5, atol=1e-5)


def test_masked_pixels_do_not_reach_their_view():
    torch.manual_seed(1)
    model = _simmim()
    mask = torch.zeros(1, 2, 16, dtype=torch.bool)
    mask[0, 0, :8] = True  # view 1 hides the top half (rows 0-1 of the 4x4 grid)
    mask[0, 1, 8:] = True  # view 2 hides the bottom half
    views = MaskedViews.from_mask(mask)
    x = torch.randn(1, 3, 32, 32)
    changed = x.clone()
    changed[..., :16, :] += 5.0  # edit only the top half
    with torch.no_grad():
        a, b = model(x, views), model(changed, views)
    torch.testing.assert_close(a.pred_masked[0], b.pred_masked[0])  # view 1 never saw the top half
    assert not torch.allclose(a.pred_masked[1], b.pred_masked[1])  # view 2 did


def test_simmim_model_keeps_timm_encoder_keys_and_trains_the_mask_token():
    model = _simmim(vdb=False)
    weights = encoder_state_dict(model)
    timm.models.VisionTransformer(**model.encoder.timm_kwargs()).load_state_dict(weights, strict=True)
    assert "mask_token" in model.no_weight_decay() and "mask_token" not in weights
    views = MaskedViews.from_mask(DisjointMasking((4, 4), 0.5)(2))
    out = model.train()(torch.randn(2, 3, 32, 32), views)
    assert out.pred_visible is None and out.pred_masked.shape == (2, 8, 5)
    out.pred_masked.sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert isinstance(model.mpb, LinearPredictionHead)


def test_simmim_style_needs_a_vit():
    with pytest.raises(ConfigError, match=r"style=simmim needs model.arch=vit"):
        load_config("demo", ["model.style=simmim", "model.arch=convit"])


# --------------------------------------------------------------------------- presets & config


def test_method_presets_select_their_parts():
    names = set(available_presets())
    expected = {
        "maskfeat-vit-b": ("simmim", "hog", "mse", 1, False),
        "maskfeat-vit-b-dmjd": ("simmim", "hog", "mse", 2, True),
        "simmim-vit-b": ("simmim", "pixels", "l1", 1, False),
        "simmim-vit-b-dm": ("simmim", "pixels", "l1", 2, False),
        "beit-vit-b": ("simmim", "tokens", "ce", 1, False),
        "beit-vit-b-dm": ("simmim", "tokens", "ce", 2, False),
        "dmjd-vit-b-clip": ("mae", "teacher", "mse", 2, True),
        "dmjd-convit-b-clip": ("mae", "teacher", "mse", 2, True),
    }
    assert set(expected) <= names
    for name, parts in expected.items():
        cfg = load_config(name)
        got = (cfg.model.style, cfg.target.name, cfg.loss.mim_loss, cfg.masking.num_views, cfg.model.vdb)
        assert got == parts, name
    maskfeat = load_config("maskfeat-vit-b")
    hog = build_target(maskfeat)
    # SlowFast's MaskFeat builds HOGLayerC without a Gaussian window (mmpretrain's 16 is an option).
    assert isinstance(hog, HOGTarget) and (hog.variant, hog.gaussian_window, hog.dim) == ("maskfeat", 0, 108)
    beit_dm = build_masking(load_config("beit-vit-b-dm"))
    assert beit_dm.num_predicted == 2 * beit_dm.num_masked  # two rectangle views that never overlap


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["target.name=tokens", "target.tokenizer_path=/x.pth"], "go together"),
        (["loss.mim_loss=ce"], "go together"),
        (["target.name=tokens", "loss.mim_loss=ce"], "tokenizer_path"),
        (["target.name=teacher"], "teacher_model"),
    ],
)
def test_method_config_cross_checks(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("demo", overrides)


# ----------------------------------------------------------------------------- BEiT tokenizer


def _save_dalle(path, openai_names: bool = True) -> DALLEEncoder:
    """A small random DALL-E encoder (16 codes) saved as a state dict, with OpenAI's ``.w`` / ``.b``
    parameter names or PyTorch's."""
    torch.manual_seed(0)
    encoder = DALLEEncoder(n_hid=8, n_blk_per_group=1, in_chans=3, vocab_size=16).eval()
    state = encoder.state_dict()
    if openai_names:
        names = {".weight": ".w", ".bias": ".b"}
        state = {k.removesuffix(e) + short: v for k, v in state.items() for e, short in names.items() if k.endswith(e)}
    torch.save(state, path)
    return encoder


def test_dalle_encoder_has_the_released_layout():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DALLEEncoder().state_dict().items()}
    assert shapes["blocks.input.weight"] == (256, 3, 7, 7)
    assert shapes["blocks.group_1.block_1.res_path.conv_1.weight"] == (64, 256, 3, 3)
    assert shapes["blocks.group_2.block_1.id_path.weight"] == (512, 256, 1, 1)
    assert shapes["blocks.group_4.block_2.res_path.conv_4.weight"] == (2048, 512, 1, 1)
    assert shapes["blocks.output.conv.weight"] == (8192, 2048, 1, 1)
    assert not any("group_1.block_1.id_path" in k for k in shapes)  # same width: identity
    assert sum(math.prod(s) for s in shapes.values()) == 53_786_240


def test_tokenizer_target_gives_the_dalle_argmax_ids(tmp_path):
    path = tmp_path / "dall_e_encoder.pth"
    encoder = _save_dalle(path)
    target = TokenizerTarget(patch_size=8, in_chans=3, path=path, img_size=64)
    assert target.dim == 16 and target.token_grid == (8, 8)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(0.8 * images + 0.1).argmax(1).flatten(1)  # DALL-E's map_pixels
    ids = target(images)
    assert ids.dtype == torch.long and torch.equal(ids, expected)
    grey = torch.rand(2, 1, 64, 64)
    grey_target = TokenizerTarget(patch_size=8, in_chans=1, path=path, img_size=64)
    assert torch.equal(grey_target(grey), target(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="tokenizer_img_size=32"):  # 4 x 4 grid at stride 8
        TokenizerTarget(patch_size=16, in_chans=3, path=path, img_size=64)(images)
    with pytest.raises(ValueError, match="codebook of 16 tokens"):
        TokenizerTarget(patch_size=8, in_chans=3, path=path, img_size=64, vocab_size=8192)


class _TinyVQ(nn.Module):
    """A VQ tokenizer as a user would export it: patchify conv + nearest-codebook lookup -> ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 8, stride=8)
        self.codebook = nn.Parameter(torch.randn(12, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x * 2 - 1).permute(0, 2, 3, 1)  # [B, h, w, 4]
        return torch.cdist(z.flatten(1, 2), self.codebook[None].expand(x.shape[0], -1, -1)).argmin(-1).view(z.shape[:3])


def test_exported_vq_program_tokenizer(tmp_path):
    torch.manual_seed(0)
    vq = _TinyVQ().eval()
    path = tmp_path / "vq.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(vq, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},)), path)
    with pytest.raises(ValueError, match=r"set target.vocab_size"):
        TokenizerTarget(patch_size=8, in_chans=3, path=path, arch="program", img_size=32)
    target = TokenizerTarget(patch_size=8, in_chans=3, path=path, arch="program", img_size=32, vocab_size=12)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(images), vq(images).flatten(1))
    target.train()  # an exported program cannot switch modes; the target must not try
    assert target.training


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_tokenizer_returning_logits(tmp_path):
    path = tmp_path / "tok.ts"
    encoder = DALLEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16).eval()
    torch.jit.trace(encoder, torch.rand(1, 3, 32, 32)).save(str(path))
    target = TokenizerTarget(patch_size=8, in_chans=3, path=path, arch="program", img_size=32)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert target.dim == 16 and torch.equal(target(images), encoder(images).argmax(1).flatten(1))


def test_missing_tokenizer_says_what_to_download(tmp_path):
    cfg = load_config("beit-vit-b", [f"target.tokenizer_path={tmp_path}/dall_e_encoder.pth"])
    with pytest.raises(TeacherWeightsError) as info:
        build_target(cfg)
    message = str(info.value)
    assert "https://cdn.openai.com/dall-e/encoder.pkl" in message and f"{tmp_path}/dall_e_encoder.pth" in message


# ------------------------------------------------------------------------------ teacher targets


def _save_timm(tmp_path, name: str = "test_vit") -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    return model, str(path)


def test_timm_teacher_features_on_the_student_grid(tmp_path):
    model, path = _save_timm(tmp_path)
    target = TeacherTarget(patch_size=4, in_chans=3, model="test_vit", source="timm", pretrained=path, img_size=32)
    assert target.dim == model.embed_dim and target.teacher_grid == (2, 2)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # independent reference: the unpruned model, blocks without final norm
        x = (images - 0.5) / 0.5  # test_vit's mean / std
        tokens = model.blocks(model._pos_embed(model.patch_embed(x)))[:, model.num_prefix_tokens :]
        grid = tokens.transpose(1, 2).reshape(2, -1, 2, 2)
        ref = F.interpolate(grid, size=(8, 8), mode="bilinear", antialias=True).flatten(2).transpose(1, 2)
        ref = F.layer_norm(ref, ref.shape[-1:], eps=1e-6)
    out = target(images)
    assert out.shape == (2, 64, model.embed_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(
        TeacherTarget(4, 1, "test_vit", "timm", path, img_size=32)(grey), target(grey.expand(-1, 3, -1, -1))
    )


def test_teacher_is_frozen_and_reports_its_cost(tmp_path):
    _, path = _save_timm(tmp_path)
    target = TeacherTarget(patch_size=8, in_chans=3, model="test_vit", source="timm", pretrained=path, img_size=32)
    target.train()
    assert not any(m.training for m in target.network.modules())
    assert not any(p.requires_grad for p in target.parameters())
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    assert not target(images).requires_grad
    first = target.cost_metrics()
    target(images[:2])
    cost = target.cost_metrics()
    assert (first["tokenizer_images"], cost["tokenizer_images"]) == (3, 5)
    assert first["tokenizer_tflops"] > 0
    assert cost["tokenizer_tflops"] == pytest.approx(first["tokenizer_tflops"] * 5 / 3)
    assert cost["tokenizer_s"] > first["tokenizer_s"] > 0


def test_teacher_layer_choice_and_any_timm_model(tmp_path):
    _, path = _save_timm(tmp_path)
    images = torch.rand(2, 3, 32, 32)
    first = TeacherTarget(8, 3, "test_vit", "timm", path, layer=0, img_size=32)(images)
    last = TeacherTarget(8, 3, "test_vit", "timm", path, layer=-1, img_size=32)(images)
    assert first.shape == last.shape and not torch.allclose(first, last)
    with pytest.raises(ValueError, match="teacher_layer=7"):
        TeacherTarget(8, 3, "test_vit", "timm", path, layer=7, img_size=32)
    convnet, conv_path = _save_timm(tmp_path, "test_convnext")
    conv_target = TeacherTarget(8, 3, "test_convnext", "timm", conv_path, img_size=64)
    assert conv_target(torch.rand(2, 3, 32, 32)).shape == (2, 16, convnet.num_features)


def test_missing_teacher_weights_say_what_to_download(tmp_path):
    cfg = load_config(
        "demo",
        ["target.name=teacher", "target.teacher_source=timm", "target.teacher_model=test_vit",
         f"target.teacher_pretrained={tmp_path}/test_vit.safetensors"],
    )  # fmt: skip
    with pytest.raises(TeacherWeightsError) as info:
        build_target(cfg)
    message = str(info.value)
    assert f"{tmp_path}/test_vit.safetensors" in message and "huggingface.co/timm/test_vit" in message
    assert "target.teacher_pretrained=" in message


def test_open_clip_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"dmjd\[clip\]"):
        TeacherTarget(16, 3, "ViT-B-16", "open_clip", "openai")


def test_open_clip_teacher_from_a_local_file(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = tmp_path / "dmjd-test-clip.json"
    config.write_text(
        '{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, '
        '"head_width": 16}, "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}'
    )
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    clip = open_clip.create_model("dmjd-test-clip").eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pth")
    target = TeacherTarget(8, 3, "dmjd-test-clip", "open_clip", str(tmp_path / "clip.pth"), layer=-1)
    images = torch.rand(2, 3, 32, 32)
    pre = open_clip.get_model_preprocess_cfg(clip)
    x = (images - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = clip.visual.forward_intermediates(x, indices=[1], intermediates_only=True)["image_intermediates"][0]
    ref = F.layer_norm(ref.flatten(2).transpose(1, 2), (32,), eps=1e-6)
    torch.testing.assert_close(target(images), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(TeacherWeightsError, match="must be a tag of this model"):
        TeacherTarget(8, 3, "dmjd-test-clip", "open_clip", str(tmp_path / "missing.pth"))


def test_open_clip_tag_offline_says_what_to_download(monkeypatch):
    open_clip = pytest.importorskip("open_clip")

    def offline(*_args, **_kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(TeacherWeightsError) as info:
        TeacherTarget(16, 3, "ViT-B-16", "open_clip", "openai")
    message = str(info.value)
    assert "huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_pytorch_model.bin" in message
    assert "target.teacher_model=ViT-B-16-quickgelu" in message and "no network" in message


# ------------------------------------------------------------------- a few steps on the sample


DM_ON = ["masking.num_views=2", "masking.mask_ratio=0.5", "masking.pred_ratio=1.0"]
DM_OFF = ["masking.num_views=1", "masking.mask_ratio=0.5", "masking.pred_ratio=null"]
SHORT = ["data.limit=128", "optim.batch_size=32", "optim.epochs=2", "optim.warmup_epochs=0", "train.log_interval=1"]


def _fit(tmp_path, overrides: list[str]) -> tuple[Pretrainer, list[dict]]:
    trainer = Pretrainer(tiny_config(*SHORT, *overrides), tmp_path, overwrite=True)
    trainer.fit()
    return trainer, read_metrics(tmp_path / "metrics.jsonl")


def _assert_loss_falls(records: list[dict]) -> None:
    epochs = [r["loss"] for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(math.isfinite(v) for v in epochs)
    assert epochs[1] < epochs[0]


@pytest.mark.parametrize("dm", [DM_ON, DM_OFF], ids=["dm", "no-dm"])
@pytest.mark.parametrize(
    "method",
    [
        # SimMIM: L1 on mean/std-normalised pixels (SimMIM's target) moves slowly at the tiny
        # model's default lr; blr 1e-2 makes 8 steps show it learning.
        ["model.style=simmim", "model.vdb=false", "target.norm_pix=false", "loss.mim_loss=l1", "optim.blr=1e-2"],
        ["model.style=simmim", "target.name=hog", "target.hog_variant=maskfeat"],  # MaskFeat (+ JD)
    ],
    ids=["simmim", "maskfeat-jd"],
)
def test_simmim_style_methods_learn_with_and_without_dm(tmp_path, method, dm):
    trainer, records = _fit(tmp_path, method + dm)
    assert isinstance(trainer.model, SimMIMModel)
    _assert_loss_falls(records)
    assert records[-1]["kind"] == "epoch" and records[-1]["pred_ratio"] == pytest.approx(1.0 if dm is DM_ON else 0.5)


@pytest.mark.parametrize("dm", [DM_ON, DM_OFF], ids=["dm", "no-dm"])
def test_beit_learns_with_and_without_dm(tmp_path, dm):
    _save_dalle(tmp_path / "tok.pth", openai_names=False)
    beit = ["model.style=simmim", "model.vdb=false", "target.name=tokens", "loss.mim_loss=ce",
            f"target.tokenizer_path={tmp_path / 'tok.pth'}", "target.tokenizer_img_size=32"]  # fmt: skip
    trainer, records = _fit(tmp_path / "run", beit + dm)
    assert trainer.target.dim == 16 and trainer.model.mpb.pred.out_features == 16
    _assert_loss_falls(records)
    assert records[0]["loss"] < math.log(16) + 0.5  # cross-entropy over 16 codes starts near log 16


@pytest.mark.parametrize("dm", [DM_ON, DM_OFF], ids=["dm", "no-dm"])
def test_teacher_targets_run_once_per_image_and_learn(tmp_path, dm):
    _, path = _save_timm(tmp_path)
    teacher = ["target.name=teacher", "target.teacher_source=timm", "target.teacher_model=test_vit",
               f"target.teacher_pretrained={path}", "target.teacher_img_size=32"]  # fmt: skip
    trainer = Pretrainer(tiny_config(*SHORT, *teacher, *dm), tmp_path / "run", overwrite=True)
    seen: list[int] = []
    trainer.target.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    trainer.fit()
    assert seen == [32] * 8  # 8 steps of 32 images: once per image, whatever K is
    assert trainer.target.cost_metrics()["tokenizer_images"] == 8 * 32
    _assert_loss_falls(read_metrics(tmp_path / "run" / "metrics.jsonl"))


def test_build_loss_dispatches_on_the_method():
    views = MaskedViews.from_mask(torch.tensor([[[True, False]]]))
    out = DMJDOutput(torch.tensor([[[2.0]]]), None, torch.empty(0))
    targets = torch.tensor([[[0.0], [9.0]]])
    l1 = build_loss(load_config("demo", ["loss.mim_loss=l1", "model.vdb=false"]))(out, targets, views)
    mse = build_loss(load_config("demo", ["model.vdb=false"]))(out, targets, views)
    assert (l1["loss"].item(), mse["loss"].item()) == (2.0, 4.0)
