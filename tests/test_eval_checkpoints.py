"""From a pre-training checkpoint: loading and its errors, timm export, online monitor, the CLI commands."""

import argparse
import json
import os
import shutil

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dmjd.config import ConfigError, load_config
from dmjd.data import DataError
from dmjd.engine import CheckpointError, save_checkpoint
from dmjd.engine.builders import build_dmjd_model, build_target
from dmjd.eval.commands import register_eval_commands
from dmjd.eval.export import export_encoder
from dmjd.eval.loading import InputSpec, config_with_overrides, load_dmjd_model, load_encoder, load_timm_encoder
from dmjd.eval.monitor import OnlineMonitor, available_cores
from dmjd.models import create_encoder

TINY = [
    "model.img_size=32", "model.patch_size=8", "model.in_chans=1", "model.embed_dim=32", "model.depth=2",
    "model.num_heads=2", "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "model.vdb_hidden=32", "masking.num_views=2", "optim.epochs=1", "optim.batch_size=64", "data.limit=256",
    "data.num_workers=0", "train.progress=false", "train.tensorboard=false",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def write_checkpoint(path, overrides=TINY, seed=0, **extra):
    """A pre-training checkpoint as the trainer writes it (model, config, epoch, step)."""
    cfg = load_config(None, overrides)
    torch.manual_seed(seed)
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1, "step": 4, **extra}
    save_checkpoint(state, path)
    return model, cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model, cfg = write_checkpoint(folder / "checkpoint-last.pth")
    return folder, model.eval(), cfg


def json_lines(text):
    """The JSON result lines of a command's output (the others are ``dmjd:`` log lines)."""
    return [json.loads(line) for line in text.strip().splitlines() if line.startswith("{")]


def cli(argv):
    parser = argparse.ArgumentParser(prog="dmjd")
    register_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------------------------ loading
def test_load_encoder_and_whole_model(run):
    folder, model, cfg = run
    encoder, got_cfg = load_encoder(folder / "checkpoint-last.pth")
    assert got_cfg == cfg and not encoder.training
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    whole, _ = load_dmjd_model(folder / "checkpoint-last.pth")
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), model.state_dict().values(), strict=True))


def test_checkpoint_errors(tmp_path, run):
    _folder, model, cfg = run
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "missing.pth")
    save_checkpoint({"model": model.state_dict()}, tmp_path / "no_config.pth")
    with pytest.raises(CheckpointError, match="not a dmjd pre-training checkpoint"):
        load_encoder(tmp_path / "no_config.pth")
    other = cfg.model_dump(mode="json")
    other["model"]["arch"] = "swin"
    save_checkpoint({"model": model.state_dict(), "config": other}, tmp_path / "swin.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_encoder(tmp_path / "swin.pth")
    wider = cfg.model_dump(mode="json")
    wider["model"]["embed_dim"] = 64
    save_checkpoint({"model": model.state_dict(), "config": wider}, tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"do not match the architecture.*of another shape \(blocks"):
        load_encoder(tmp_path / "wider.pth")
    save_checkpoint({"model": {}, "kind": "finetune"}, tmp_path / "ft.pth")
    with pytest.raises(CheckpointError, match="fine-tuning checkpoint"):
        load_encoder(tmp_path / "ft.pth")


def test_timm_encoder_for_comparison():
    vit = load_timm_encoder("vit_tiny_patch16_224", pretrained=False)
    assert not vit.training and vit.num_classes == 0
    assert InputSpec.from_timm(vit) == InputSpec(224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown timm model"):
        load_timm_encoder("vit_nonexistent_patch3")


def test_data_overrides_only(run):
    cfg = run[2]
    assert config_with_overrides(cfg.model_dump(mode="json"), ["data.name=cifar10"]).data.name == "cifar10"
    with pytest.raises(ConfigError, match="data"):
        config_with_overrides(cfg.model_dump(mode="json"), ["model.depth=3"])


# ------------------------------------------------------------------------------------- export
def test_export_custom_size_loads_strictly_in_timm_with_the_same_features(tmp_path, run):
    encoder, cfg = load_encoder(run[0] / "checkpoint-last.pth")
    exported = export_encoder(encoder, tmp_path / "enc", InputSpec.from_config(cfg), pool="token")
    model = eval(exported.snippet, {"timm": timm})  # the exact line printed for the user
    assert exported.snippet == f'timm.create_model("local-dir:{tmp_path / "enc"}", pretrained=True)'
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), encoder.forward_features(x))
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (1, 32, 32)
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch16_224" and config["num_classes"] == 0
    assert config["global_pool"] == "token" and config["model_args"]["embed_dim"] == 32
    # strict keys: one stray tensor in the file makes the same call fail
    weights = load_file(exported.file)
    save_file({**weights, "decoder_embed.weight": torch.zeros(2)}, exported.file)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        eval(exported.snippet, {"timm": timm})


