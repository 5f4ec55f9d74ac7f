"""Faults a long run meets: kills, preemption, NaNs, bad files, bad input, unsafe files, resources."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, tiny_config
from dmjd.cli import main
from dmjd.engine import NonFiniteLossError, Pretrainer, ResourceError, load_checkpoint
from dmjd.engine import faults as faults_mod
from dmjd.engine import trainer as trainer_mod
from dmjd.engine.metrics import read_metrics

CLI = [sys.executable, "-m", "dmjd", "pretrain", "--config", "demo"]


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    script = textwrap.dedent(
        """
        import sys, torch
        from dmjd.io.checkpoint import save_checkpoint
        state = {"model": {"w": torch.randn(8_000_000)}, "epoch": 0}
        i = 0
        while True:
            state["epoch"] = i
            save_checkpoint(state, sys.argv[1])
            i += 1
        """
    )
    target = tmp_path / "checkpoint-last.pth"
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
        _wait_for(target)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert load_checkpoint(target)["model"]["w"].numel() == 8_000_000
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 4  # a killed writer may leave its temp file, never a broken checkpoint


def test_sigterm_saves_and_resume_auto_finishes(tmp_path):
    out = tmp_path / "run"
    args = [*CLI, "--output-dir", str(out), *TINY, "optim.epochs=30"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint-last.pth")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM received" in err and "--resume auto" in err
    saved = load_checkpoint(out / "checkpoint-last.pth")
    assert 0 < saved["step"] < 30 * 8
    resume = [sys.executable, "-m", "dmjd", "pretrain", "--output-dir", str(out), "--resume", "auto"]
    # The resumed run keeps the saved config; a time budget (a setting that does not change the run) ends it.
    done = subprocess.run([*resume, "train.max_time_s=1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint-last.pth")["step"] >= saved["step"]


def test_sigkill_mid_training_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*CLI, "--output-dir", str(out), *TINY, "optim.epochs=4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for(out / "checkpoint-last.pth")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["pretrain", "--output-dir", str(out), "--resume", "auto"]) == 0
    assert load_checkpoint(out / "checkpoint-last.pth")["epoch"] == 4


class _NaNAt:
    """Wraps a loss function so that the chosen micro-steps produce a NaN loss."""

    def __init__(self, fn, steps):
        self.fn, self.steps, self.calls = fn, set(steps), 0

    def __call__(self, out, targets, views):
        losses = self.fn(out, targets, views)
        if self.calls in self.steps:
            losses = {k: v * float("nan") for k, v in losses.items()}
        self.calls += 1
        return losses


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    trainer = Pretrainer(tiny_config("optim.epochs=1"), tmp_path)
    trainer.loss_fn = _NaNAt(trainer.loss_fn, {2, 5})
    summary = trainer.fit()
    assert summary["skipped_steps"] == 2
    assert sum(r["skipped_steps"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train") == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_consecutive_nonfinite_steps_stop_the_run_without_touching_weights(tmp_path):
    trainer = Pretrainer(tiny_config("optim.epochs=3", "train.max_nonfinite_steps=3"), tmp_path)
    trainer.loss_fn = _NaNAt(trainer.loss_fn, range(9, 100))
    with pytest.raises(NonFiniteLossError, match="consecutive"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert saved["epoch"] == 1
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all(), name


def test_bad_images_are_counted_not_fatal(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(70):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (folder / "000.png").write_bytes(b"")
    (folder / "001.png").write_bytes(b"\x89PNG garbage")
    cfg = tiny_config("data.name=imagefolder", f"data.path={folder}", "data.limit=null", "optim.epochs=1")
    summary = Pretrainer(cfg, tmp_path / "run").fit()
    assert summary["bad_images"] >= 1 and summary["steps"] == 1


def test_resume_of_crafted_pickle_is_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Evil(), "config": {}}))
    assert main(["pretrain", "--output-dir", str(tmp_path / "run"), "--resume", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_unwritable_output_dir_is_reported_at_start(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["pretrain", "--config", "demo", "--output-dir", str(blocker / "run")]) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


def test_low_disk_space_is_reported_at_start(tmp_path, monkeypatch):
    monkeypatch.setattr(
        faults_mod.shutil, "disk_usage", lambda _: type("U", (), {"free": 32 * 2**20})()
    )  # above dmjd.outputs.MIN_FREE_BYTES
    with pytest.raises(ResourceError, match="MiB free"):
        Pretrainer(tiny_config(), tmp_path)


def test_out_of_memory_suggests_a_batch_that_fits(tmp_path, monkeypatch):
    trainer = Pretrainer(tiny_config(), tmp_path)

    def oom(*_args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "compute_losses", oom)
    with pytest.raises(ResourceError, match=r"optim.batch_size=32 optim.accum_iter=2"):
        trainer.fit()


def test_checkpoint_every_n_steps_is_resumable_mid_epoch(tmp_path, monkeypatch):
    saved = []
    real_save = trainer_mod.ckpt.save_checkpoint

    def spy(state, path):
        saved.append((state["run_state"]["epoch"], state["run_state"]["epoch_step"], Path(path).name))
        return real_save(state, path)

    monkeypatch.setattr(trainer_mod.ckpt, "save_checkpoint", spy)
    Pretrainer(tiny_config("optim.epochs=1", "train.checkpoint_steps=3"), tmp_path).fit()
    assert [s for s in saved if s[1] in (3, 6)] == [(0, 3, "checkpoint-last.pth"), (0, 6, "checkpoint-last.pth")]
