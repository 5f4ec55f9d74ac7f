"""Process-group set-up on PyTorch's own distributed engine (torchrun, SLURM), and small helpers.

Every decision that ends or reshapes a run (a stop signal, the time limit, a budget's plan) must be
the same on every process, or one process enters a collective that the others never reach and the
run hangs. ``agree_on_step`` makes them the same: once per optimizer step the processes share
whether any of them was asked to stop and the main process's training clock.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the world size and its local device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = field(default=None, compare=False)  # the gloo group of host-side agreements (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str) -> int | None:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return None


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def stop_with_launcher() -> bool:
    """Ask Linux for SIGTERM when torchrun's agent (this worker's parent) dies, so that a launcher
    killed with SIGKILL (which it cannot forward) stops its workers through their stop-signal path
    (agree, save, exit) instead of leaving them training as orphans. Returns whether it was set."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the launcher died before the request: nobody will signal
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (or srun under SLURM), else run alone.

    Uses NCCL on GPUs and gloo on CPUs; ``MASTER_ADDR``/``MASTER_PORT`` come from the launcher
    (torchrun sets them; under SLURM set them in the batch script as MAE's docs do). Joining
    registers ``leave_process_group`` to run at exit; a torchrun worker stops when its launcher
    dies (``stop_with_launcher``).
    """
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if world <= 1:
        return DistInfo()
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    stop_with_launcher()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        atexit.register(leave_process_group)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None  # no device sync per step
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, control=control)


def from_main(info: DistInfo, value: T) -> T:
    """The main process's ``value`` on every process (``value`` itself when alone): one choice where
    each process could make its own, e.g. the auto recipe's, which measures the device's speed."""
    if not (info.enabled and dist.is_initialized()):
        return value
    shared = [value if info.is_main else None]
    dist.broadcast_object_list(shared, src=0, group=info.control)
    return cast(T, shared[0])


def raise_together(info: DistInfo, error: Exception | None) -> None:
    """Raise the main process's ``error`` on every process (nothing when it has none), so a check only
    the main process makes (the run folder's lock) stops them all with its one line instead of leaving
    the others waiting in a collective."""
    error = from_main(info, error)
    if error is not None:
        raise error


def rank_log(folder: Path, info: DistInfo) -> Path:
    """Send this process's log records (warnings and up) to ``folder/rank-<rank>.log`` as well: the
    per-process detail that the console leaves to the main process (``train.rank_logs``)."""
    path = folder / f"rank-{info.rank}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    return path


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when alone)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over processes (returns it unchanged when alone)."""
    if info.enabled and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size
    return tensor


def agree_on_step(info: DistInfo, signum: int | None, seconds: float) -> tuple[int | None, float]:
    """The same stop request and training clock on every process: a stop signal any process received
    (the largest signal number), and the main process's ``seconds`` (returned unchanged when alone).

    The main process's clock is the run's: it alone runs the evaluations, whose time it takes off its
    clock, while the others wait for it inside a collective. A budget's plan and the time limit
    follow from the agreed clock, so every process plans and stops at the same step. Runs on a gloo
    group on the host, so a GPU run does not wait for its device here.
    """
    if not (info.enabled and dist.is_initialized()):
        return signum, seconds
    shared = torch.tensor([float(signum or 0), seconds if info.is_main else -math.inf], dtype=torch.float64)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX, group=info.control)
    return int(shared[0]) or None, float(shared[1])


def leave_process_group() -> None:
    """Destroy the default process group, if any, while the interpreter is still whole (safe twice).

    Left to interpreter finalisation, gloo's worker threads can still hold finished work whose
    tensors need the GIL to be freed, and a rank that did all its work dies of SIGABRT
    (``terminate called without an active exception``); torchrun then kills the other ranks.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process is in a process group (``init_distributed`` joined one)."""
    return dist.is_available() and dist.is_initialized()
