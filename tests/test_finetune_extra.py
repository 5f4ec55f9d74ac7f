"""ConViT fine-tuning (ConvMAE's classifier, stage-wise layer decay), ConViT export, 2-process fine-tuning."""

import argparse
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import FINETUNE_SPEC as SPEC
from conftest import PLAIN_FINETUNE as PLAIN
from dmjd.config import load_config
from dmjd.engine import CheckpointError, load_checkpoint, save_checkpoint
from dmjd.engine.builders import build_dmjd_model, build_target
from dmjd.engine.metrics import read_metrics
from dmjd.eval.commands import register_eval_commands
from dmjd.eval.features import labelled_splits, num_classes
from dmjd.eval.finetune import (
    ConViTClassifier,
    Finetuner,
    FinetuneSettings,
    build_classifier,
    classifier_kwargs,
    finetune_transforms,
)
from dmjd.eval.loading import InputSpec, load_encoder
from dmjd.models.convit import ConViT

CONVIT_RUN = [
    "model.arch=convit", "model.size=tiny", "model.img_size=32", "model.patch_size=8", "model.in_chans=1",
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_dim=32", "model.decoder_depth=1",
    "model.decoder_heads=2", "model.vdb_hidden=32", "data.num_workers=0",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_convit() -> ConViT:
    torch.manual_seed(0)
    return ConViT(img_size=32, patch_size=8, in_chans=1, embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2,
                  mlp_ratios=(2.0, 2.0, 2.0))  # fmt: skip


def splits(settings, n_train, n_val):
    train_tf, val_tf = finetune_transforms(SPEC, settings)
    train, val = labelled_splits("embedded", None, train_tf, val_tf, max_images=max(n_train, n_val))
    return torch.utils.data.Subset(train, range(n_train)), torch.utils.data.Subset(val, range(n_val))


def cli(argv):
    parser = argparse.ArgumentParser(prog="dmjd")
    register_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def convit_checkpoint(tmp_path_factory):
    """A ConViT pre-training checkpoint as the trainer writes it."""
    path = tmp_path_factory.mktemp("convit") / "checkpoint-last.pth"
    cfg = load_config(None, CONVIT_RUN)
    torch.manual_seed(0)
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1, "step": 4}, path)
    return path


# --------------------------------------------------------------------------- ConViT classifier
def test_convit_classifier_runs_the_encoder_stages_without_fusion():
    enc = tiny_convit().eval()
    model = build_classifier(classifier_kwargs(enc, 5, FinetuneSettings(drop_path=0.0)), enc.state_dict()).eval()
    state = model.state_dict()
    assert not any(k.startswith(ConViTClassifier.PRETRAINING_ONLY) for k in state)
    for key, value in enc.state_dict().items():
        if not key.startswith(ConViTClassifier.PRETRAINING_ONLY):
            assert torch.equal(state[key], value), key
    assert torch.all(state["fc_norm.weight"] == 1) and model.head.weight.abs().max() < 1e-3
    # Independent reference: with zero fusion convolutions, the encoder's features are the
    # classifier's stage-3 tokens under the encoder's final norm.
    with torch.no_grad():
        for conv in (enc.stage1_output_decode, enc.stage2_output_decode):
            conv.weight.zero_(), conv.bias.zero_()
        x = torch.randn(3, 1, 32, 32)
        tokens = model.forward_features(x)
        torch.testing.assert_close(enc.norm(tokens), enc.forward_features(x))
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), model.fc_norm(tokens.mean(1)))
    assert model(x).shape == (3, 5)


def test_convit_classifier_drop_path_and_weight_errors():
    enc = tiny_convit()
    kwargs = classifier_kwargs(enc, 5, FinetuneSettings(drop_path=0.3))
    assert build_classifier(kwargs).blocks3[-1].drop_path1.drop_prob == pytest.approx(0.3)
    for edit in ("missing", "unexpected"):
        weights = dict(enc.state_dict())
        if edit == "missing":
            del weights["blocks3.0.attn.qkv.weight"]
        else:
            weights["mask_token"] = torch.zeros(1, 1, 32)
        with pytest.raises(CheckpointError, match="do not fit"):
            build_classifier(kwargs, weights)
    with pytest.raises(ValueError, match="class token"):
        classifier_kwargs(enc, 5, FinetuneSettings(global_pool="token"))


