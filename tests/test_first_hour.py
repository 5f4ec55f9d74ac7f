"""A new user's first hour (issue 13): each step that surprised a user, and README's whole path.

Every test runs the user's command (the CLI in-process, or a subprocess where the process matters)
on tiny models and the embedded sample, and checks the fixed behaviour.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import TINY, tiny_config, write_images
from dmjd.cli import main
from dmjd.config import ConfigError, load_config
from dmjd.data import eval_transform
from dmjd.data.datasets import infer_data_kind
from dmjd.engine import Pretrainer, load_checkpoint
from dmjd.engine.builders import build_masking
from dmjd.engine.metrics import read_metrics
from dmjd.engine.run_dir import prepare_output_dir
from dmjd.engine.training_data import training_data
from dmjd.eval.features import labelled_splits
from dmjd.eval.finetune import FinetuneSettings, finetune_transforms
from dmjd.eval.loading import InputSpec
from dmjd.eval.plot import curves_figure, time_unit
from dmjd.eval.visualize import describe_masking
from dmjd.io import checkpoint as ckpt_mod

ROOT = Path(__file__).resolve().parents[1]
MONITOR = ["monitor.max_images=200"]
# make demo's budgeted run, made an epoch-counted one of the tiny size (a user's keys win over the recipe's)
DEMO_SHORT = ["train.budget=null", "monitor.interval=1"]

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Decoded image folders are cached in a folder of this module's own (``DMJD_CACHE``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DMJD_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def run(argv: list[str]) -> tuple[int, str, str]:
    """``dmjd ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def makefile_demo_command(demo_dir: Path) -> list[str]:
    """The ``dmjd pretrain`` command of ``make demo``, with the demo folder filled in."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "dmjd pretrain" in line)
    words = shlex.split(line.replace("$(BIN)/dmjd", "dmjd").replace("$(DEMO_DIR)", str(demo_dir)))
    return words[1:]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``make demo``'s command, shrunk with the tiny overrides: ``(folder, stdout)``."""
    folder = tmp_path_factory.mktemp("demo") / "demo-output"
    code, out, err = run([*makefile_demo_command(folder), *TINY, *MONITOR, *DEMO_SHORT])
    assert code == 0, err
    return folder, out


# ------------------------------------------------------------------------------ 1. crashes
def test_finetune_recipe_posterize_keeps_a_bit_at_the_top_magnitude():
    train, _ = finetune_transforms(InputSpec(32, 1, (0.5,), (0.5,)), FinetuneSettings())
    rand_augment = next(t for t in train.transforms[1].transforms if hasattr(t, "ops"))
    posterize = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude_std, posterize.magnitude = 1.0, 0.0, 10.0  # the noisy top of the range
    image = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert len(np.unique(np.asarray(posterize(image)))) == 2  # one bit kept, not an error
    from timm.data.auto_augment import AugmentOp  # timm's own op at that magnitude: what the user hit

    with pytest.raises(ValueError, match="bits must be"):
        AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(image)


def test_only_input_errors_become_one_line_messages(monkeypatch, tmp_path):
    def bug(_args):
        raise ValueError("an internal bug, not the user's input")

    # settings only the built part can check, and missing teacher weights, are still one line
    teacher = ["target.name=teacher", "target.teacher_source=timm", "model.in_chans=3"]
    for extra in (
        ["target.teacher_model=not_a_model"],
        ["target.teacher_model=vit_tiny_patch16_224", f"target.teacher_pretrained={tmp_path / 'none.pth'}"],
    ):
        code, _, err = run(["pretrain", "--config", "demo", "--output-dir", tmp_path / "t", *TINY, *teacher, *extra])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    monkeypatch.setattr("dmjd.eval.commands._run_knn", bug)
    with pytest.raises(ValueError, match="internal bug"):  # a traceback, not "exit 2"
        run(["knn", "--checkpoint", tmp_path / "c.pth"])


