"""``model.init``: pre-training continues from published weights (encoder, decoder when it fits)."""

import pytest
import timm
import torch

from conftest import tiny_config
from dmjd.config import ConfigError, load_config
from dmjd.engine import Pretrainer
from dmjd.engine.run_report import model_words
from dmjd.eval.export import export_encoder
from dmjd.eval.loading import InputSpec, load_encoder
from dmjd.io.checkpoint import CheckpointError
from dmjd.models.sources import load_source
from test_sources import hf_vit_mae, official_mae_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ONE_EPOCH = ["optim.epochs=1", "data.limit=128"]


def test_pretraining_continues_from_a_hugging_face_vit_mae(tmp_path):
    hf_vit_mae(tmp_path)
    cfg = tiny_config(*ONE_EPOCH, f"model.init={tmp_path / 'hf'}", "target.name=pixels")
    trainer = Pretrainer(cfg, tmp_path / "run")
    source = load_source(tmp_path / "hf")
    enc, mpb = trainer.model.encoder.state_dict(), trainer.model.mpb.state_dict()
    torch.testing.assert_close(enc["blocks.1.mlp.fc2.weight"], source.encoder["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(enc["patch_embed.proj.weight"], source.encoder["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(mpb["blocks.0.attn.qkv.weight"], source.decoder["blocks.0.attn.qkv.weight"])
    assert trainer.cfg.model.decoder_dim == 16 and trainer.cfg.model.decoder_depth == 1
    notes = "\n".join(trainer._start_notes)
    assert "loaded: the encoder" in notes and "patch embedding adapted from 3 to 1 channels" in notes
    assert "loaded: the masked prediction branch (17 of 19 tensors)" in notes  # pred: 192 RGB pixels vs 64 grey
    assert "fresh: pred.bias, pred.weight (the source predicts 192 values per patch" in notes
    assert "fresh: the visible distillation branch" in notes
    trainer.fit()
    # the result is an ordinary run: its export loads in timm through local-dir:
    encoder, run_cfg = load_encoder(tmp_path / "run" / "checkpoint-last.pth")
    assert run_cfg.model.init == str(tmp_path / "hf")
    exported = export_encoder(encoder, tmp_path / "export", InputSpec.from_config(run_cfg))
    model = timm.create_model(f"local-dir:{exported.folder}", pretrained=True).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), encoder.forward_features(x))


def test_official_mae_start_resamples_and_takes_the_architecture(tmp_path):
    official_mae_checkpoint(tmp_path / "mae.pth")  # ViT 192 wide, 2 blocks, patch 8 at 32 px
    cfg = tiny_config(*ONE_EPOCH, f"model.init={tmp_path / 'mae.pth'}", "model.embed_dim=null", "model.depth=null",
                      "model.num_heads=null", "model.img_size=48", "target.name=pixels", "model.vdb=false")  # fmt: skip
    trainer = Pretrainer(cfg, tmp_path / "run")
    m = trainer.cfg.model
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size, m.img_size, m.decoder_dim) == (192, 2, 3, 8, 48, 16)
    notes = "\n".join(trainer._start_notes)
    assert "position embedding resampled from 4^2 to 6^2 tokens" in notes
    assert "visible distillation branch" not in notes
    # the start-up line names the source's ViT, not the size preset it replaced (model.size is 'tiny')
    assert model_words(trainer.cfg) == "ViT 192 wide, 2 blocks, 3 heads"
    assert model_words(load_config("mae-vit-b")) == "vit-base"


def test_a_size_the_config_fixes_must_match_and_nothing_is_written(tmp_path):
    official_mae_checkpoint(tmp_path / "mae.pth")
    cfg = tiny_config(*ONE_EPOCH, f"model.init={tmp_path / 'mae.pth'}")  # tiny_config fixes embed_dim=32
    with pytest.raises(ConfigError, match=r"is wider than the model.embed_dim=32 the config fixes"):
        Pretrainer(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"missing\.pth does not exist"):
        Pretrainer(tiny_config(*ONE_EPOCH, f"model.init={tmp_path / 'missing.pth'}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_fresh_run_on_few_images_names_model_init(tmp_path):
    trainer = Pretrainer(tiny_config(*ONE_EPOCH), tmp_path / "run")
    assert any("rarely beats a pre-trained encoder" in line and "model.init" in line for line in trainer._start_notes)


def test_the_auto_recipe_takes_the_architecture_from_model_init(tmp_path):
    from dmjd.recipe import CONTINUED_BLR, auto_config

    official_mae_checkpoint(tmp_path / "mae.pth")  # patch 8
    cfg, choices, _ = auto_config(["data.name=embedded", f"model.init={tmp_path / 'mae.pth'}"], "cpu", 1e9)
    keys = {c.key: c.value for c in choices}
    assert "model.embed_dim" not in keys and "model.depth" not in keys and keys["optim.blr"] == CONTINUED_BLR
    assert cfg.model.img_size == 32 and cfg.model.patch_size == 8 and cfg.train.budget_warmup < 0.1
    trainer = Pretrainer(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 1})}), tmp_path / "run")
    assert trainer.cfg.model.embed_dim == 192


def test_the_continued_recipe_evaluates_labelled_data_about_five_times(tmp_path):
    from dmjd.recipe import auto_config

    official_mae_checkpoint(tmp_path / "mae.pth")
    init = f"model.init={tmp_path / 'mae.pth'}"
    short, long = (auto_config(["data.name=embedded", init, f"train.budget={b}"], "cpu", 1e9) for b in ("10s", "2h"))
    intervals = [{c.key: c for c in r.choices}["monitor.interval"] for r in (short, long)]
    assert intervals[0].value == 1 and intervals[1].value > 1 and "the starting encoder" in intervals[1].reason
    assert short.config.monitor.interval == 1


def test_closing_lines_compare_with_the_starting_encoder():
    from dmjd.cli import achievement_lines, meaning_lines

    summary = {"evaluation": {"knn_top1": 0.8, "epoch": 2}, "evaluation_untrained": {"knn_top1": 0.7}}
    assert "starting encoder 0.7000" in achievement_lines(summary, "photos", init="mae.pth")[0]
    assert "from 70.0 % (at the start) to 80.0 %" in meaning_lines(summary, "photos", init="mae.pth")[0]
    assert "untrained encoder 0.7000" in achievement_lines(summary, "photos")[0]


def test_the_closing_words_call_a_change_within_the_test_splits_sampling_error_none():
    from dmjd.cli import meaning_lines
    from dmjd.eval.chance import sampling_error

    assert abs(sampling_error(0.62, 1000) - 0.0301) < 1e-4
    small = {"evaluation": {"knn_top1": 0.621, "epoch": 2}, "evaluation_untrained": {"knn_top1": 0.620},
             "evaluation_test_images": 1000}  # fmt: skip
    assert "within the sampling error of its 1,000 test images" in meaning_lines(small, "photos", init="s.pth")[0]
    large = {**small, "evaluation_test_images": 10**7}  # 0.03 points of sampling error
    fall = {**small, "evaluation": {"knn_top1": 0.55, "epoch": 2}}
    assert "lowered the encoder's kNN top-1 (62.0 % untrained, 55.0 % now)" in meaning_lines(fall, "photos")[0]
    assert "raised the encoder's kNN top-1 from 62.0 % (untrained) to 62.1 %" in meaning_lines(large, "photos")[0]
