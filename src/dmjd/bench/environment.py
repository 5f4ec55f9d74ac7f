"""Where a benchmark ran: machine, accelerator, software versions, date and commit; and the
machine-level settings every benchmark tool shares (thread pools, device memory).

Every published number carries these, so that it can be traced to the code and hardware that
produced it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

import dmjd


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """A readable name of the device computations ran on (the GPU model for CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}"


def git_commit() -> str:
    """``$DMJD_GIT_COMMIT`` when set (copies of the tree, whose ``.git`` may be stale or absent), else
    ``git rev-parse HEAD`` of the dmjd checkout, else 'unknown'."""
    if os.environ.get("DMJD_GIT_COMMIT"):
        return os.environ["DMJD_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(dmjd.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict[str, object]:
    """Hardware and software facts for a report."""
    info: dict[str, object] = {
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dmjd": dmjd.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def now_utc() -> str:
    """The current date and time in UTC, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def release_device_memory() -> None:
    """Return a finished run's cached GPU memory before the next run starts (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def publish(result: dict, table: str, output: str | None) -> None:
    """Print a benchmark's markdown table and, with ``output``, write ``OUTPUT.json`` and ``OUTPUT.md``."""
    print(table)
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Limit the OpenMP and BLAS thread pools (torch's intra-op threads on its OpenMP backend, and
    scikit-learn's probe) to ``threads`` inside the block; no limit for None.

    Deliberately not ``torch.set_num_threads``: besides the thread count, ATen's ``set_num_threads``
    switches MKL's dynamic threading off for the rest of the process, and with it the ``cpu``
    testbed's DMJD step ran ~11 % slower (docs/results/cpu-2026-11-29-threads/thread-check/).
    """
    if threads is None:
        yield
        return
    with threadpool_limits(limits=threads):
        yield
