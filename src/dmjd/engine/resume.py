"""Resuming a pre-training run: what its checkpoint holds, which checkpoint to resume from, what a
resumed run may change, and the global RNG state.

A checkpoint holds the model, optimizer and scaler states, the run's position (``RunState``, plus
the current epoch's loss sums and the size of ``log.txt`` mid-epoch), the global RNG states, the
config and the process count, so a resumed run continues exactly where the stopped one was.

A run resumed on another number of processes keeps its global batch (``optim.batch_size`` x
``optim.accum_iter`` x processes), and with it the learning rate, the schedule and the images of each
optimizer step (``keep_global_batch``): the per-process batch takes the change where it can, so every
micro-step, its augmentation and its masks are the uninterrupted run's; otherwise the accumulation
changes too, and each optimizer step still trains on the same images, with other augmentations and
masks (they are drawn per micro-step).
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
    "train.keep_checkpoints", "train.max_nonfinite_steps", "train.max_time_s", "train.compile", "train.compile_mode", "train.rank_logs",
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

    ``accum_iter`` is this run's: a saved position inside the epoch is converted to it.

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
    saved_accum = saved["config"]["optim"]["accum_iter"]
    if state.epoch_step % saved_accum:
        raise ckpt.CheckpointError("checkpoint was saved inside a gradient-accumulation cycle")
    state.epoch_step = state.epoch_step // saved_accum * accum_iter  # the same optimizer steps, at this accumulation
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


def split_global_batch(global_batch: int, accum_iter: int, world: int) -> tuple[int, int] | None:
    """``(optim.batch_size, optim.accum_iter)`` that give ``global_batch`` on ``world`` processes: the
    accumulation kept when it can be, else the one nearest to it (the larger on a tie); None when
    ``world`` does not divide ``global_batch``."""
    if global_batch % world:
        return None
    per_process = global_batch // world
    accums = [a for a in range(1, per_process + 1) if per_process % a == 0]
    accum = min(accums, key=lambda a: (abs(a - accum_iter), -a))
    return per_process // accum, accum


def _keeping_words(global_batch: int, accum_iter: int, world: int) -> str:
    """What keeps ``global_batch`` on ``world`` processes, in words (keys to set, or process counts)."""
    split = split_global_batch(global_batch, accum_iter, world)
    if split is None:
        counts = [n for n in range(1, min(global_batch, 64) + 1) if global_batch % n == 0]
        return f"no split of {global_batch} over {world} processes exists; run on {', '.join(map(str, counts))} processes"
    return f"optim.batch_size={split[0]} optim.accum_iter={split[1]} keeps it on {world} processes"


def keep_global_batch(cfg: Config, saved: dict[str, Any], saved_world: int, world: int) -> tuple[Config, str | None]:
    """``cfg`` resumed on ``world`` processes with the saved run's global batch, and one line saying what
    changed (None when the process count did not change).

    When ``cfg`` keeps the saved ``optim.batch_size`` and ``optim.accum_iter`` (the user did not set
    them), they are re-derived with ``split_global_batch``; a pair the user set is left to
    ``check_resumable``.

    Raises:
        ConfigError: ``world`` does not divide the global batch (the message names the process counts
            that do).
    """
    if world == saved_world:
        return cfg, None
    old, o = saved["optim"], cfg.optim
    global_batch = old["batch_size"] * old["accum_iter"] * saved_world
    if (o.batch_size, o.accum_iter) == (old["batch_size"], old["accum_iter"]):
        split = split_global_batch(global_batch, o.accum_iter, world)
        if split is None:
            raise ConfigError(
                f"the run was saved on {saved_world} processes with a global batch of {global_batch} images "
                f"(optim.batch_size x optim.accum_iter x processes); {_keeping_words(global_batch, o.accum_iter, world)}"
            )
        cfg = cfg.model_copy(deep=True)
        cfg.optim.batch_size, cfg.optim.accum_iter = split
    o = cfg.optim
    return cfg, (
        f"dmjd: resumed on {world} process{'es' * (world > 1)} instead of {saved_world}: optim.batch_size {old['batch_size']} -> "
        f"{o.batch_size}, optim.accum_iter {old['accum_iter']} -> {o.accum_iter}; the global batch stays {global_batch}"
    )


def run_changes(saved: dict[str, Any], cfg: Config, saved_world: int | None = None, world: int = 1) -> list[str]:
    """The settings of ``cfg`` that differ from a saved run's config (``key: old -> new``) and
    change what the run computes (all but ``RESUMABLE_KEYS`` and ``monitor.*``).

    With the saved run's process count, ``optim.batch_size`` and ``optim.accum_iter`` may change as
    long as the global batch stays (a run resumes on another number of processes); when it does not
    stay, the change names the pair that keeps it.
    """
    old = dotted_items(config_from_dict(saved).model_dump(mode="json"))
    new = dotted_items(cfg.model_dump(mode="json"))
    changes = []
    if saved_world is not None:
        accum = old.pop("optim.accum_iter")
        before = old.pop("optim.batch_size") * accum * saved_world
        after = new.pop("optim.batch_size") * new.pop("optim.accum_iter") * world
        if before != after:
            changes.append(
                f"optim.batch_size x optim.accum_iter x processes (the global batch): {before} -> {after} "
                f"({_keeping_words(before, accum, world)})"
            )
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