def test_convit_layer_decay_follows_the_stages(tmp_path):
    settings = FinetuneSettings(layer_decay=0.5, batch_size=16, epochs=1, **PLAIN)
    train, val = splits(settings, 16, 8)
    tuner = Finetuner(tiny_convit(), train, val, 10, settings, tmp_path, progress=False)
    scale = {n: g["lr_scale"] for g in tuner.optimizer.param_groups for n in
             [m for m, p in tuner.model.named_parameters() if any(p is q for q in g["params"])]}  # fmt: skip
    # 2 transformer blocks: embeddings and both convolution stages 0.5^3, block i 0.5^(2-i), top 1.
    for name, value in scale.items():
        if name.startswith(("patch_embed", "blocks1.", "blocks2.")):
            assert value == 0.125, name
        elif name.startswith("blocks3."):
            assert value == 0.5 ** (2 - int(name.split(".")[1])), name
        else:
            assert name.startswith(("fc_norm.", "head.")) and value == 1.0, name
    assert "pos_embed" not in scale  # fixed sin-cos, not trained


def test_convit_finetune_loss_falls_on_the_embedded_sample(tmp_path):
    settings = FinetuneSettings(epochs=5, warmup_epochs=0.5, batch_size=32, lr=1e-2, layer_decay=1.0, **PLAIN)
    train, val = splits(settings, 320, 200)
    summary = Finetuner(tiny_convit(), train, val, 10, settings, tmp_path, progress=False).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(losses) == 5 and losses[-1] < 0.85 * losses[0]  # ln(10) = 2.30 at the start
    state = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert state["model_kwargs"]["arch"] == "convit" and summary["steps"] == 50
    assert summary["finetune_top1"] > 0.15  # chance is 0.1 (std 0.02 on 200 images)


# ------------------------------------------------------------------------------- ConViT export
def test_convit_export_command_prints_a_strict_loading_line(convit_checkpoint, tmp_path, capsys):
    folder = tmp_path / "out"
    cli(["export", "--checkpoint", str(convit_checkpoint), "--output-dir", str(folder)])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    target = folder.resolve() / "model.safetensors"
    assert result["arch"] == "convit" and result["file"] == str(target)
    encoder, _ = load_encoder(convit_checkpoint)
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "convit" and ConViT(**json.loads(meta["arch_kwargs"])).arch_kwargs() == encoder.arch_kwargs()
    assert set(load_file(target)) == set(encoder.state_dict())  # ConvMAE's key names, fusion included
    namespace: dict = {}
    exec(lines[0], namespace)  # the exact line printed for the user
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].forward_features(x), encoder.forward_features(x))
    save_file({**load_file(target), "decoder_embed.weight": torch.zeros(2)}, str(target), metadata=meta)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        exec(lines[0], {})


# ---------------------------------------------------------------------- distributed fine-tuning
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_finetune_writes_once_and_reports_the_global_top1(convit_checkpoint, tmp_path):
    out = tmp_path / "two"
    options = ["--recipe", "mae", "--max-images", "48", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0",
               "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--rand-augment", "none", "--reprob", "0",
               "--drop-path", "0"]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "dmjd", "finetune", "--checkpoint", str(convit_checkpoint), "--output-dir", str(out), *options,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads((out / "finetune.json").read_text()) == printed[0]  # rank 0 only
    result = printed[0]
    # 48 images / (8 per process x 2 processes) = 3 steps; lr on the global batch of 16.
    assert (result["world_size"], result["batch_size"], result["steps"]) == (2, 16, 3)
    assert result["lr"] == pytest.approx(5e-4 * 16 / 256)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [3]
    # One process (same global batch) evaluating the saved weights on the whole split gets the
    # reported top-1.
    encoder, cfg = load_encoder(convit_checkpoint)
    settings = FinetuneSettings(epochs=1, warmup_epochs=0, batch_size=16, **PLAIN)
    train_tf, val_tf = finetune_transforms(InputSpec.from_config(cfg), settings)
    train, val = labelled_splits("embedded", None, train_tf, val_tf, max_images=48)
    alone = Finetuner(encoder, train, val, num_classes(train, val), settings, tmp_path / "one",
                      resume=out / "checkpoint-last.pth", progress=False).fit()  # fmt: skip
    assert alone["steps"] == 3 and alone["val_images"] == result["val_images"]
    assert alone["finetune_top1"] == pytest.approx(result["finetune_top1"])
    assert alone["val_loss"] == pytest.approx(result["val_loss"], rel=1e-5)