NON_CHECKPOINTS = {
    "notes.txt": b"hello, this is text\n",
    "random.bin": random.Random(0).randbytes(4096),
    "empty.pth": b"",
}


@pytest.fixture
def non_checkpoints(tmp_path):
    files = {name: tmp_path / name for name in (*NON_CHECKPOINTS, "photo.png", "encoder.safetensors", "pickle.pth")}
    for name, data in NON_CHECKPOINTS.items():
        files[name].write_bytes(data)
    Image.new("RGB", (8, 8)).save(files["photo.png"])
    save_file({"w": torch.zeros(3)}, str(files["encoder.safetensors"]))
    torch.save({"weights": torch.zeros(2)}, files["pickle.pth"])
    return files


def test_non_checkpoint_files_are_one_line_errors_naming_file_and_expectation(non_checkpoints, demo_run, tmp_path):
    ckpt = demo_run[0] / "checkpoint-last.pth"
    for name, path in non_checkpoints.items():
        commands = [
            ["knn", "--checkpoint", path], ["linprobe", "--checkpoint", path, "--fast"],
            ["export", "--checkpoint", path], ["visualize", "--checkpoint", path],
            ["finetune", "--checkpoint", path], ["pretrain", "--output-dir", tmp_path / "r", "--resume", path],
            ["finetune", "--checkpoint", ckpt, "--output-dir", tmp_path / "ft", "--resume", path,
             "--max-images", "32", "--batch-size", "16"],
        ]  # fmt: skip
        for argv in commands:
            code, _, err = run(argv)
            assert code == 2, (name, argv, err)
            assert len(err.strip().splitlines()) == 1 and str(path) in err and "expected" in err, err
            assert "weights_only" not in err and "Traceback" not in err, err


