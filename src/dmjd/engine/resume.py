"""Resuming a pre-training run: what its checkpoint holds, which checkpoint to resume from, what a
resumed run may change, and the global RNG state.

A checkpoint holds the model, optimizer and scaler states, the run's position (``RunState``, plus
the current epoch's loss sums and the size of ``log.txt`` mid-epoch), the global RNG states, the
config and the process count, so a resumed run continues exactly where the stopped one was.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

import dmjd
from dmjd.config import Config, ConfigError, config_from_dict
from dmjd.config.loading import apply_override, dotted_items, parse_override
from dmjd.config.schema import BudgetPlan
from dmjd.engine.budget import apply_plan
from dmjd.io import checkpoint as ckpt

# What a resumed run may change: where and how it runs and reports, not what it computes.
RESUMABLE_KEYS = frozenset({
    "data.num_workers", "data.pipeline", "data.device_memory_gb", "data.download", "train.device",
    "train.progress", "train.log_interval", "train.tensorboard", "train.checkpoint_interval", "train.checkpoint_steps",
    "train.keep_checkpoints", "train.max_nonfinite_steps", "train.max_time_s", "train.compile", "train.compile_mode",
})  # fmt: skip


@dataclass
class RunState:
    """Where a run stands: epochs completed, micro-steps into the current epoch, optimizer steps."""

    epoch: int = 0
    epoch_step: int = 0
    opt_step: int = 0
    nonfinite_total: int = 0
    bad_images: int = 0
    elapsed: float = 0.0


@dataclass
class Restored:
    """What ``restore_run`` gives back besides the restored modules: the position, and mid-epoch the
    epoch's loss sums (``LossSums.plain``) and the size ``log.txt`` had at the save."""

    state: RunState
    epoch_sums: dict[str, Any] | None
    log_bytes: int | None


def rng_state() -> dict[str, Any]:
    """Global RNG states, for the checkpoint."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(cast(tuple, np.random.get_state())),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (CUDA states only where the device count matches)."""
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    """NumPy's RNG state with its key array as a tensor, so weights-only loading accepts it."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached))


def _as_python_state(state: Any) -> tuple:
    """``random.getstate()`` tuples come back from a weights-only load as lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def training_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: RunState,
    log_state: dict[str, Any],
    cfg: Config,
    world_size: int,
) -> dict[str, Any]:
    """Everything needed to resume exactly: model, optimizer, scaler, position (with ``log_state``:
    the epoch's sums and ``log.txt``'s size), RNG, config and process count."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "run_state": {**vars(state), **log_state},
        "epoch": state.epoch,
        "step": state.opt_step,
        "rng": rng_state(),
        "config": cfg.model_dump(mode="json"),
        "world_size": world_size,
        "dmjd_version": dmjd.__version__,
    }


def restore_run(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    accum_iter: int,
) -> Restored:
    """Load a ``training_checkpoint`` into the run's model, optimizer, scaler and global RNGs.

    Raises:
        CheckpointError: the weights do not fit the configured model, or the checkpoint was saved
            inside a gradient-accumulation cycle.
    """
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        more = f"; and {len(lines) - 4} more" if len(lines) > 4 else ""
        raise ckpt.CheckpointError(f"checkpoint does not match the configured model: {'; '.join(lines[:4])}{more}") from None
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    run_state = dict(saved["run_state"])
    epoch_sums, log_bytes = run_state.pop("epoch_sums", None), run_state.pop("log_bytes", None)
    state = RunState(**run_state)
    if state.epoch_step % accum_iter:
        raise ckpt.CheckpointError("checkpoint was saved inside a gradient-accumulation cycle")
    if "rng" in saved:
        restore_rng_state(saved["rng"])
    return Restored(state, epoch_sums, log_bytes)


def resolve_resume(output_dir: str | Path, resume: str | Path | None) -> Path | None:
    """The checkpoint a run resumes from: a path, a run folder (its newest checkpoint), ``"auto"``
    (newest in ``output_dir``, None when there is none: a fresh start) or None.

    Raises:
        CheckpointError: an explicit path that is not a file, a folder with no checkpoint in it.
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        return ckpt.latest_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    path = ckpt.resolve_checkpoint(resume)
    if not path.is_file():
        raise ckpt.CheckpointError(f"--resume {path}: no such checkpoint file")
    return path


def load_pretraining_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume pre-training from: model, optimizer, position and config.

    Raises:
        CheckpointError: not a checkpoint, or one without these entries (e.g. a fine-tuning one).
    """
    state = ckpt.load_checkpoint(path, expected=ckpt.PRETRAINING)
    missing = [key for key in ("optimizer", "run_state", "config") if key not in state]
    if missing or state.get("kind") == "finetune":
        what = "a fine-tuning checkpoint" if state.get("kind") == "finetune" else f"no {', '.join(missing)} entry"
        raise ckpt.CheckpointError(f"{path} is not a pre-training checkpoint ({what}); expected {ckpt.PRETRAINING}")
    return state


def run_changes(saved: dict[str, Any], cfg: Config, saved_world: int | None = None, world: int = 1) -> list[str]:
    """The settings of ``cfg`` that differ from a saved run's config (``key: old -> new``) and
    change what the run computes (all but ``RESUMABLE_KEYS`` and ``monitor.*``).

    With the saved run's process count, ``optim.batch_size`` (per process) may change with the
    process count as long as the global batch stays: a run resumes on another number of processes.
    """
    old = dotted_items(config_from_dict(saved).model_dump(mode="json"))
    new = dotted_items(cfg.model_dump(mode="json"))
    changes = []
    if saved_world is not None:
        before, after = old.pop("optim.batch_size") * saved_world, new.pop("optim.batch_size") * world
        if before != after:
            changes.append(f"optim.batch_size x processes (the global batch): {before} -> {after}")
    return changes + [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in RESUMABLE_KEYS and not key.startswith(("monitor.", "recipe."))
    ]


def check_resumable(state: dict[str, Any], cfg: Config, path: str | Path, world: int = 1) -> None:
    """Refuse to resume a run (a checkpoint's ``state``) with settings that change it.

    Raises:
        ConfigError: one line naming each changed setting and what may change.
    """
    changes = run_changes(state["config"], cfg, state.get("world_size"), world)
    if changes:
        raise ConfigError(
            f"resuming {path} with these settings would change the run: {'; '.join(changes)}. A resumed run may "
            "change only where and how it runs (device, data workers and pipeline, logging, checkpointing, time "
            "budget, monitor); start a new run in another --output-dir instead"
        )


def with_saved_plan(cfg: Config, saved: dict[str, Any]) -> Config:
    """``cfg`` following a saved run's budget plan when both have the same ``train.budget`` and ``cfg``
    has no plan of its own (a resumed budgeted run continues the plan it made, not a new one)."""
    plan = saved.get("train", {}).get("budget_plan")
    if plan is None or cfg.train.budget_plan is not None or cfg.train.budget != saved["train"].get("budget"):
        return cfg
    out = cfg.model_copy(deep=True)
    apply_plan(out, BudgetPlan(**plan))
    return out


def resume_config(checkpoint: str | Path, overrides: list[str] | None = None) -> Config:
    """The config of a saved run, with dotted ``key=value`` overrides on top (e.g. another
    device; ``Pretrainer`` refuses overrides that change the run, see ``check_resumable``)."""
    data = load_pretraining_checkpoint(checkpoint)["config"]
    data.setdefault("data", {}).setdefault("split_holdout", False)  # saved before the key: it trained on all
    for item in overrides or []:
        path, value = parse_override(item)
        apply_override(data, path, value)
    return config_from_dict(data)
