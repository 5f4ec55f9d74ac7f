"""Fine-tuning: weight transfer with an allow-list, the MAE recipe on the embedded sample, resume."""

import pytest
import torch

from conftest import FINETUNE_SPEC as SPEC
from conftest import PLAIN_FINETUNE as PLAIN
from dmjd.engine import CheckpointError, OutputDirError, load_checkpoint
from dmjd.engine.metrics import read_metrics
from dmjd.eval.features import labelled_splits
from dmjd.eval.finetune import (
    Finetuner,
    FinetuneSettings,
    build_classifier,
    classifier_kwargs,
    finetune_transforms,
)
from dmjd.models import create_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_encoder():
    torch.manual_seed(0)
    return create_encoder("vit", "tiny", img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def splits(settings, n_train, n_val):
    train_tf, val_tf = finetune_transforms(SPEC, settings)
    train, val = labelled_splits("embedded", None, train_tf, val_tf, max_images=max(n_train, n_val))
    return torch.utils.data.Subset(train, range(n_train)), torch.utils.data.Subset(val, range(n_val))


def test_token_pool_classifier_reproduces_the_encoder_features():
    enc = tiny_encoder().eval()
    model = build_classifier(classifier_kwargs(enc, 7, FinetuneSettings(global_pool="token", drop_path=0.0)),
                             enc.state_dict()).eval()  # fmt: skip
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   enc.forward_features(x)[:, 0])  # fmt: skip
    assert model.head.weight.shape == (7, 32) and model.head.weight.abs().max() < 1e-3


def test_avg_pool_classifier_takes_every_encoder_weight_but_the_final_norm():
    enc = tiny_encoder()
    model = build_classifier(classifier_kwargs(enc, 4, FinetuneSettings()), enc.state_dict())
    state = model.state_dict()
    for key, value in enc.state_dict().items():
        if not key.startswith("norm."):
            assert torch.equal(state[key], value), key
    assert model.global_pool == "avg" and torch.all(state["fc_norm.weight"] == 1)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # stochastic depth, linear in depth


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape"])
def test_weights_outside_the_allow_list_are_errors(edit):
    enc = tiny_encoder()
    weights = dict(enc.state_dict())
    if edit == "missing":
        del weights["cls_token"]
    elif edit == "unexpected":
        weights["mask_token"] = torch.zeros(1, 1, 32)
    else:
        weights["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 32)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_classifier(classifier_kwargs(enc, 4, FinetuneSettings()), weights)


def test_settings_validate():
    with pytest.raises(ValueError, match="even batch"):
        FinetuneSettings(batch_size=33)
    FinetuneSettings(batch_size=33, mixup=0.0, cutmix=0.0)
    with pytest.raises(ValueError, match="layer_decay"):
        FinetuneSettings(layer_decay=0.0)
    assert FinetuneSettings(blr=5e-4, batch_size=512).peak_lr() == pytest.approx(1e-3)


def test_layer_wise_lr_decay_scales(tmp_path):
    settings = FinetuneSettings(layer_decay=0.5, batch_size=32, epochs=1)
    train, val = splits(settings, 32, 8)
    tuner = Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path)
    scales = {g["lr_scale"] for g in tuner.optimizer.param_groups}
    # depth 2: embeddings 0.5^3, blocks 0.5^2 and 0.5^1, head and fc_norm 1.
    assert scales == {0.125, 0.25, 0.5, 1.0}
    names = {id(p): n for n, p in tuner.model.named_parameters()}
    for group in tuner.optimizer.param_groups:
        for p in group["params"]:
            if names[id(p)] in ("pos_embed", "cls_token") or p.ndim == 1:
                assert group["weight_decay"] == 0.0


def test_finetune_loss_falls_on_the_embedded_sample(tmp_path):
    settings = FinetuneSettings(epochs=4, warmup_epochs=0.5, batch_size=32, lr=1e-2, layer_decay=1.0, **PLAIN)
    train, val = splits(settings, 320, 200)
    summary = Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path, progress=False).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "epoch"]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0]  # ln(10) = 2.30 at the start
    assert summary["finetune_top1"] > 0.15  # chance is 0.1 (std 0.02 on 200 images)
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2, 3, 4]


def test_full_recipe_resumes_exactly(tmp_path, monkeypatch):
    settings = FinetuneSettings(epochs=2, warmup_epochs=1, batch_size=16, log_interval=2)
    train, val = splits(settings, 64, 32)
    straight = Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path / "a", progress=False)
    summary = straight.fit()
    assert summary["epochs"] == 2 and summary["steps"] == 8

    original = Finetuner.train_epoch

    def stop_in_second_epoch(self, logger, start):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, logger, start)

    monkeypatch.setattr(Finetuner, "train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path / "b", progress=False).fit()
    monkeypatch.setattr(Finetuner, "train_epoch", original)
    assert load_checkpoint(tmp_path / "b" / "checkpoint-last.pth")["epoch"] == 1
    with pytest.raises(OutputDirError):
        Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path / "b")
    resumed = Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path / "b", resume="auto", progress=False)
    assert resumed.fit()["steps"] == 8
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    state = load_checkpoint(tmp_path / "b" / "checkpoint-last.pth")
    assert state["kind"] == "finetune" and state["epoch"] == 2


def test_resume_refuses_a_pretraining_checkpoint(tmp_path):
    settings = FinetuneSettings(epochs=1, batch_size=16, **PLAIN)
    train, val = splits(settings, 16, 8)
    torch.save({"model": {}, "config": {}}, tmp_path / "pre.pth")
    with pytest.raises(CheckpointError, match="not a dmjd fine-tuning checkpoint"):
        Finetuner(tiny_encoder(), train, val, 10, settings, tmp_path / "out", resume=tmp_path / "pre.pth")
