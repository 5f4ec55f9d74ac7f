"""Two processes on gloo (CPU) reproduce one process with the same global batch and seed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import TINY, tiny_config
from dmjd.engine import Pretrainer, load_checkpoint
from dmjd.engine.metrics import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    overrides = ["optim.epochs=2", "optim.batch_size=64"]
    Pretrainer(tiny_config(*overrides), tmp_path / "one").fit()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "dmjd", "pretrain", "--config", "demo", "--output-dir", str(tmp_path / "two"),
        *TINY, "optim.epochs=2", "optim.batch_size=32", "train.checkpoint_interval=1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "train"]
    two = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in one] == [r["step"] for r in two]  # written once, by rank 0
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"])
    wa = load_checkpoint(tmp_path / "one" / "checkpoint-last.pth")["model"]
    wb = load_checkpoint(tmp_path / "two" / "checkpoint-last.pth")["model"]
    # atol 1e-4: attention key biases get a mathematically zero gradient (softmax is shift
    # invariant), so Adam turns reduction-order noise into updates of order lr (seen: 3e-5).
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-4)
    # the 2-process run's epoch-1 checkpoint resumes in one process (same global batch of 64) and
    # ends where the 1-process run ended
    epoch_1 = tmp_path / "two" / "checkpoint-1.pth"
    assert Pretrainer(tiny_config(*overrides), tmp_path / "resumed", resume=epoch_1).fit()["steps"] == 2 * 8
    wr = load_checkpoint(tmp_path / "resumed" / "checkpoint-last.pth")["model"]
    for key in wa:
        torch.testing.assert_close(wr[key], wa[key], rtol=1e-4, atol=1e-4)