@pytest.mark.parametrize(("img_size", "in_chans"), [(224, 3), (32, 1)])
def test_export_names_the_registered_architecture_and_pools_as_dmjd(tmp_path, img_size, in_chans):
    """A ViT-Ti at any image size is exported as vit_tiny_patch16_224, and the timm model's output
    is dmjd's own feature of the same pooling (issue 34: it was vit_base_... with overrides)."""
    from dmjd.data import Normalize
    from dmjd.eval.features import extract_features

    torch.manual_seed(0)
    encoder = create_encoder("vit", "tiny", img_size=img_size, patch_size=16, in_chans=in_chans).eval()
    spec = InputSpec(img_size, in_chans, (0.5,) * in_chans, (0.5,) * in_chans)
    exported = export_encoder(encoder, tmp_path / "t", spec)
    assert exported.model_name == "vit_tiny_patch16_224"
    assert exported.kwargs == ({} if img_size == 224 else {"img_size": 32, "in_chans": 1})
    model = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).eval()
    images = torch.rand(3, in_chans, img_size, img_size)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(3, dtype=torch.long))
    normalize = Normalize(spec.mean, spec.std)
    ours, _ = extract_features(encoder, dataset, 3, "cpu", "avg", normalize)
    with torch.no_grad():
        torch.testing.assert_close(model(normalize(images)), ours, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ monitor
def test_online_monitor(run):
    _, model, cfg = run
    monitor = OnlineMonitor.from_config(cfg, max_images=120)
    assert len(monitor.train_set) == len(monitor.test_set) == 120
    model.encoder.train()
    result = monitor(model.encoder)
    assert model.encoder.training
    assert set(result) == {"knn_top1", "linprobe_top1"} and all(0.0 <= v <= 1.0 for v in result.values())
    assert monitor(model.encoder) == result
    # the cached uint8 images are the transformed images, and the data-loader path gives the same result
    images, labels = monitor.cache[0]
    assert images.dtype == torch.uint8 and labels.tolist() == [int(item[1]) for item in monitor.train_set]
    torch.testing.assert_close(images[:5].float() / 255, torch.stack([monitor.train_set[i][0] for i in range(5)]))
    uncached = OnlineMonitor.from_config(cfg, max_images=120, cache_mib=0)
    assert uncached.cache is None
    assert uncached(model.encoder) == pytest.approx(result, abs=1e-6)


def test_online_monitor_uses_at_most_one_worker_per_core(run):
    _, _, cfg = run
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    for workers, expected in ((cores + 3, cores), (0, 0)):
        with_workers = config_with_overrides(cfg.model_dump(mode="json"), [f"data.num_workers={workers}"])
        assert OnlineMonitor.from_config(with_workers, max_images=8).num_workers == expected


def test_online_monitor_needs_labelled_splits(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="train"):
        OnlineMonitor("imagefolder", str(tmp_path / "flat"), img_size=32, in_chans=1)


# ---------------------------------------------------------------------------------------- CLI
def test_knn_command_uses_the_checkpoints_data_and_ends_with_json(run, capsys):
    folder = run[0]
    assert cli(["knn", "--checkpoint", str(folder / "checkpoint-last.pth"), "--max-images", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["data"] == "embedded" and result["train_images"] == result["test_images"] == 100
    assert 0.0 <= result["knn_top1"] <= 1.0 and result["k"] == 20
    assert json.loads((folder / "knn.json").read_text()) == result


def test_feature_commands_with_data_overrides(run, tmp_path, capsys):
    for split in ("train", "val"):
        for c, color in (("dark", 20), ("light", 230)):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("L", (20, 20), color=color + i).save(tmp_path / "tree" / split / c / f"{i}.png")
    ckpt = str(run[0] / "checkpoint-last.pth")
    data = ["data.name=imagefolder", f"data.path={tmp_path / 'tree'}"]
    out = ["--output-dir", str(tmp_path / "out")]
    cli(["linprobe", "--checkpoint", ckpt, "--fast", *out, *data])
    cli(["linprobe", "--checkpoint", ckpt, "--epochs", "5", "--batch-size", "4", *out, *data])
    cli(["tsne", "--checkpoint", ckpt, "--per-class", "6", *out, *data])
    lines = json_lines(capsys.readouterr().out)
    assert [r["kind"] for r in lines] == ["linprobe", "linprobe", "tsne"]
    assert lines[0]["protocol"] == "logreg" and lines[1]["protocol"] == "mae" and lines[1]["epochs"] == 5
    assert lines[0]["data"] == "imagefolder" and lines[0]["train_images"] == 12
    assert lines[0]["linprobe_top1"] == 1.0  # dark vs light is linearly separable
    assert lines[2]["classes"] == 2 and (tmp_path / "out" / "tsne.png").stat().st_size > 0


def test_export_command_writes_a_hub_folder(run, tmp_path, capsys):
    target = tmp_path / "exported"
    cli(["export", "--checkpoint", str(run[0]), "--output-dir", str(target), "--license", "cc-by-4.0"])
    lines = capsys.readouterr().out.strip().splitlines()
    calls = [line for line in lines if line.startswith("timm.create_model(")]
    assert len(calls) == 1 and json.loads(lines[-1])["file"] == str(target.resolve() / "model.safetensors")
    assert json.loads(lines[-1])["global_pool"] == "avg"
    model = eval(calls[0], {"timm": timm})
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), run[1].encoder.forward_features(x))
    card = (target / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "dmjd export --checkpoint" in card and "ETE" in card
    assert json.loads((target / "config.json").read_text())["pretrained_cfg"]["license"] == "cc-by-4.0"


def test_the_model_card_names_the_vits_sizes_and_its_runs_own_evaluation(run, tmp_path):
    """A recipe's small ViT is exported as timm's vit_base_patch16_224 with other sizes: the card says
    which sizes, and carries the run's last monitor evaluation (summary.json) with its baselines."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(run[0] / "checkpoint-last.pth", folder)
    epoch = int(torch.load(folder / "checkpoint-last.pth", weights_only=False).get("epoch", 0))
    summary = {"evaluation": {"epoch": epoch, "knn_top1": 0.634, "linprobe_top1": 0.596},
               "evaluation_untrained": {"knn_top1": 0.577}, "evaluation_raw_pixels": {"knn_top1": 0.578}}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    cli(["export", "--checkpoint", str(folder), "--output-dir", str(tmp_path / "exported")])
    card = (tmp_path / "exported" / "README.md").read_text()
    m = run[2].model
    assert f"# ViT {m.embed_dim} wide, {m.depth} blocks, patch {m.patch_size}, {m.img_size} px (timm `vit_" in card
    for row in ("| kNN, this encoder | pre-training monitor | 63.40 |", "| linear probe, this encoder | pre-training monitor | 59.60 |",
                "| kNN, untrained encoder (baseline) | pre-training monitor | 57.70 |", "| kNN, raw pixels (baseline) |"):  # fmt: skip
        assert row in card, row
    summary["evaluation"]["epoch"] = epoch + 1  # another checkpoint's evaluation is not this one's
    (folder / "summary.json").write_text(json.dumps(summary))
    cli(["export", "--checkpoint", str(folder), "--output-dir", str(tmp_path / "again")])
    assert "None recorded for this checkpoint." in (tmp_path / "again" / "README.md").read_text()


def test_visualize_and_plot_commands(run, tmp_path, capsys):
    ckpt = str(run[0] / "checkpoint-last.pth")
    cli(["visualize", "--checkpoint", ckpt, "--num-images", "2", "--output-dir", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 1, "loss": 1.0, "ete": 0.5, "time": 3.0}) + "\n"
    )
    cli(["plot", str(tmp_path)])
    figures = [r["figure"] for r in json_lines(capsys.readouterr().out)]
    assert figures == [str(tmp_path / "visualize.png"), str(tmp_path / "curves.png")]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("visualize.png", "curves.png", "curves.json"))


def test_command_errors(tmp_path, run):
    with pytest.raises(CheckpointError, match="does not exist"):
        cli(["knn", "--checkpoint", str(tmp_path / "nope.pth")])
    with pytest.raises(ValueError, match="--output-dir"):
        cli(["knn", "--timm-model", "vit_tiny_patch16_224"])
    with pytest.raises(ValueError, match="unknown timm model"):
        cli(["knn", "--timm-model", "not_a_model", "--output-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="data"):
        cli(["knn", "--checkpoint", str(run[0] / "checkpoint-last.pth"), "optim.lr=1"])


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = capsys.readouterr().out
    for command in ("knn", "linprobe", "finetune", "tsne", "visualize", "plot", "export"):
        assert command in text
    with pytest.raises(SystemExit):
        cli(["finetune", "--help"])
    assert "--layer-decay" in capsys.readouterr().out


def test_finetune_command_and_resume(run, tmp_path, capsys):
    base = ["finetune", "--recipe", "mae", "--checkpoint", str(run[0] / "checkpoint-last.pth"),
            "--output-dir", str(tmp_path), "--max-images", "32", "--batch-size", "16"]  # fmt: skip
    cli([*base, "--epochs", "1"])
    cli([*base, "--epochs", "2", "--resume", "auto"])
    first, second = json_lines(capsys.readouterr().out)
    assert (first["epochs"], first["steps"], second["epochs"], second["steps"]) == (1, 2, 2, 4)
    assert 0.0 <= second["finetune_top1"] <= 1.0 and second["settings"]["layer_decay"] == 0.65
    assert (first["recipe"], second["protocol"]) == ("mae", "mae-finetune")
    assert json.loads((tmp_path / "finetune.json").read_text()) == second


def test_convit_checkpoint_evaluates_with_pooled_tokens(tmp_path, capsys):
    convit = [*TINY, "model.arch=convit", "model.size=tiny", "model.depth=1", "model.num_heads=2"]
    write_checkpoint(tmp_path / "checkpoint-last.pth", convit)
    ckpt = str(tmp_path / "checkpoint-last.pth")
    cli(["knn", "--checkpoint", ckpt, "--max-images", "40"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # ConvMAE's / the official DMJD probe feature: unfused stage-3 tokens, mean, fresh fc_norm.
    assert result["pool"] == "avg_fc_norm" and 0.0 <= result["knn_top1"] <= 1.0
    cli(["export", "--checkpoint", ckpt])  # ConViT export and fine-tuning: tests/test_finetune_extra.py
    assert "dmjd.models.convit.ConViT(" in capsys.readouterr().out
