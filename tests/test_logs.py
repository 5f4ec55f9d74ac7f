"""Logs that read well away from a terminal, and evaluation loaders sized to the machine (issue 32
item 4): no progress-bar redraws in a redirected log, one plain line per logged interval instead, and
no more loader workers than cores."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from conftest import TINY
from dmjd.cli import main
from dmjd.engine.metrics import bars_shown
from test_eval_checkpoints import write_checkpoint


@pytest.mark.parametrize(("stdout", "stderr", "shown"), [(True, True, True), (False, True, False), (True, False, False)])
def test_bars_draw_only_when_stdout_and_stderr_are_terminals(monkeypatch, stdout, stderr, shown):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: stderr)
    assert bars_shown(True) is shown
    assert bars_shown(False) is False


def test_a_pretrain_written_to_a_file_has_one_line_per_logged_interval_and_no_bar(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "console.log"
    cmd = [sys.executable, "-m", "dmjd", "pretrain", "--config", "demo", "--output-dir", str(out), *TINY,
           "train.progress=true", "optim.epochs=2"]  # fmt: skip  # 512 images / 64 = 8 steps per epoch, logged every 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "w") as f:  # `make demo > log 2>&1`
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and "it/s" not in text  # no bar state at all
    steps = [line for line in text.splitlines() if line.startswith("dmjd: epoch") and " step " in line]
    epochs = [line for line in text.splitlines() if line.startswith("dmjd: epoch") and " done" in line]
    assert len(steps) == 2 * 8 // 2 and len(epochs) == 2
    log_txt = (out / "log.txt").read_text().splitlines()
    assert all(line in log_txt for line in steps + epochs)  # log.txt reads the same lines


def test_evaluation_loaders_use_no_more_workers_than_cores(tmp_path, monkeypatch):
    """On a one-core affinity ``data.num_workers=4`` would make PyTorch warn that it creates 4 worker
    processes where 1 is suggested; the evaluation caps them at the cores it may use."""
    write_checkpoint(tmp_path / "run" / "checkpoint-last.pth")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["knn", "--checkpoint", str(tmp_path / "run" / "checkpoint-last.pth"), "--output-dir",
                     str(tmp_path / "knn"), "--max-images", "40", "data.num_workers=4"])  # fmt: skip
    assert code == 0
    assert not [w for w in caught if "worker processes" in str(w.message)]
