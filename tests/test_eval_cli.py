"""Evaluation commands: fine-tuning recipes and budgets, chance-level warnings, run folders as
checkpoints, Ctrl-C as one line."""

import json
import types
import warnings

import pytest
import torch
from PIL import Image

from dmjd.cli import EXIT_INTERRUPTED, main
from dmjd.data import Normalize
from dmjd.engine import CheckpointError, ResourceError
from dmjd.engine.resume import resolve_resume
from dmjd.errors import InputError
from dmjd.eval import quick_finetune as qf
from dmjd.eval.chance import ChanceLevelWarning, majority_rate, warn_if_at_chance
from dmjd.eval.settings import SmallFinetuneSettings, choose_recipe, recipe_settings
from dmjd.models import create_encoder
from test_eval_checkpoints import cli, json_lines, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    write_checkpoint(folder / "checkpoint-last.pth")
    return folder


def two_tone_tree(root, swapped=False):
    """ImageFolder train/val of dark and light images; ``swapped`` labels the val images the other
    way round, so every probe scores 0 %, below the 50 % majority class."""
    for split in ("train", "val"):
        for c, color in (("dark", 20), ("light", 230)):
            if swapped and split == "val":
                color = 250 - color
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("L", (20, 20), color=color + i).save(root / split / c / f"{i}.png")
    return ["data.name=imagefolder", f"data.path={root}"]


# ------------------------------------------------------------------------------ chance level
def test_majority_rate_and_the_warning_at_chance():
    labels = torch.tensor([0, 0, 0, 1])
    assert majority_rate(labels) == 0.75 and majority_rate([2, 1]) == 0.5
    with pytest.warns(ChanceLevelWarning, match=r"kNN learned nothing: top-1 75.0% .* \(75.0%\); look"):
        assert warn_if_at_chance(0.75, labels, "kNN", "look")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_at_chance(0.76, labels, "kNN", "look")


@pytest.mark.parametrize("argv", [
    ["knn", "--k", "3"], ["linprobe", "--fast"], ["linprobe", "--epochs", "3", "--batch-size", "4"],
    ["finetune", "--recipe", "small", "--epochs", "1", "--batch-size", "4"],
    ["finetune", "--recipe", "mae", "--epochs", "1", "--batch-size", "4", "--mixup", "0", "--cutmix", "0"],
])  # fmt: skip
def test_every_probe_and_finetuning_warns_in_one_line_at_chance_only(run, tmp_path, capsys, argv):
    ckpt = ["--checkpoint", str(run / "checkpoint-last.pth")]
    good = two_tone_tree(tmp_path / "good")
    bad = two_tone_tree(tmp_path / "bad", swapped=True)
    cli([*argv, *ckpt, "--output-dir", str(tmp_path / "a"), *good])
    if argv[0] != "finetune":  # the fine-tuning of this untrained encoder on 12 images may land anywhere
        assert "WARNING" not in capsys.readouterr().err
    capsys.readouterr()
    cli([*argv, *ckpt, "--output-dir", str(tmp_path / "b"), *bad])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "WARNING" in line]
    top1 = json_lines(captured.out)[-1]
    assert top1.get("knn_top1", top1.get("linprobe_top1", top1.get("finetune_top1"))) <= 0.5
    assert len(lines) == 1 and lines[0].startswith("dmjd: WARNING: ") and "(50.0%)" in lines[0], captured.err


# ----------------------------------------------------------------------- fine-tuning recipes
def test_recipe_choice():
    assert choose_recipe("auto", 224)[0] == "mae" and choose_recipe("auto", 32)[0] == "small"
    assert choose_recipe("auto", 32, resuming=True)[0] == "mae"
    assert choose_recipe("small", 224) == ("small", "--recipe small")
    assert "32 px" in choose_recipe("auto", 32)[1]
    assert recipe_settings("small", {"epochs": 3}) == SmallFinetuneSettings(epochs=3)
    with pytest.raises(InputError, match="--mixup: not an option of --recipe small"):
        recipe_settings("small", {"mixup": 0.5})


@pytest.mark.parametrize(("budget", "first", "epochs"), [(300, 30, 10), (100, 30, 3), (10, 30, 1), (0.3, 0.1, 3)])
def test_epochs_within_budget(budget, first, epochs):
    """As many whole epochs as fit, the first one included, and at least one."""
    assert qf.epochs_within_budget(budget, first) == epochs


def test_epochs_within_budget_refuses_nonsense():
    with pytest.raises(ValueError):
        qf.epochs_within_budget(0, 1)
    with pytest.raises(ValueError):
        qf.epochs_within_budget(10, -1)


def _split(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 60, (n, 1, 16, 16), generator=g)
    images[labels == 0, :, :8] += 180
    images[labels == 1, :, 8:] += 180
    return images.to(torch.uint8), labels


