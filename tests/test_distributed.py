"""Runs under torchrun on gloo (CPU): two processes reproduce one with the same global batch and seed,
a run resumes on another process count, the auto recipe (its monitor on) runs to its end, and a stop
signal to torchrun stops every worker with a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_VIT, tiny_config, write_images
from dmjd.engine import Pretrainer, TrainingInterrupted, load_checkpoint
from dmjd.engine.distributed import DistInfo, rank_log
from dmjd.engine.metrics import read_metrics
from dmjd.engine.resume import resume_config
from dmjd.engine.run_dir import RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 900  # generous: the machine may be busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    """``torchrun --nproc_per_node N -m dmjd ARGS`` on a free local port."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "dmjd", *args,
    ]  # fmt: skip


def leftover_processes(folder: Path) -> list[int]:
    """Pids of running processes whose command line names ``folder`` (a worker or launcher of its run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(folder) in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("labelled"), 16, classes=("a", "b", "c"), size=16)


def assert_weights_close(a: dict, b: dict) -> None:
    # atol 1e-4: attention key biases get a mathematically zero gradient (softmax is shift
    # invariant), so Adam turns reduction-order noise into updates of order lr (seen: 3e-5).
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)


def test_two_processes_match_one_and_resume_on_one_then_back_on_two(tmp_path):
    overrides = ["optim.epochs=2", "optim.batch_size=64"]
    Pretrainer(tiny_config(*overrides), tmp_path / "one").fit()
    cmd = torchrun(2, "pretrain", "--config", "demo", "--output-dir", str(tmp_path / "two"), *TINY,
                   "optim.epochs=2", "optim.batch_size=32", "train.checkpoint_interval=1")  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "train"]
    two = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in one] == [r["step"] for r in two]  # written once, by rank 0
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"])
    wa = load_checkpoint(tmp_path / "one" / "checkpoint-last.pth")["model"]
    assert_weights_close(wa, load_checkpoint(tmp_path / "two" / "checkpoint-last.pth")["model"])

    # the 2-process run's epoch-1 checkpoint (step 8) resumes in one process with its own saved config:
    # the per-process batch becomes 64 (the global batch stays); SIGINT at step 12 stops it mid-epoch
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tmp_path / "two" / "checkpoint-1.pth", mixed / "checkpoint-last.pth")
    resumed = Pretrainer(resume_config(mixed / "checkpoint-last.pth"), mixed, resume="auto")
    assert (resumed.cfg.optim.batch_size, resumed.state.opt_step) == (64, 8)

    def interrupt(t: Pretrainer) -> None:
        if t.state.opt_step == 12:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        resumed.fit(on_step_end=interrupt)
    saved = load_checkpoint(mixed / "checkpoint-last.pth")
    assert (saved["step"], saved["world_size"], saved["run_state"]["epoch_step"]) == (13, 1, 5)
    # ... and back on two processes it ends at its plan (2 epochs, 16 steps) where the others ended
    back = subprocess.run(torchrun(2, "pretrain", "--output-dir", str(mixed), "--resume", "auto"),
                          capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)  # fmt: skip
    assert back.returncode == 0, back.stderr[-3000:]
    assert back.stdout.count("dmjd: resumed on 2 processes instead of 1: optim.batch_size 64 -> 32") == 1
    assert json.loads((mixed / "summary.json").read_text())["steps"] == 16
    assert_weights_close(wa, load_checkpoint(mixed / "checkpoint-last.pth")["model"])
    assert not (mixed / ".dmjd.lock").exists() and leftover_processes(mixed) == []


def test_the_auto_recipe_with_its_monitor_runs_to_its_end_under_two_processes_in_one_voice(labelled, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "auto"
    shutil.copytree(labelled, folder)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    cmd = torchrun(2, "pretrain", "--output-dir", str(out), f"data.path={folder}", "train.budget=15s",
                   "train.progress=false", "train.rank_logs=true")  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == summary["budget_plan"]["total_steps"] or summary["stopped_by"] == "time budget"
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == summary["steps"]  # the monitor ran, before and at the end
    assert not (out / ".dmjd.lock").exists() and leftover_processes(out) == []
    # one voice: the recipe, the start-up lines and the broken file's warning once; rank 1's own in its log
    console = proc.stdout + proc.stderr
    assert console.count("dmjd: recipe auto for a budget of 15 s") == 1 and console.count("dmjd: data imagefolder") == 1
    assert console.count("skipping unreadable image") == 1
    assert (out / "rank-1.log").is_file() and not (out / "rank-0.log").exists()  # rank 0 speaks on the console


def test_a_rank_log_takes_the_warnings_of_its_process(tmp_path):
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        path = rank_log(tmp_path, DistInfo(rank=1, world_size=2))
        logging.getLogger("dmjd.data.datasets").warning("skipping unreadable image x.png: broken")
        logging.getLogger("dmjd.data.datasets").info("not this")
    finally:
        for handler in set(root.handlers) - set(before):
            handler.close()
            root.removeHandler(handler)
    assert path == tmp_path / "rank-1.log"
    assert path.read_text().splitlines()[0].endswith("WARNING dmjd.data.datasets: skipping unreadable image x.png: broken")
    assert "not this" not in path.read_text()


def _wait_for_training(out: Path, proc: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> None:
    """Wait until the run logged a training record (it is past start-up and its first evaluation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"no training record in {out} (torchrun exit code {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_torchrun_stops_every_worker_with_a_checkpoint(labelled, tmp_path, sig):
    """The auto recipe's budgeted run, on a small ViT: with the recipe's own choice (ViT-B for 30 min
    here) the step in flight and the 1.3 GB checkpoint outlasted torchrun's 30-s grace period under
    heavy load (seen once at load 12), which then killed the workers."""
    out = tmp_path / "run"
    cmd = torchrun(2, "pretrain", "--output-dir", str(out), f"data.path={labelled}", "train.budget=30m", *TINY_VIT,
                   "train.progress=false", "train.log_interval=1")  # fmt: skip
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=ENV)
        try:
            _wait_for_training(out, proc)
            proc.send_signal(sig)
            proc.wait(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = (tmp_path / "stderr").read_text()
    assert "forcefully exiting" not in err  # every worker ended within torchrun's grace period
    assert f"dmjd: interrupted by {sig.name} at step" in (out / "log.txt").read_text()
    assert err.count(f"dmjd: {sig.name} received: saved") == 1  # one voice: rank 0's
    assert load_checkpoint(out / "checkpoint-last.pth")["world_size"] == 2
    assert not (out / ".dmjd.lock").exists() and leftover_processes(out) == []


def test_workers_whose_torchrun_is_killed_stop_with_a_checkpoint_instead_of_training_on(labelled, tmp_path):
    """kill -9 of torchrun (an OOM killer, a scheduler) cannot be forwarded: its workers used to train
    on as orphans. They ask the kernel for SIGTERM when their launcher dies, so they stop together at
    one step, save, and leave nothing running."""
    out = tmp_path / "run"
    cmd = torchrun(2, "pretrain", "--output-dir", str(out), f"data.path={labelled}", "train.budget=30m", *TINY_VIT,
                   "train.progress=false", "train.log_interval=1")  # fmt: skip
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
        try:
            _wait_for_training(out, proc)
            proc.kill()
            proc.wait(timeout=TIMEOUT_S)
            deadline = time.monotonic() + 120
            while leftover_processes(out) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for pid in leftover_processes(out):
                os.kill(pid, signal.SIGKILL)
    assert leftover_processes(out) == []
    assert "dmjd: interrupted by SIGTERM at step" in (out / "log.txt").read_text()
    assert load_checkpoint(out / "checkpoint-last.pth")["world_size"] == 2
    assert not (out / ".dmjd.lock").exists()


def test_sigterm_to_one_rank_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    """A scheduler that signals one worker only (issue 32): both ranks stop at the same step and save,
    nothing hangs or aborts, and at most one line is printed. Once the first rank has exited, torchrun
    terminates the other, which may still be winding down, so its exit code and line are not pinned."""
    out = tmp_path / "run"
    cmd = torchrun(2, "pretrain", "--config", "demo", "--output-dir", str(out), *TINY, "optim.epochs=200",
                   "optim.batch_size=32")  # fmt: skip
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
        try:
            _wait_for_training(out, proc)
            ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            assert len(ranks) == 2
            os.kill(int(ranks[-1]), signal.SIGTERM)
            proc.wait(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = (tmp_path / "stderr").read_text()
    assert err.count("dmjd: SIGTERM received: saved") <= 1 and "dmjd: interrupted\n" not in err
    assert "Traceback" not in err.split("failed (exitcode")[0]  # no worker's: torchrun's own report follows
    assert "SIGABRT" not in err and "exitcode  : 130" in err
    assert "dmjd: interrupted by SIGTERM at step" in (out / "log.txt").read_text()
    assert load_checkpoint(out / "checkpoint-last.pth")["world_size"] == 2
    assert leftover_processes(out) == []


def _one_line_refusal(cmd: list[str]) -> str:
    """Run ``cmd`` (torchrun, 2 processes) expecting a refusal: its one ``dmjd: error:`` line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dmjd: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("dmjd: error:")[0]  # no worker's traceback before it
    return errors[0]


def test_bad_input_under_torchrun_is_one_line_and_loses_nothing(tmp_path):
    # a global batch of 33 saved on one process cannot be split over two
    odd = tmp_path / "odd"
    Pretrainer(tiny_config("optim.batch_size=33", "optim.max_steps=1"), odd).fit()
    before = (odd / "checkpoint-last.pth").read_bytes()
    line = _one_line_refusal(torchrun(2, "pretrain", "--output-dir", str(odd), "--resume", "auto"))
    assert "global batch of 33 images" in line and "run on 1, 3, 11, 33 processes" in line
    assert (odd / "checkpoint-last.pth").read_bytes() == before
    # more processes than the data has global batches for
    line = _one_line_refusal(torchrun(2, "pretrain", "--config", "demo", "--output-dir", str(tmp_path / "small"), *TINY,
                                      "data.limit=40", "optim.batch_size=32"))  # fmt: skip
    assert "fewer than one global batch of 64" in line
    # a folder locked by a live process (this one)
    locked = tmp_path / "locked"
    locked.mkdir()
    lock = RunLock(locked)
    try:
        line = _one_line_refusal(torchrun(2, "pretrain", "--config", "demo", "--output-dir", str(locked), *TINY))
        assert f"is in use by another run (pid {os.getpid()}" in line
        assert (locked / ".dmjd.lock").is_file() and sorted(p.name for p in locked.iterdir()) == [".dmjd.lock"]
    finally:
        lock.release()
