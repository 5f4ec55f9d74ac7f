"""Checkpoints: atomic writes, safe loading (no code execution), discovery and rotation."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST = "checkpoint-last.pth"
_NUMBERED = re.compile(r"checkpoint-(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or from an incompatible run."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A process killed mid-save leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never code.

    Raises:
        CheckpointError: missing file, corrupt file, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-data checkpoint and loading it would run code ({err})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({err})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a dmjd checkpoint (no 'model' entry)")
    return state


def numbered_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-<epoch>.pth`` files in ``folder``, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("checkpoint-*.pth") if (m := _NUMBERED.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoint-last.pth`` if present, else the newest numbered one."""
    last = Path(folder) / LAST
    if last.is_file():
        return last
    numbered = numbered_checkpoints(folder)
    return numbered[-1] if numbered else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest numbered checkpoints (``checkpoint-last`` is kept)."""
    for old in numbered_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
