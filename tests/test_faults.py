"""dmjd.engine.faults on its own: stop signals, consecutive non-finite steps, out-of-memory advice
and the disk space check."""

from __future__ import annotations

import os
import signal
import threading
import types

import pytest
import torch
from torch import nn

from dmjd.engine import faults as faults_mod
from dmjd.engine.faults import NonFiniteLossError, NonFiniteSteps, ResourceError, StopSignals, check_disk_space, explain_oom

MIB = 2**20


# ----------------------------------------------------------------------------- stop signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_the_block_is_recorded_not_fatal(sig):
    with StopSignals() as stop:
        assert (stop.signum, stop.name) == (None, "signal")
        os.kill(os.getpid(), sig)  # the handler runs before the next bytecode of this thread
        assert stop.signum == sig
    assert stop.name == signal.Signals(sig).name


def test_the_previous_handlers_come_back_on_exit():
    calls = []

    def mine(signum, _frame):
        calls.append(signum)

    previous, sigint = signal.signal(signal.SIGTERM, mine), signal.getsignal(signal.SIGINT)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop._request_stop
            assert signal.getsignal(signal.SIGINT) == stop._request_stop
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == [signal.SIGTERM] and stop.signum is None
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_signals_off_the_main_thread_install_nothing_and_raise_nothing():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []

    def enter_and_leave():
        try:
            with StopSignals() as stop:
                seen.append((signal.getsignal(signal.SIGTERM), stop.signum))
        except Exception as err:  # the test fails on any error, with its message
            seen.append(err)

    thread = threading.Thread(target=enter_and_leave)
    thread.start()
    thread.join()
    assert seen == [(before[0], None)]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ------------------------------------------------------------------------- non-finite steps
def test_an_updating_step_resets_the_count_of_consecutive_skipped_steps():
    steps = NonFiniteSteps(torch.device("cpu"), limit=3)
    for found_inf in (1.0, 1.0, 0.0, 1.0, 1.0):
        steps.add(torch.tensor(found_inf))
    assert float(steps.consecutive) == 2.0
    steps.check(lr=1e-3)  # 2 < 3: no error


def test_the_limit_of_consecutive_skipped_steps_stops_with_the_lr_and_how_to_continue():
    steps = NonFiniteSteps(torch.device("cpu"), limit=3)
    for _ in range(3):
        steps.add(torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError) as err:
        steps.check(lr=1.2e-4)
    message = str(err.value)
    assert message.startswith("3 consecutive steps had a non-finite loss or gradient (lr 0.00012);")
    assert "last checkpoint is intact" in message and message.endswith("then --resume auto.")


# ---------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize(
    ("batch", "accum", "advice"), [(64, 2, "batch_size=32 optim.accum_iter=4"), (1, 3, "batch_size=1 optim.accum_iter=3")]
)
def test_out_of_memory_becomes_advice_keeping_the_global_batch(batch, accum, advice):
    with pytest.raises(ResourceError) as err, explain_oom(batch, accum):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee the documentation")
    message = str(err.value)
    assert message.startswith(
        f"out of GPU memory at optim.batch_size={batch} (CUDA out of memory. Tried to allocate 2.00 GiB.)"
    )
    assert f"Try optim.{advice} (same global batch" in message and "model.grad_checkpointing=true" in message
    assert "\n" not in message and err.value.__suppress_context__


def test_the_advice_for_an_odd_batch_keeps_its_global_batch():
    with pytest.raises(ResourceError) as err, explain_oom(5, 1):
        raise torch.OutOfMemoryError("CUDA out of memory")
    batch, accum = (int(word.split("=")[1]) for word in str(err.value).split("Try ")[1].split()[:2])
    assert batch * accum == 5


def test_other_errors_pass_through_explain_oom_unchanged():
    error = RuntimeError("a bug")
    with pytest.raises(RuntimeError) as err, explain_oom(64, 1):
        raise error
    assert err.value is error


# ------------------------------------------------------------------------------- disk space
@pytest.mark.parametrize(("free_mib", "fits"), [(87, False), (88, True)])
def test_disk_space_for_two_checkpoints_and_a_margin_is_required(tmp_path, monkeypatch, free_mib, fits):
    asked = []

    def disk_usage(path):
        asked.append(path)
        return types.SimpleNamespace(free=free_mib * MIB)

    monkeypatch.setattr(faults_mod.shutil, "disk_usage", disk_usage)
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(MIB))  # 4 MiB of float32: a checkpoint of ~12 MiB, 2 x 12 + 64 MiB needed
    if fits:
        check_disk_space(tmp_path, model)
    else:
        with pytest.raises(ResourceError) as err:
            check_disk_space(tmp_path, model)
        assert str(err.value).startswith(
            f"only 87 MiB free under {tmp_path}; a checkpoint of this model needs about 12 MiB and two must fit"
        )
    assert asked == [tmp_path]
