"""File I/O below models, engine and eval: checkpoints (atomic save, safe load, discovery)."""

from dmjd.io.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "resolve_checkpoint", "save_checkpoint"]
