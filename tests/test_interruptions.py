"""Nothing lost, nothing misread: the output folder's lock, what a resume carries and cuts back,
how interruptions are logged, and the start-up checks of memory and threads (issue 24)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from dmjd.engine import OutputDirError, Pretrainer, TrainingInterrupted
from dmjd.engine import resources as resources_mod
from dmjd.engine.metrics import read_metrics
from dmjd.engine.resources import (
    StepMemory,
    StepMemoryError,
    available_memory,
    check_step_memory,
    cpu_thread_hint,
    measure_step_memory,
    other_cpu_load,
    saved_tensor_bytes,
)
from dmjd.engine.run_dir import LOCK_FILE, prepare_output_dir

SHORT = ("optim.epochs=1", "data.limit=256")  # 4 steps of 64 images


def _write_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": socket.gethostname(), "since": "2026-12-01 10:00:00 UTC"}
    (folder / LOCK_FILE).write_text(json.dumps(owner))


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, other.pid)
        (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')  # the first run's
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {other.pid} on .*since 2026-12-01"):
            Pretrainer(tiny_config(*SHORT), tmp_path)
        with pytest.raises(OutputDirError, match=f"pid {other.pid}"):
            prepare_output_dir(tmp_path, resume=False, overwrite=True, is_main=True, lock=True)
        assert (tmp_path / "metrics.jsonl").is_file()  # nothing cleared
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_is_held_only_while_the_run_lasts(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    held = []
    trainer = Pretrainer(tiny_config(*SHORT), tmp_path)
    assert f"taking over the stale lock of pid {dead.pid}" in capsys.readouterr().out
    trainer.fit(on_epoch_end=lambda t: held.append(json.loads((tmp_path / LOCK_FILE).read_text())["pid"]))
    assert held and set(held) == {os.getpid()}
    assert not (tmp_path / LOCK_FILE).exists()


def test_an_unreadable_lock_is_stale_only_once_it_is_old(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # a run killed between creating the file and writing its owner
    old = os.stat(tmp_path / LOCK_FILE).st_mtime - 60
    os.utime(tmp_path / LOCK_FILE, (old, old))
    lock = prepare_output_dir(tmp_path, resume=False, overwrite=False, is_main=True, lock=True)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_when_a_run_stops_on_an_error(tmp_path):
    def crash(trainer):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Pretrainer(tiny_config(*SHORT), tmp_path).fit(on_step_end=crash)
    assert not (tmp_path / LOCK_FILE).exists()


def _stop_after_first_epoch(trainer):
    if trainer.state.epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_that_arrives_during_the_steps_agreement_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    """The handler can run while ``agree_on_step`` waits in its collective (a rank waiting for the
    others): the agreement then says "no signal", and assigning it erased the one just received, so
    the run went on (a torchrun stop-signal test failed so, 1 run in 4). It stops one step later."""
    import dmjd.engine.trainer as trainer_module

    agree, calls = trainer_module.agree_on_step, []

    def signal_during_the_collective(info, signum, seconds):
        result = agree(info, signum, seconds)  # what the collective decided, without the signal below
        calls.append(signum)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)  # the handler runs now, inside the "collective"
        return result

    monkeypatch.setattr(trainer_module, "agree_on_step", signal_during_the_collective)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM received: saved .* at step 4 "):
        Pretrainer(tiny_config("optim.epochs=2", "data.limit=256"), tmp_path / "run").fit()


def test_an_interrupted_epoch_logs_the_loss_of_all_its_steps_and_says_where_it_stopped(tmp_path):
    cfg = tiny_config("optim.epochs=2", "data.limit=256")
    Pretrainer(cfg, tmp_path / "full").fit()
    with pytest.raises(
        TrainingInterrupted, match=r"SIGTERM received: saved .*checkpoint-last.pth at step 5 \(epoch 2/2\); continue"
    ):
        Pretrainer(cfg, tmp_path / "cut").fit(on_epoch_end=_stop_after_first_epoch)
    Pretrainer(cfg, tmp_path / "cut", resume="auto").fit()
    epochs = [
        [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "epoch"] for run in ("full", "cut")
    ]
    assert len(epochs[0]) == len(epochs[1]) == 2
    assert epochs[1] == pytest.approx(epochs[0], rel=1e-5)  # the resumed epoch averages its 4 steps, not 3
    log = (tmp_path / "cut" / "log.txt").read_text()
    assert "dmjd: interrupted by SIGTERM at step 5 (epoch 2/2); checkpoint saved" in log
    assert re.search(r"dmjd: resumed from .*checkpoint-last.pth at step 5 \(epoch 2/2\)", log)
    assert "epoch 2/2 done" in log


def test_a_resume_after_a_kill_logs_each_step_once(tmp_path):
    cfg = tiny_config(*SHORT, "train.checkpoint_steps=2", "train.log_interval=1")

    def killed_after_step_3(trainer):  # a crash with no interrupt checkpoint, like kill -9
        if trainer.state.opt_step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        Pretrainer(cfg, tmp_path).fit(on_step_end=killed_after_step_3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    Pretrainer(cfg, tmp_path, resume="auto").fit()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4]
    steps = re.findall(r"epoch 1/1 step (\d+)", (tmp_path / "log.txt").read_text())
    assert steps == ["1", "2", "3", "4"]
    assert "1 log records after step 2 dropped" in (tmp_path / "log.txt").read_text()


def test_a_step_that_cannot_fit_memory_is_refused_with_a_batch_that_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(resources_mod, "available_memory", lambda device: 64 << 20)  # 64 MiB
    with pytest.raises(
        StepMemoryError,
        match=r"optim.batch_size=4000 needs about .* GiB, available RAM is 0.06 GiB: "
        r"it cannot fit; try optim.batch_size=\d+ optim.accum_iter=\d+",
    ):
        Pretrainer(tiny_config(*SHORT, "optim.batch_size=4000", "data.limit=4000"), tmp_path)


def test_step_memory_check_refuses_warns_and_suggests_the_same_global_batch():
    memory = StepMemory(state=100 << 20, per_image=1 << 20)  # 100 MiB of state, 1 MiB per image
    assert check_step_memory(memory, 64, 1, 1 << 30, "available RAM") is None
    assert check_step_memory(memory, 64, 1, None, "available RAM") is None  # unknown: nothing checked
    warning = check_step_memory(memory, 700, 1, 900 << 20, "available RAM")  # 800 of 900 MiB
    assert warning.startswith("WARNING:") and "close to the limit" in warning
    with pytest.raises(StepMemoryError, match=r"try optim.batch_size=250 optim.accum_iter=16 ") as info:
        check_step_memory(memory, 2000, 2, 500 << 20, "free GPU memory")
    assert "needs about 2.05 GiB, free GPU memory is 0.49 GiB" in str(info.value)
    assert memory.need(250) <= 0.8 * (500 << 20) < memory.need(400)  # 400: the next divisor of 2000


def test_measured_step_memory_predicts_the_saved_activations_of_a_larger_batch(tmp_path):
    trainer = Pretrainer(tiny_config(*SHORT), tmp_path)

    def probe(n):
        return trainer._losses(torch.rand(n, 1, 32, 32), trainer.step_masks(0, n))

    memory = measure_step_memory(trainer.model, probe)
    params = sum(p.numel() * 4 for p in trainer.model.parameters())
    assert memory.per_image > 0 and memory.state >= 3 * params
    assert memory.state - 3 * params + 32 * memory.per_image == pytest.approx(saved_tensor_bytes(lambda: probe(32)), rel=0.05)


def test_available_ram_is_shared_by_the_processes_of_this_host(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemAvailable:   4000000 kB\n")
    assert available_memory(torch.device("cpu"), meminfo) == 4000000 * 1024
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert available_memory(torch.device("cpu"), meminfo) == 2000000 * 1024
    assert available_memory(torch.device("cpu"), tmp_path / "missing") is None


def test_thread_hint_only_on_a_small_cpu_with_several_threads():
    cpu = torch.device("cpu")
    load = other_cpu_load(0.05)
    assert load is None or 0.0 <= load <= (os.cpu_count() or 1) + 0.5  # what other processes use now
    assert "OMP_NUM_THREADS=1" in cpu_thread_hint(cpu, threads=2, cores=2, load=1.5)
    assert cpu_thread_hint(cpu, threads=2, cores=2, load=0.2) is None  # idle: 2 threads were 1.7x faster
    assert cpu_thread_hint(cpu, threads=1, cores=2, load=1.5) is None
    assert "keep 20.0 of 32" in cpu_thread_hint(cpu, threads=16, cores=32, load=20.0)
    assert cpu_thread_hint(torch.device("cuda"), threads=2, cores=2, load=3.0) is None