def test_a_budget_runs_the_epochs_that_fit_and_equals_that_fixed_count(monkeypatch):
    """A fake clock makes the first epoch take 2 s: a 7 s budget gives 3 epochs, trained exactly as
    ``epochs=3`` would be (the first epoch is all warmup, so nothing depends on the count yet)."""
    torch.manual_seed(0)
    encoder = create_encoder("vit", "tiny", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    train, test, norm = _split(128, 0), _split(64, 1), Normalize((0.5,), (0.5,))
    fixed = qf.quick_finetune(encoder, train, test, norm, SmallFinetuneSettings(epochs=3, batch_size=16), pool="avg")
    clock = iter([0.0, 2.0, 2.5])
    monkeypatch.setattr(qf, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    budgeted = qf.quick_finetune(encoder, train, test, norm, SmallFinetuneSettings(epochs=1, batch_size=16),
                                 pool="avg", budget_s=7.0)  # fmt: skip
    assert (budgeted.epochs, budgeted.steps, budgeted.first_epoch_s, budgeted.time_s) == (3, 24, 2.0, 2.5)
    assert (fixed.epochs, fixed.steps) == (3, 24) and budgeted.top1 == fixed.top1 > 0.9
    with pytest.raises(InputError, match="warmup_epochs >= 1"):
        qf.quick_finetune(encoder, train, test, norm, SmallFinetuneSettings(warmup_epochs=0.5), budget_s=7.0)


def test_small_recipe_command_records_its_result(run, tmp_path, capsys):
    out = tmp_path / "ft"
    cli(["finetune", "--checkpoint", str(run), "--output-dir", str(out), "--max-images", "64",
         "--batch-size", "16", "--budget", "1s"])  # fmt: skip
    captured = capsys.readouterr()
    assert "dmjd: fine-tuning recipe: small (auto: the encoder's input is 32 px" in captured.out
    result = json_lines(captured.out)[-1]
    assert (result["recipe"], result["protocol"], result["budget_s"]) == ("small", "small-finetune", 1.0)
    assert result["epochs"] >= 1 and result["steps"] == 4 * result["epochs"] and 0 <= result["finetune_top1"] <= 1
    assert result["settings"]["blr"] == 1.6e-2 and result["checkpoint"] == str(run / "checkpoint-last.pth")
    assert result["settings"]["epochs"] == result["epochs"]  # what --epochs reproduces the budgeted run with
    assert json.loads((out / "finetune.json").read_text()) == result
    record = json.loads((out / "evals.jsonl").read_text().splitlines()[-1])
    assert record["recipe"] == "small" and record["finetune_top1"] == result["finetune_top1"]
    assert record["files"] == ["finetune.json"]


def test_small_recipe_refuses_splits_that_do_not_fit_in_memory(run, tmp_path, monkeypatch):
    """64 + 64 images of 1 x 32 x 32 bytes (128 KiB) with 200 KiB free: more than half of it."""
    monkeypatch.setattr("dmjd.engine.resources.available_memory", lambda device: 200 * 1024)
    with pytest.raises(ResourceError, match=r"0.0 GiB, more than half the 0.0 GiB free on cpu; use --max-images"):
        cli(["finetune", "--checkpoint", str(run), "--output-dir", str(tmp_path), "--max-images", "64"])


@pytest.mark.parametrize(("options", "message"), [
    (["--recipe", "small", "--resume", "auto"], "--resume: --recipe small runs in memory"),
    (["--recipe", "small", "--overwrite"], "--overwrite: --recipe small"),
    (["--recipe", "mae", "--budget", "5m"], "--budget is for --recipe small"),
    (["--budget", "5m", "--epochs", "3"], "--budget and --epochs"),
    (["--recipe", "small", "--mixup", "0"], "--mixup: not an option of --recipe small"),
])  # fmt: skip
def test_incompatible_finetune_options_are_refused_before_loading(tmp_path, options, message):
    """Refused at once: the checkpoint given does not even exist."""
    with pytest.raises(InputError, match=message):
        cli(["finetune", "--checkpoint", str(tmp_path / "none.pth"), "--output-dir", str(tmp_path), *options])


def test_auto_recipe_refuses_an_option_of_the_other_recipe(run, tmp_path, capsys):
    with pytest.raises(InputError, match="--reprob: not an option of --recipe small"):
        cli(["finetune", "--checkpoint", str(run), "--output-dir", str(tmp_path), "--reprob", "0"])
    assert "dmjd: fine-tuning recipe: small (auto" in capsys.readouterr().out


# -------------------------------------------------------------------- run folders as checkpoints
def test_a_run_folder_is_its_newest_checkpoint(run, tmp_path, capsys):
    cli(["knn", "--checkpoint", str(run), "--max-images", "40"])
    assert json_lines(capsys.readouterr().out)[-1]["checkpoint"] == str(run / "checkpoint-last.pth")
    (tmp_path / "numbered").mkdir()
    for epoch in (2, 10):
        (tmp_path / "numbered" / f"checkpoint-{epoch}.pth").write_bytes(b"")
    assert resolve_resume(tmp_path, tmp_path / "numbered") == tmp_path / "numbered" / "checkpoint-10.pth"
    assert resolve_resume(tmp_path, run) == run / "checkpoint-last.pth"


def test_a_folder_without_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty is a folder with no checkpoint in it"):
        cli(["knn", "--checkpoint", str(tmp_path / "empty")])
    with pytest.raises(CheckpointError, match="empty is a folder with no checkpoint in it"):
        resolve_resume(tmp_path, tmp_path / "empty")


# --------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("command", ["knn", "linprobe", "finetune", "tsne"])
def test_ctrl_c_in_an_evaluation_is_one_line_and_exit_130(run, tmp_path, capsys, monkeypatch, command):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dmjd.eval.commands.load_source", interrupted)
    code = main([command, "--checkpoint", str(run / "checkpoint-last.pth"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED == 130
    assert err.strip().splitlines() == ["dmjd: interrupted"] and "Traceback" not in err