def test_evaluation_commands_check_their_output_place_before_working(demo_run, tmp_path, monkeypatch):
    def no_work(*_args, **_kwargs):
        raise AssertionError("work started before the output place was checked")

    monkeypatch.setattr("dmjd.io.checkpoint.load_checkpoint", no_work)
    monkeypatch.setattr("dmjd.eval.plot.read_run", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ckpt = demo_run[0] / "checkpoint-last.pth"
    for command in ("knn", "linprobe", "tsne", "visualize", "finetune", "export"):
        code, _, err = run([command, "--checkpoint", ckpt, "--output-dir", blocker / "out"])
        assert code == 2 and f"{blocker} is a file, not a folder" in err, (command, err)
    code, _, err = run(["plot", demo_run[0], "--output-dir", blocker / "out"])
    assert code == 2 and f"{blocker} is a file, not a folder" in err
    code, _, err = run(["export", "--checkpoint", ckpt, "--output", blocker / "x.safetensors"])
    assert code == 2 and f"{blocker} is a file, not a folder" in err


@pytest.mark.parametrize("case", ["file", "read-only", "no space"])
def test_an_unwritable_output_dir_is_one_line_before_anything_is_printed_or_computed(case, tmp_path, monkeypatch):
    """A file in the way, a read-only folder and a full disk, for pretrain (auto recipe) and compare.
    Read-only is simulated by ``os.access`` (root, who runs CI, ignores chmod) and a full disk by
    ``shutil.disk_usage``: the check reads the folder's (or its nearest parent's) state, writing nothing."""
    import dmjd.outputs

    def no_work(*_args, **_kwargs):
        raise AssertionError("work started before the output place was checked")

    # dmjd.bench.compare first: imported while auto_config is patched, it would keep no_work for later tests
    monkeypatch.setattr("dmjd.bench.compare.run_compare", no_work)
    monkeypatch.setattr("dmjd.recipe.auto_config", no_work)
    out = tmp_path / "runs" / "new"
    if case == "file":
        (tmp_path / "runs").write_text("a file where the run folder's parent should be")
        expected = f"{tmp_path / 'runs'} is a file, not a folder; remove it or choose another --output-dir"
    elif case == "read-only":
        real = os.access
        monkeypatch.setattr(dmjd.outputs.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
        monkeypatch.setattr(dmjd.outputs, "_read_only_mount", lambda _p: True)
        expected = f"{tmp_path} cannot be written (a read-only file system); choose another --output-dir"
    else:
        monkeypatch.setattr(dmjd.outputs.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 10**12, 2**20))
        expected = f"no space left on the device of {tmp_path} (1.0 MiB free)"
    photos = write_images(tmp_path / "photos", 20, classes=("a", "b"))
    for argv in (["pretrain", "--output-dir", out, f"data.path={photos}", "train.budget=1m"],
                 ["compare", photos, "--budget", "1m", "--output-dir", out]):  # fmt: skip
        code, stdout, err = run(argv)
        assert (code, stdout) == (2, "") and err.count("\n") == 1 and expected in err, (argv, err)
    assert not out.exists()


# ------------------------------------------------------------------------- 4. data.path is used
def test_data_path_with_the_demo_preset_is_used_and_named_at_start(tmp_path, demo_run):
    photos = write_images(tmp_path / "photos", 80)
    out = tmp_path / "own"
    code, stdout, err = run(["pretrain", "--config", "demo", "--output-dir", out, *TINY, "optim.epochs=1",
                             f"data.path={photos}", "optim.batch_size=32"])  # fmt: skip
    assert code == 0, err
    assert f"data imagefolder from {photos}, train split: 80 images, no labels" in stdout
    assert load_checkpoint(out / "checkpoint-last.pth")["config"]["data"]["name"] == "imagefolder"
    # an evaluation with data.path on a checkpoint of the embedded sample uses that folder too
    tree = tmp_path / "tree"
    for split in ("train", "val"):
        write_images(tree / split, 6, classes=("dark", "light"), size=16)
    code, stdout, err = run(["knn", "--checkpoint", demo_run[0] / "checkpoint-last.pth", "--output-dir",
                             tmp_path / "eval", f"data.path={tree}", "--k", "3"])  # fmt: skip
    assert code == 0, err
    assert json_lines(stdout)[-1]["data"] == "imagefolder" and json_lines(stdout)[-1]["train_images"] == 12
    assert f"data imagefolder from {tree}, test split: 12 images, 2 classes (dark, light)" in stdout
    # a path that holds nothing readable is refused, naming it
    code, _, err = run(["pretrain", "--config", "demo", "--output-dir", tmp_path / "x", f"data.path={tmp_path / 'nope'}"])
    assert code == 2 and "data.path=" in err and "does not exist" in err


def test_pretraining_holds_out_the_probes_test_split_and_counts_agree_across_commands(tmp_path):
    """A labelled folder without val/: pretrain decodes only the training part of the split knn uses,
    an unreadable file is left out (not replaced) in both, and both say the same counts."""
    folder = tmp_path / "labelled"
    for c, sub in enumerate(("dark", "light", "mid")):  # image i of class c is flat grey level 5 * (15c + i)
        (folder / sub).mkdir(parents=True)
        for i in range(15):
            Image.new("L", (24, 24), 5 * (15 * c + i)).save(folder / sub / f"{i:03d}.png")
    (folder / "mid" / "007.png").write_bytes(b"\x89PNG broken")
    level = {p: 5 * (15 * c + int(p.stem)) for c, sub in enumerate(("dark", "light", "mid")) for p in (folder / sub).iterdir()}
    keys = [*TINY, "optim.epochs=1", f"data.path={folder}", "optim.batch_size=16", "data.pipeline=device"]
    code, stdout, err = run(["pretrain", "--config", "demo", "--output-dir", tmp_path / "run", *keys])
    assert code == 0, err
    knn_code, knn_out, knn_err = run(["knn", "--checkpoint", tmp_path / "run" / "checkpoint-last.pth", "--output-dir",
                                      tmp_path / "knn", "--k", "3"])  # fmt: skip
    assert knn_code == 0, knn_err
    tf = eval_transform(8, 1)
    train, test = labelled_splits("imagefolder", str(folder), tf, tf)
    knn_train, knn_test = ({level[p] for p, _ in ds.samples} for ds in (train, test))  # type: ignore[attr-defined]
    pretrained = set(training_data(tiny_config(*keys), torch.device("cpu")).batches.images[:, 0, 0, 0].tolist())  # type: ignore[attr-defined]
    assert pretrained == knn_train and not knn_train & knn_test
    assert len(knn_train | knn_test) == 44 and level[folder / "mid" / "007.png"] not in knn_train | knn_test
    assert f"train split: {len(knn_train)} images, 3 classes" in stdout
    assert "the 9 files of its test split are held out for the probes" in stdout  # 3 of each class's 15
    assert f"train split: {len(knn_train)} images, 3 classes" in knn_out
    assert f"test split: {len(knn_test)} images, 3 classes" in knn_out
    assert json_lines(knn_out)[-1]["train_images"] == len(knn_train)
    # data.split_holdout=false pre-trains on every readable image
    everything = training_data(tiny_config(*keys, "data.split_holdout=false"), torch.device("cpu")).batches
    assert set(everything.images[:, 0, 0, 0].tolist()) == knn_train | knn_test  # type: ignore[attr-defined]


def test_data_kind_is_inferred_from_what_the_folder_holds(tmp_path):
    (tmp_path / "c10" / "cifar-10-batches-py").mkdir(parents=True)
    assert infer_data_kind(tmp_path / "c10") == ("cifar10", str(tmp_path / "c10"))
    assert infer_data_kind(tmp_path / "c10" / "cifar-10-batches-py") == ("cifar10", str(tmp_path / "c10"))
    (tmp_path / "fm").mkdir()
    (tmp_path / "fm" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert infer_data_kind(tmp_path / "fm")[0] == "fashion_mnist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        infer_data_kind(tmp_path / "empty")


# ------------------------------------------------------------------ 5. resume changes nothing
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_refuses_run_changes_allows_harmless_ones_and_leaves_finished_runs_alone(tmp_path):
    out = tmp_path / "run"
    base = ["pretrain", "--config", "demo", "--output-dir", out, *TINY, "optim.epochs=1"]
    assert run(base)[0] == 0
    before = _snapshot(out)
    resume = ["pretrain", "--output-dir", out, "--resume", "auto"]
    code, _, err = run([*resume, "optim.batch_size=32"])
    assert (
        code == 2
        and "optim.accum_iter x processes (the global batch): 64 -> 32 (optim.batch_size=64 optim.accum_iter=1 keeps it" in err
    )
    assert len(err.strip().splitlines()) == 1
    code, _, err = run([*resume, "model.depth=3", "masking.num_views=3", "target.name=hog", "optim.warmup_epochs=0"])
    assert code == 2
    for key in ("model.depth", "masking.num_views", "target.name", "optim.warmup_epochs"):
        assert key in err
    harmless = ["train.log_interval=1", "train.progress=true", "data.num_workers=1", "train.device=cpu", "data.pipeline=loader"]
    code, stdout, err = run([*resume, *harmless])
    assert code == 0, err
    assert "has finished its 1 epochs" in stdout
    assert _snapshot(out) == before  # config.yaml, summary.json, metrics, log, checkpoints untouched


def test_resume_with_a_harmless_change_continues_the_run(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config("optim.epochs=2", "train.max_time_s=0.001")
    assert Pretrainer(cfg, out).fit()["stopped_by"] == "time budget"
    resumed = tiny_config("optim.epochs=2", "train.log_interval=1")
    summary = Pretrainer(resumed, out, resume="auto").fit()
    assert summary["epochs"] == 2 and summary["final_loss"] is not None


# -------------------------------------------------------------------- 6. every result is kept
def test_every_evaluation_is_recorded_and_overwrite_removes_the_old_ones(tmp_path):
    out = tmp_path / "run"
    assert run(["pretrain", "--config", "demo", "--output-dir", out, *TINY, "optim.epochs=1"])[0] == 0
    ckpt = out / "checkpoint-last.pth"
    few = ["--max-images", "100"]
    for argv in (["knn", *few], ["linprobe", "--fast", *few], ["linprobe", "--epochs", "2", *few]):
        code, _, err = run([argv[0], "--checkpoint", ckpt, *argv[1:]])
        assert code == 0, err
    records = read_metrics(out / "evals.jsonl")
    assert [(r["kind"], r["protocol"]) for r in records] == [("knn", "weighted-knn"), ("linprobe", "logreg"),
                                                             ("linprobe", "mae")]  # fmt: skip
    for r in records:
        assert r["checkpoint"] == str(ckpt) and r["epoch"] == 1 and r["ete"] == 2 and re.match(r"\d{4}-\d\d-\d\dT", r["date"])
    assert records[2]["epochs"] == 2 and records[0]["k"] == 20
    assert {"knn.json", "linprobe-fast.json", "linprobe.json"} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    assert run(["pretrain", "--config", "demo", "--output-dir", out, "--overwrite", *TINY, "optim.epochs=1"])[0] == 0
    names = {p.name for p in out.iterdir()}
    assert not names & {"evals.jsonl", "knn.json", "linprobe.json", "linprobe-fast.json"} and "notes.txt" in names


# ---------------------------------------------------------------------- 7. presets win
def test_presets_win_over_a_same_named_folder_unless_the_value_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_config("demo").data.name == "embedded"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("./demo")
    (tmp_path / "mine.yaml").write_text("optim:\n  epochs: 7\n")
    assert load_config("mine.yaml").optim.epochs == 7
    (tmp_path / "mine").write_text("optim:\n  epochs: 7\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'mine'.*write \./mine"):
        load_config("mine")


# ------------------------------------------------------------- 8. a run exists once it saved one
def test_a_failed_start_does_not_block_the_retry_and_auto_resume_says_it_starts_fresh(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    start = ["pretrain", "--config", "demo", "--output-dir", out, *TINY, "optim.epochs=1"]
    code, _, err = run([*start, f"data.path={bad}", "data.pipeline=loader", "optim.batch_size=2"])
    assert code == 2 and "no readable image" in err
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl"}  # what the failed start left
    good = write_images(tmp_path / "good", 40)
    code, stdout, err = run([*start, f"data.path={good}", "optim.batch_size=32", "--resume", "auto"])
    assert code == 0, err
    assert f"no checkpoint in {out}, starting fresh" in stdout
    assert next(r["kind"] for r in read_metrics(out / "metrics.jsonl")) == "train"  # nothing left of the failed start
    mine = tmp_path / "mine"  # a folder dmjd never ran in keeps its files
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes")
    prepare_output_dir(mine, resume=False, overwrite=False, is_main=True)
    assert (mine / "config.yaml").read_text() == "my own notes"


# ----------------------------------------------------------------------- 9. warmup > epochs
def test_warmup_longer_than_the_run_warns_and_reports_the_lr_reached(tmp_path, capsys):
    trainer = Pretrainer(tiny_config("optim.epochs=1", "optim.warmup_epochs=3"), tmp_path)
    summary = trainer.fit()
    assert "WARNING: optim.warmup_epochs=3 (24 steps) exceeds the run's 8 steps" in capsys.readouterr().out
    logged = max(r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train")
    assert summary["lr_reached"] == pytest.approx(logged, rel=1e-5)
    assert summary["lr_reached"] == pytest.approx(summary["lr_peak"] * 7 / 24, rel=1e-5)  # step 7 of 24 warmup


# ------------------------------------------------------------------- 10. --version, fast --help
def test_version_and_help_answer_without_loading_torch():
    dmjd = [sys.executable, "-m", "dmjd"]
    version = subprocess.run([*dmjd, "--version"], capture_output=True, text=True, check=True).stdout
    assert re.fullmatch(r"dmjd \d+\.\d+\.\d+\n", version)
    script = (
        "import sys; from dmjd.cli import main\n"
        "for argv in ([], ['pretrain'], ['knn'], ['linprobe'], ['finetune'], ['tsne'], ['visualize'], ['plot'], "
        "['export'], ['bench'], ['shard']):\n"
        "    try: main([*argv, '--help'])\n"
        "    except SystemExit: pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("TORCH False")  # --help speed follows from this; timings are no test


# ------------------------------------------------------------------------- 11. a plain log
def test_plain_log_lines_per_interval_and_epoch_with_monitor_also_in_log_txt(demo_run):
    folder, stdout = demo_run
    lines = [line for line in stdout.splitlines() if line.startswith("dmjd: epoch")]
    steps = [line for line in lines if " step " in line]
    epochs = [line for line in lines if " done " in line]
    assert len(steps) == 2 * 4 and len(epochs) == 2  # 8 steps per epoch, log interval 2, 2 epochs
    for line in epochs:
        assert re.search(r"loss \d\.\d{4} \(mim .*, vis .*\) \| lr \S+ \| [\d,]+ images/s \| ETE \d\.\d\d", line)
    evals = [line for line in stdout.splitlines() if line.startswith("dmjd: eval after epoch")]
    assert len(evals) == 3 and "knn_top1" in evals[0] and "pixels_knn_top1" in evals[0]
    assert (folder / "log.txt").read_text().splitlines() == [
        line
        for line in stdout.splitlines()
        if line.startswith(("dmjd: epoch", "dmjd: eval", "dmjd: data embedded from", "dmjd: note: pre-training from scratch"))
    ]


def test_unreadable_images_are_logged_one_line_each_and_counted_per_epoch(tmp_path, caplog):
    folder = write_images(tmp_path / "imgs", 66)
    (folder / "000.png").write_bytes(b"")
    (folder / "001.png").write_bytes(b"\x89PNG broken")
    for pipeline in ("loader", "device"):
        with caplog.at_level("WARNING"):
            code, stdout, err = run(["pretrain", "--config", "demo", "--output-dir", tmp_path / pipeline, *TINY,
                                     "optim.epochs=1", f"data.path={folder}", f"data.pipeline={pipeline}"])  # fmt: skip
        assert code == 0, err
        logged = {r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()}
        assert {m.split()[3].rstrip(":") for m in logged} == {str(folder / "000.png"), str(folder / "001.png")}
        caplog.clear()
        if pipeline == "loader":
            assert re.search(r"epoch 1/1 done .*\| [12] unreadable images", stdout)
        else:
            assert "64 images, no labels, 2 unreadable files left out" in stdout


def test_an_unreadable_file_is_logged_once_by_a_run_whose_monitor_reads_it_too(tmp_path, caplog):
    folder = write_images(tmp_path / "imgs", 12, classes=("a", "b"), size=16)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level("WARNING"):  # the auto recipe turns the monitor on: it checks the same files
        code, stdout, err = run(["pretrain", "--output-dir", tmp_path / "run", f"data.path={folder}", "train.budget=5s",
                                 "train.progress=false", "data.split_holdout=false"])  # fmt: skip
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records].count(
        f"skipping unreadable image {folder / 'a' / 'broken.png'}: cannot identify image file '{folder / 'a' / 'broken.png'}'"
    ) == 1 and "eval after epoch 0" in stdout


def test_sigint_message_stands_on_its_own_line(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "dmjd", "pretrain", "--config", "demo", "--output-dir", str(out), *TINY,
            "optim.epochs=30", "train.progress=true"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-last.pth").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert any(line.startswith("dmjd: SIGINT received") for line in err.split("\n")), repr(err[-300:])


# ----------------------------------------------------------------------------- 12. dmjd plot
def test_plot_shows_evaluations_beside_losses_and_finetuning_panels(demo_run, tmp_path):
    folder = demo_run[0]
    assert run(["knn", "--checkpoint", folder / "checkpoint-last.pth", "--max-images", "100"])[0] == 0
    ft = tmp_path / "ft"
    code, _, err = run(["finetune", "--checkpoint", folder / "checkpoint-last.pth", "--output-dir", ft, "--recipe", "mae",
                        "--epochs", "2", "--max-images", "32", "--batch-size", "16", "--warmup-epochs", "0"])  # fmt: skip
    assert code == 0, err
    assert any(p.name.startswith("events.") for p in (ft / "tensorboard").iterdir())  # fine-tuning TensorBoard logs
    fig = curves_figure([folder, ft])
    pre, fine = fig.axes[:3], fig.axes[3:5]
    assert [ax.get_title() for ax in fine] == ["Fine-tuning: validation top-1", "Fine-tuning: loss"]
    assert pre[1].get_xlabel() == "wall-clock time (s)"
    labels = [line.get_label() for line in pre[2].get_lines()]
    assert any(label.endswith("knn_top1") for label in labels)  # monitor records
    assert any("knn_top1 (weighted-knn, pool cls)" in label for label in labels)  # evals.jsonl
    fig.canvas.draw()
    for ax in [*pre, *fine]:  # legends below the axes, outside the data
        legend = ax.get_legend()
        assert legend.get_window_extent().y1 <= ax.get_window_extent().y0
    code, stdout, _ = run(["plot", folder, ft, "--output-dir", tmp_path / "plots"])
    summary = json_lines(stdout)[-1]["runs"]
    assert "evaluation knn_top1 (weighted-knn, pool cls)" in summary[str(folder)] and "top1" in summary[str(ft)]
    assert time_unit(90) == ("s", 1.0) and time_unit(600) == ("min", 60.0) and time_unit(9000) == ("h", 3600.0)


# ------------------------------------------------------------------ 13. what the demo achieved
def test_the_demo_ends_with_its_knn_next_to_untrained_encoder_and_raw_pixels(demo_run):
    folder, stdout = demo_run
    assert "--config" not in makefile_demo_command(folder)  # the auto recipe, at the demo's budget
    assert any(w.startswith("train.budget=") for w in makefile_demo_command(folder))
    assert "dmjd: recipe auto" in stdout and "dmjd:   monitor.interval=" not in stdout  # the test's key won
    meaning = next(line for line in stdout.splitlines() if line.startswith("dmjd: in words:"))
    assert "untrained" in meaning and "raw pixels" in meaning and "dmjd compare" in stdout
    line = next(line for line in stdout.splitlines() if line.startswith("dmjd: knn_top1 on the embedded test split"))
    assert re.search(r"trained encoder \d\.\d{4} \(epoch 2\) \| untrained encoder \d\.\d{4} \| raw pixels \d\.\d{4}", line)
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("evaluation", "evaluation_untrained", "evaluation_raw_pixels"):
        assert 0 <= summary[key]["knn_top1"] <= 1
    assert summary["evaluation_test_images"] > 0  # the closing words weigh a change against it
    accuracy = curves_figure([folder]).axes[2]
    assert any(len(line.get_xdata()) == 3 for line in accuracy.get_lines())  # epochs 0, 1, 2
    assert (folder / "curves.png").stat().st_size > 0


# ------------------------------------------------------- 14. words, rounding and file modes
def test_figure_titles_are_words_metrics_rounded_files_readable(demo_run, tmp_path, monkeypatch):
    assert describe_masking(build_masking(load_config("demo"))).startswith(
        "K=2 disjoint views, 40 of 64 tokens masked each, block 2x2"
    )
    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda fig, t, **kw: titles.append(t) or real(fig, t, **kw))
    old_umask = os.umask(0o022)
    try:
        ckpt = demo_run[0] / "checkpoint-last.pth"
        out = tmp_path / "eval"
        assert run(["visualize", "--checkpoint", ckpt, "--output-dir", out, "--num-images", "1"])[0] == 0
        assert "K=2 disjoint views" in titles[-1] and "DisjointMasking(" not in titles[-1]
        assert run(["knn", "--checkpoint", ckpt, "--output-dir", out, "--max-images", "100"])[0] == 0
        assert run(["export", "--checkpoint", ckpt, "--output-dir", out])[0] == 0
        for name in ("knn.json", "export.json", "model.safetensors", "config.json", "README.md", "visualize.png"):
            assert (out / name).stat().st_mode & 0o777 == 0o644, name
        ckpt_mod.save_checkpoint({"model": {}}, tmp_path / "c.pth")
        assert (tmp_path / "c.pth").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        ckpt_mod.save_checkpoint({"model": {}}, tmp_path / "group.pth")
        assert (tmp_path / "group.pth").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old_umask)
    for record in [json.loads((out / "knn.json").read_text()), json.loads((demo_run[0] / "summary.json").read_text())]:
        floats = [v for v in _leaves(record) if isinstance(v, float)]
        assert floats and all(len(repr(v).lstrip("-0.").replace(".", "").split("e")[0]) <= 6 for v in floats)


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


# ------------------------------------------------------------ README's first hour, end to end
def readme_first_hour() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("### The first hour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_first_hour_walked_end_to_end(tmp_path, monkeypatch):
    """make demo, own folder, evaluate, export, resume: README's commands with tiny models."""
    photos = write_images(tmp_path / "photos", 70)
    places = {"demo-output": str(tmp_path / "demo-output"), "runs/own": str(tmp_path / "runs" / "own"),
              "~/photos": str(photos)}  # fmt: skip
    commands = readme_first_hour()
    assert [c.split()[:2] for c in commands] == [["make", "demo"], ["dmjd", "pretrain"], ["dmjd", "knn"],
                                                 ["dmjd", "export"], ["dmjd", "pretrain"], ["dmjd", "compare"]]  # fmt: skip
    real_save = Pretrainer._save_epoch_checkpoints

    def save_then_ctrl_c(self):  # the user presses Ctrl-C during the second epoch of their own run
        real_save(self)
        if self.state.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    for command in commands:
        for placeholder, path in places.items():
            command = command.replace(placeholder, path)
        argv = makefile_demo_command(Path(places["demo-output"])) if command == "make demo" else shlex.split(command)[1:]
        if command == "make demo":
            argv += [*TINY, *MONITOR, *DEMO_SHORT]
        elif "data.path" in command:
            argv += [*TINY, "optim.batch_size=32", "train.budget=null"]
            monkeypatch.setattr(Pretrainer, "_save_epoch_checkpoints", save_then_ctrl_c)
        elif argv[0] == "compare":  # shrunk: a 1.5 s budget, two seeds
            argv = [*argv[: argv.index("--budget")], "--budget", "1.5s", "--seeds", "2", "--output-dir",
                    str(tmp_path / "compare")]  # fmt: skip
        code, stdout, err = run(argv)
        monkeypatch.undo()
        if "data.path" in command:
            assert code == 130 and "SIGINT received" in err, err
            assert f"data imagefolder from {photos}, train split: 70 images" in stdout
            continue
        assert code == 0, (command, err)
        if command == "make demo":
            assert "knn_top1 on the embedded test split" in stdout
        elif argv[0] == "knn":
            assert 0 <= json_lines(stdout)[-1]["knn_top1"] <= 1
        elif argv[0] == "compare":
            assert "dmjd: verdict: " in stdout and (tmp_path / "compare" / "report.md").is_file()
        elif argv[0] == "export":
            call = next(line for line in stdout.splitlines() if line.startswith("timm.create_model("))
            encoder = eval(call, {"timm": timm})
            assert encoder.forward_features(torch.rand(1, 1, 32, 32)).shape[0] == 1
        else:  # resume
            assert "resumed from" in stdout and load_checkpoint(Path(places["runs/own"]) / "checkpoint-last.pth")["epoch"] == 2
    assert len(read_metrics(Path(places["demo-output"]) / "evals.jsonl")) == 2  # knn and export, recorded
