"""End-to-end pre-training: loss falls, resume reproduces the uninterrupted run, CLI contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_config
from dmjd.cli import main
from dmjd.engine import Pretrainer, TrainingInterrupted, load_checkpoint
from dmjd.engine.metrics import read_metrics


def _train_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_dmjd_pretraining_loss_goes_down(tmp_path):
    cfg = tiny_config("optim.epochs=4")
    summary = Pretrainer(cfg, tmp_path).fit()
    losses = _train_losses(tmp_path)
    assert summary["steps"] == 4 * 8 and summary["ete"] == 8
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    for key in ("epoch", "step", "loss", "loss_mim", "loss_vis", "lr", "pred_ratio", "ete", "images_per_s", "views_per_s"):
        assert key in train[-1]
    assert train[-1]["pred_ratio"] == pytest.approx(1.0)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3, 4]  # 1-based, as log.txt
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert ckpt["epoch"] == 4 and ckpt["config"]["masking"]["num_views"] == 2


def test_mae_baseline_is_a_config_of_the_same_code(tmp_path):
    cfg = tiny_config(
        "masking.num_views=1", "masking.mask_ratio=0.75", "masking.pattern=random", "masking.pred_ratio=null", "model.vdb=false"
    )
    Pretrainer(cfg, tmp_path).fit()
    last = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"][-1]
    assert "loss_vis" not in last and last["loss"] == pytest.approx(last["loss_mim"])
    assert last["pred_ratio"] == pytest.approx(0.75)


def _stop_after_first_epoch(trainer):
    if trainer.state.epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("pipeline", ["device", "loader"])
def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, pipeline):
    cfg = tiny_config("optim.epochs=3", f"data.pipeline={pipeline}")
    full = Pretrainer(cfg, tmp_path / "full").fit()
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        Pretrainer(cfg, tmp_path / "cut").fit(on_epoch_end=_stop_after_first_epoch)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")
    assert state["run_state"]["epoch"] == 1 and state["run_state"]["epoch_step"] == 1  # mid-epoch
    resumed = Pretrainer(cfg, tmp_path / "cut", resume="auto").fit()
    assert resumed["steps"] == full["steps"]
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"}
    late = [s for s in a if s > 10]
    assert late and all(b[s] == pytest.approx(a[s], rel=1e-4) for s in late)
    wa = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    wb = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


def test_max_steps_ends_the_schedule_mid_epoch(tmp_path, capsys):
    """optim.max_steps stops mid-epoch with the cosine schedule at its end; ETE counts the partial
    epoch; the finished run is not trained again on resume (512 images / 64 = 8 steps per epoch)."""
    cfg = tiny_config("optim.epochs=2", "optim.max_steps=11", "optim.warmup_epochs=0.25", "train.log_interval=1")
    seen = []
    summary = Pretrainer(cfg, tmp_path).fit(on_epoch_end=lambda t: seen.append((t.state.epoch, t.finished)))
    assert (summary["steps"], summary["epochs"], summary["stopped_by"]) == (11, 1.375, "max_steps")  # 11 / 8
    assert summary["ete"] == pytest.approx(2 * 11 / 8)  # K = 2 views
    assert seen == [(0, False), (1, False), (1, True)]  # before training, after epoch 1, at the end
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train][-1] == 11 and train[-1]["lr"] < 0.05 * summary["lr_peak"]
    assert "epoch 2/2 stopped at step 11" in capsys.readouterr().out  # not "done": the epoch was cut
    again = Pretrainer(cfg, tmp_path, resume="auto").fit()
    assert again["steps"] == 11 and "has finished its 1.375 epochs (11 steps, stopped by max_steps)" in capsys.readouterr().out


def test_step_hook_evaluates_mid_epoch_outside_training_time(tmp_path, capsys):
    """on_step_end runs after every optimizer step; what it returns is an eval record at that step
    (fractional ETE), and the seconds it spends count neither as training time nor in images/s
    (8 steps per epoch)."""
    cfg = tiny_config("optim.epochs=2", "train.log_interval=1")

    def every_fifth(trainer: Pretrainer) -> dict | None:
        if trainer.state.opt_step % 5:
            return None
        time.sleep(1.0)
        return {"knn_top1": 0.5}

    start = time.perf_counter()
    summary = Pretrainer(cfg, tmp_path).fit(on_step_end=every_fifth)
    wall = time.perf_counter() - start
    records = read_metrics(tmp_path / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals] == [(5, 1), (10, 2), (15, 2)]  # the 1-based epoch each is in
    assert evals[0]["ete"] == pytest.approx(2 * 5 / 8)  # K = 2 views
    assert all(r["mid_epoch"] for r in evals) and "dmjd: eval at step 5 of epoch 1/2 (ETE 1.25)" in capsys.readouterr().out
    assert wall - summary["time_s"] >= 3.0
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    assert train[16]["time"] <= summary["time_s"] < train[16]["time"] + 1.0
    speeds = sorted(r["images_per_s"] for r in train.values())
    assert min(train[s]["images_per_s"] for s in (6, 11, 16)) > 0.3 * speeds[len(speeds) // 2]


def test_cli_pretrain_contract(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        "demo",
        "--output-dir",
        str(out),
        "optim.epochs=1",
        "data.limit=256",
        "optim.batch_size=64",
        "train.progress=false",
    ]
    assert main(args) == 0
    for name in ("metrics.jsonl", "checkpoint-last.pth", "reconstruction.png", "config.yaml", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert '"kind": "summary"' in capsys.readouterr().out.strip().splitlines()[-1]
    # a second run into the same folder is refused and touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_cli_rejects_bad_config_before_training(tmp_path, capsys):
    assert main(["pretrain", "--config", "demo", "--output-dir", str(tmp_path / "r"), "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_pretrain_help_documents_overrides():
    proc = subprocess.run([sys.executable, "-m", "dmjd", "pretrain", "--help"], capture_output=True, text=True, check=True)
    for key in ("masking.num_views", "masking.pred_ratio", "optim.lr_rule", "target.name", "data.path"):
        assert key in proc.stdout
