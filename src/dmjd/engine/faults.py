"""Fault handling of a run: stop signals, out-of-memory and disk checks, non-finite losses.

Each fault ends in a one-line message saying what to change; a stop signal and non-finite steps
leave the last checkpoint intact (``--resume auto`` continues).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from torch import Tensor, nn


class TrainingInterrupted(RuntimeError):
    """The run was stopped (SIGTERM/SIGINT) and saved a resumable checkpoint."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class ResourceError(RuntimeError):
    """The run cannot fit the machine: out of memory or disk; the message says what to change."""


class StopSignals:
    """SIGTERM and SIGINT ask the run to stop at its next step instead of killing it: ``with
    StopSignals() as stop`` installs the handlers (main thread only), ``stop.signum`` is the signal
    received (None: none), and the previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """The received signal's name (``SIGTERM``), or ``signal``."""
        return signal.Signals(self.signum).name if self.signum else "signal"

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._request_stop)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class NonFiniteSteps:
    """Counts the consecutive optimizer steps skipped for a non-finite loss or gradient, on the device
    (no host sync per step); ``check`` raises once ``limit`` is reached."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.consecutive = torch.zeros((), device=device)
        self.limit = limit

    def add(self, found_inf: Tensor) -> None:
        """Count one step: ``found_inf`` is 1. when it was skipped, 0. when it updated the weights."""
        self.consecutive = (self.consecutive + found_inf) * found_inf

    def check(self, lr: float) -> None:
        """Raise when ``limit`` consecutive steps were skipped (one host sync: call it at log steps).

        Raises:
            NonFiniteLossError: with the learning rate and what to change.
        """
        if float(self.consecutive) >= self.limit:
            raise NonFiniteLossError(
                f"{int(self.consecutive)} consecutive steps had a non-finite loss or gradient (lr "
                f"{lr:.3g}); the weights were not updated by them and the last checkpoint is "
                "intact. Lower optim.blr, set optim.clip_grad, or use train.precision=bf16/fp32, "
                "then --resume auto."
            )


@contextmanager
def explain_oom(batch_size: int, accum_iter: int) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into advice: the batch/accumulation that keeps the global batch
    (the batch divided by its smallest factor, the accumulation multiplied by it)."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        split = next((s for s in range(2, batch_size + 1) if batch_size % s == 0), 1)
        raise ResourceError(
            f"out of GPU memory at optim.batch_size={batch_size} ({str(err).splitlines()[0]}). Try "
            f"optim.batch_size={batch_size // split} optim.accum_iter={accum_iter * split} (same global "
            "batch, same learning rate), or model.grad_checkpointing=true"
        ) from None


def check_disk_space(output_dir: Path, model: nn.Module) -> None:
    """Fail early when the output folder cannot hold two checkpoints (weights + AdamW moments).

    Raises:
        ResourceError: with the space needed and the space free.
    """
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = 2 * 3 * n_bytes + (64 << 20)
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ResourceError(
            f"only {free / 2**20:.0f} MiB free under {output_dir}; a checkpoint of this model needs about "
            f"{3 * n_bytes / 2**20:.0f} MiB and two must fit while one is written. Free space or choose "
            "another --output-dir"
        )
