"""What a run needs from the machine: the memory of one training step against what is available,
and a hint about CPU threads on small machines.

The step's memory is measured, not guessed from the architecture: probe forward passes on two and
four images record the bytes autograd saves for the backward pass (``saved_tensors_hooks``), which
grow linearly with the batch; gradients and the two AdamW moments add three copies of the parameters.
The peak RSS growth of one CPU step (fp32) measured 0.81-1.11x this estimate on three small configs
(docs/reliability.md): backward transients are about what the activations freed on the way leave.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from dmjd.errors import InputError

PROBE_IMAGES = 2
WARN_FRACTION = 0.8  # warn when the step needs more than this share of the available memory


class StepMemoryError(InputError):
    """One training step cannot fit in the memory the device has; the message says what to change."""


@dataclass(frozen=True)
class StepMemory:
    """Bytes one optimizer step adds to a built model: optimizer state, gradients and the saved
    tensors that do not grow with the batch (``state``), and activations saved for backward
    (``per_image`` x batch)."""

    state: int
    per_image: int

    def need(self, batch_size: int) -> int:
        """Bytes a step at ``batch_size`` images per process adds to what is allocated."""
        return self.state + self.per_image * batch_size

    def largest_batch(self, available: int) -> int:
        """The largest batch whose step fits in ``available`` bytes (0 when even the state does not)."""
        room = available - self.state
        return max(room // max(self.per_image, 1), 0)


def saved_tensor_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs,
    parameters excluded (they are allocated already)."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if not isinstance(t, nn.Parameter):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def measure_step_memory(model: nn.Module, forward_probe: Callable[[int], object]) -> StepMemory:
    """The memory of one step: ``forward_probe(n)`` runs the losses of ``n`` images (graph built,
    no backward), for ``PROBE_IMAGES`` and twice as many, which separates what each image adds from
    what does not grow with the batch; gradients and the AdamW moments are three copies of the
    trainable parameters."""
    small, large = (saved_tensor_bytes(partial(forward_probe, n)) for n in (PROBE_IMAGES, 2 * PROBE_IMAGES))
    per_image = max(large - small, 0) // PROBE_IMAGES
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return StepMemory(state=3 * params + max(small - PROBE_IMAGES * per_image, 0), per_image=per_image)


def available_memory(device: torch.device, meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes free for this process: CUDA's free device memory, or for the CPU the host's
    ``MemAvailable`` divided among the ``LOCAL_WORLD_SIZE`` processes torchrun started on this host
    (None where it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except (OSError, ValueError):
        pass
    return None


def check_step_memory(memory: StepMemory, batch_size: int, accum_iter: int, available: int | None, where: str) -> str | None:
    """Refuse a step that clearly cannot fit ``available`` bytes, warn when it is close.

    Args:
        batch_size: images per process and micro-step (``optim.batch_size``).
        accum_iter: gradient accumulation steps (the suggestion keeps the global batch).
        available: free bytes (None: unknown, nothing is checked).
        where: the memory's name in messages, e.g. ``available RAM``.

    Returns:
        A warning line when the step needs more than ``WARN_FRACTION`` of what is available, else None.

    Raises:
        StepMemoryError: the step needs more than is available, with the estimate, the available
            memory and an ``optim.batch_size`` / ``optim.accum_iter`` pair that fits.
    """
    if available is None:
        return None
    need = memory.need(batch_size)
    if need <= WARN_FRACTION * available:
        return None
    said = (f"one step at optim.batch_size={batch_size} needs about {need / 2**30:.2f} GiB, {where} is "
            f"{available / 2**30:.2f} GiB")  # fmt: skip
    fits = memory.largest_batch(int(WARN_FRACTION * available))
    if fits < 1:
        advice = "the model's optimizer state alone does not fit: use a smaller model or another device"
    else:
        split = next(s for s in range(2, batch_size + 1) if batch_size % s == 0 and batch_size // s <= fits)
        advice = (f"try optim.batch_size={batch_size // split} optim.accum_iter={accum_iter * split} (same global batch, "
                  "same learning rate), or model.grad_checkpointing=true")  # fmt: skip
    if need > available:
        raise StepMemoryError(f"{said}: it cannot fit; {advice}")
    return f"WARNING: {said}: close to the limit; {advice}"


def other_cpu_load(interval: float = 0.25, stat: str | Path = "/proc/stat") -> float | None:
    """Cores' worth of CPU that other processes use right now: the machine's busy time minus this
    process's over ``interval`` seconds (Linux ``/proc``); None where it cannot be read."""

    def sample() -> tuple[float, float, float]:
        fields = [float(v) for v in Path(stat).read_text().split("\n", 1)[0].split()[1:]]
        own = [float(v) for v in Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:13]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return sum(fields[:8]), sum(fields[:8]) - idle, sum(own)

    try:
        total0, busy0, own0 = sample()
        time.sleep(interval)
        total1, busy1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    per_core = max(total1 - total0, 1e-9) / cores  # ticks one core had in the interval
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / per_core


def cpu_thread_hint(device: torch.device, threads: int, cores: int | None = None, load: float | None = None) -> str | None:
    """A hint when other processes keep the CPU busy: training threads then compete with them.

    Measured with ``benchmarks/threads.py`` on a 2-core VM (docs/results/cpu-2026-12-01-threads/): idle, 2 threads trained
    1.71x faster than 1, so the default stays; on the same cores shared with other work, 1 thread ran
    2-7x faster than 2 in a user's trial. The hint appears when other processes use at least half the
    cores (``other_cpu_load``) and the run has more than one intra-op thread.
    """
    if device.type != "cpu" or threads <= 1:
        return None
    cores = cores if cores is not None else (os.cpu_count() or 1)
    load = load if load is not None else other_cpu_load()
    if load is None or load < cores / 2:
        return None
    return (
        f"hint: other processes keep {load:.1f} of {cores} CPU cores busy and this run uses {threads} torch "
        "threads; on a shared CPU fewer threads are often faster (try OMP_NUM_THREADS=1); benchmarks/threads.py "
        "measures it"
    )


def start_memory_notes(
    model: nn.Module, forward_probe: Callable[[int], object], device: torch.device, batch_size: int, accum_iter: int
) -> list[str]:
    """What a run checks before its first step: one step's memory, measured with ``forward_probe``
    (the run's RNG untouched), against the device's (``check_step_memory``), and the thread hint.

    Raises:
        StepMemoryError: the batch cannot fit the device.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        memory = measure_step_memory(model, forward_probe)
    where = "free GPU memory" if device.type == "cuda" else "available RAM"
    note = check_step_memory(memory, batch_size, accum_iter, available_memory(device), where)
    hint = cpu_thread_hint(device, torch.get_num_threads())
    return [line for line in (note, hint) if line]
