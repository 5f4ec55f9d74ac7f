"""Checkpoints: atomic writes, safe loading (no code execution), discovery and rotation."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from dmjd.errors import InputError
from dmjd.io.atomic import atomic_writer

LAST = "checkpoint-last.pth"
EXPECTED = "a dmjd checkpoint (a .pth file written by dmjd pretrain or finetune)"
PRETRAINING = "a dmjd pre-training checkpoint (checkpoint-*.pth written by dmjd pretrain)"
_NUMBERED = re.compile(r"checkpoint-(\d+)\.pth$")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, unsafe or from an incompatible run."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``dmjd.io.atomic``): a process killed mid-save leaves
    the previous file at ``path`` intact."""
    with atomic_writer(path) as f:
        torch.save(state, f)
    return Path(path)


def foreign_kind(path: Path) -> str | None:
    """What a file is when its first bytes show it is no PyTorch checkpoint (text, an image,
    safetensors...); None for a zip archive or a pickle, which ``torch.load`` may read."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith((b"PK", b"\x80")):
        return None
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"\x1f\x8b": "gzip data"}
    kind = next((name for magic, name in kinds.items() if head.startswith(magic)), None)
    if kind is None and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
        kind = "a safetensors file (as dmjd export writes: load it with safetensors or timm)"
    if kind is None:
        try:
            head.decode("utf-8")
            kind = "a text file"
        except UnicodeDecodeError:
            kind = "unrecognised binary data"
    return kind


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", expected: str = EXPECTED) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never code.

    Args:
        expected: what the caller needs, named in the error messages.

    Raises:
        CheckpointError: one line naming the file, what is wrong and what was expected: missing,
            not a PyTorch checkpoint (empty, text, image, safetensors...), truncated or corrupt,
            a pickle that needs code to load, or no dict with a ``model`` entry.
    """
    state = load_torch_file(path, map_location, expected)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} holds PyTorch data but not a dmjd checkpoint (no 'model' entry); expected {expected}")
    return state


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu", expected: str = EXPECTED) -> Any:
    """Whatever a ``torch.save`` file holds, loaded with ``weights_only=True`` (never code).

    Raises:
        CheckpointError: as ``load_checkpoint``, except that any content is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected {expected}")
    kind = foreign_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint but {kind}; expected {expected}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSAFE_GLOBAL.search(str(err))
        what = f"Python objects ({found.group(1)})" if found else "Python objects"
        raise CheckpointError(
            f"refusing to load {path}: it holds {what} whose loading could run code; expected {expected}"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).strip().split(". ")[0][:160] or type(err).__name__
        raise CheckpointError(f"{path} is unreadable or truncated ({reason}); expected {expected}") from None
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


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its ``latest_checkpoint``: users name either.

    Raises:
        CheckpointError: ``path`` is a folder with no checkpoint in it.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} is a folder with no checkpoint in it (no {LAST} or checkpoint-N.pth)")
    return found


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest numbered checkpoints (``checkpoint-last`` is kept)."""
    for old in numbered_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
