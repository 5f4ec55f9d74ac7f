"""The pre-training engine: builds a run from a Config and trains it, resumable at any step.

Reproducibility by construction: the data order comes from ``(seed, epoch)``, each image's
augmentation from ``(seed, epoch, index)`` and each micro-step's masks from ``(seed, step)``, so
a run resumed mid-epoch, or run on another number of processes with the same global batch, sees
the same images, augmentations and masks.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import dmjd
from dmjd.config import Config, ConfigError, config_from_dict, config_to_yaml
from dmjd.config.loading import dotted_items
from dmjd.config.duration import format_duration
from dmjd.config.schema import BudgetPlan
from dmjd.data import Normalize
from dmjd.engine.training_data import training_data
from dmjd.io import checkpoint as ckpt
from dmjd.engine.budget import PROVISIONAL_EPOCHS, TimeBudget, apply_plan, budget_seconds, describe_plan
from dmjd.engine.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from dmjd.engine.metrics import MetricsLogger, cut_run_logs, progress_line, read_metrics, round_floats
from dmjd.engine.resources import available_memory, check_step_memory, cpu_thread_hint, measure_step_memory
from dmjd.engine.run_dir import OutputDirError, prepare_output_dir
from dmjd.engine.optim import build_adamw, lr_at, peak_lr, pretrain_param_groups, rates_summary, set_lr
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target, mean_std
from dmjd.masking import MaskedViews, measured_pred_ratio
from dmjd.targets import FrozenNetworkTarget

EpochHook = Callable[["Pretrainer"], "dict[str, Any] | None"]
# What a resumed run may change: where and how it runs and reports, not what it computes.
RESUMABLE_KEYS = frozenset({
    "data.num_workers", "data.pipeline", "data.device_memory_gb", "data.download", "train.device",
    "train.progress", "train.log_interval", "train.tensorboard", "train.checkpoint_interval", "train.checkpoint_steps",
    "train.keep_checkpoints", "train.max_nonfinite_steps", "train.max_time_s", "train.compile", "train.compile_mode",
})  # fmt: skip


class TrainingInterrupted(RuntimeError):
    """The run was stopped (SIGTERM/SIGINT) and saved a resumable checkpoint."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on GPUs that support it, fp32 (no autocast) on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation uses the global generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states, for the checkpoint."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
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


def step_seed(seed: int, micro_step: int) -> int:
    """The seed of one micro-step's masks (independent of process count and resumption)."""
    return (seed * 2_654_435_761 + micro_step * 40_503 + 12_345) % (2**63 - 1)


class ResourceError(RuntimeError):
    """The run cannot fit the machine: out of memory or disk; the message says what to change."""


@contextmanager
def _explain_oom(batch_size: int, accum_iter: int) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into advice: the batch/accumulation that keeps the global batch."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        smaller = max(batch_size // 2, 1)
        raise ResourceError(
            f"out of GPU memory at optim.batch_size={batch_size} ({str(err).splitlines()[0]}). Try "
            f"optim.batch_size={smaller} optim.accum_iter={accum_iter * batch_size // smaller} (same global "
            "batch, same learning rate), or model.grad_checkpointing=true"
        ) from None


def check_disk_space(output_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
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


@dataclass
class RunState:
    """Where a run stands: epochs completed, micro-steps into the current epoch, optimizer steps."""

    epoch: int = 0
    epoch_step: int = 0
    opt_step: int = 0
    nonfinite_total: int = 0
    bad_images: int = 0
    elapsed: float = 0.0


class Pretrainer:
    """One pre-training run: ``Pretrainer(cfg, output_dir).fit()``.

    Args:
        cfg: validated configuration.
        output_dir: where metrics, checkpoints, config and figures go.
        resume: a checkpoint path, ``"auto"`` (the newest in ``output_dir``; a fresh start when
            there is none) or None.
        overwrite: replace a run already in ``output_dir``.
    """

    def __init__(self, cfg: Config, output_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        resume_path = resolve_resume(self.output_dir, resume)
        if str(resume) == "auto" and resume_path is None and self.dist.is_main:
            print(f"dmjd: no checkpoint in {self.output_dir}, starting fresh")
        loaded = load_pretraining_checkpoint(resume_path) if resume_path else None
        if loaded is not None:
            cfg = with_saved_plan(cfg, loaded["config"])
            check_resumable(loaded, cfg, resume_path, self.dist.world_size)
        self._lock = prepare_output_dir(self.output_dir, resume_path is not None, overwrite, self.dist.is_main, lock=True)
        barrier(self.dist)
        self.state = RunState()
        self.cfg = cfg
        self.logger: MetricsLogger | None = None
        self._epoch_sums: _Sums | None = None  # the current epoch's, carried by mid-epoch checkpoints
        self._resumed_sums: dict[str, Any] | None = None
        self._start_notes: list[str] = []  # lines for the console and log.txt once the run's log is open
        self._build()
        self._check_memory()
        if loaded is not None:
            self._restore(loaded)
            if self.dist.is_main:
                same_folder = resume_path.parent.resolve() == self.output_dir.resolve()
                cut = cut_run_logs(self.output_dir, self.state.opt_step, self._resumed_log_bytes if same_folder else None)
                dropped = f"; {cut} log records after step {self.state.opt_step} dropped (they are redone)" if cut else ""
                self._start_notes.append(f"dmjd: resumed from {resume_path} {self._where()}{dropped}")
        self._stop_signal: int | None = None
        self.time_up = False
        self._run_start = 0.0  # perf_counter() at which the run's training time began (moved by evaluations)
        metrics_file = self.output_dir / "metrics.jsonl"
        old_records = read_metrics(metrics_file) if loaded is not None and metrics_file.is_file() else []
        self.evals: list[dict[str, Any]] = [r for r in old_records if r.get("kind") == "eval"]

    @property
    def finished(self) -> bool:
        """Whether the run has trained all its epochs or ``optim.max_steps`` (a finished run is never
        trained or rewritten)."""
        return self.state.epoch >= self.num_epochs or self.state.opt_step >= self.total_steps

    @property
    def epochs_known(self) -> int | None:
        """The run's epochs for log lines: None while a budgeted run has no plan yet."""
        return None if self.num_epochs == PROVISIONAL_EPOCHS else self.num_epochs

    @property
    def num_epochs(self) -> int:
        """The run's epochs: ``optim.epochs``, or a budgeted run's planned ones (no cap before its plan)."""
        planning = self.budget is not None and self.budget.plan is None
        return PROVISIONAL_EPOCHS if planning else self.cfg.optim.epochs

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        cfg, dev = self.cfg, self.device
        seed_everything(cfg.train.seed)
        self.target = build_target(cfg).to(dev)
        self.masking = build_masking(cfg)
        self.loss_fn = build_loss(cfg)
        model = build_dmjd_model(cfg, self.target.dim).to(dev)
        if cfg.model.grad_checkpointing:
            model.encoder.set_grad_checkpointing(True)
        self.model = model
        mean, std = mean_std(cfg)
        self.normalize = Normalize(mean, std).to(dev)
        self.amp_dtype = autocast_dtype(cfg.train.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 else None

        o = cfg.optim
        data = training_data(cfg, dev, self.dist.rank, self.dist.world_size)
        self.batches, self.data_summary, self.data_warnings = data.batches, data.summary, data.warnings
        self.state.bad_images = max(self.state.bad_images, data.unreadable)
        micro = self.batches.steps_per_epoch()
        self.steps_per_epoch = micro // o.accum_iter
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one epoch has {micro} micro-steps, fewer than optim.accum_iter={o.accum_iter}")
        self.budget = TimeBudget.from_config(cfg, self.steps_per_epoch)
        if self.budget is not None and self.budget.plan is not None:
            if self.budget.plan.steps_per_epoch != self.steps_per_epoch:
                raise ConfigError(
                    f"train.budget_plan was made for {self.budget.plan.steps_per_epoch} steps per epoch, this data and "
                    f"batch give {self.steps_per_epoch}; set train.budget_plan=null to plan again"
                )
            apply_plan(cfg, self.budget.plan)
        self.total_steps = self.steps_per_epoch * self.num_epochs
        if self.budget is not None and self.budget.plan is None:  # until the plan: measure at a low lr
            self.warmup_steps = self.budget.provisional_warmup
        else:
            self.total_steps = min(self.total_steps, o.max_steps or self.total_steps)
            self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        limits = [t for t in (cfg.train.max_time_s, budget_seconds(cfg)) if t is not None]
        self.time_limit_s: float | None = min(limits) if limits else None
        self.unique_batch = o.batch_size * o.accum_iter * self.dist.world_size
        self.peak_lr = peak_lr(o, self.masking, self.unique_batch)
        groups = pretrain_param_groups(self.model, o.weight_decay, o.decay_tokens)
        self.optimizer = build_adamw(groups, self.peak_lr, tuple(o.betas), o.fused, dev)
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.ddp: nn.Module = self.model
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._step_losses = (
            torch.compile(self._losses, mode=cfg.train.compile_mode) if cfg.train.compile else self._losses
        )
        self.mask_gen = torch.Generator(device=dev)
        if self.dist.is_main:
            check_disk_space(self.output_dir, self.model, self.optimizer)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ckpt.CheckpointError(f"checkpoint does not match the configured model: {err}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        run_state = dict(state["run_state"])
        self._resumed_sums = run_state.pop("epoch_sums", None)
        self._resumed_log_bytes: int | None = run_state.pop("log_bytes", None)
        self.state = RunState(**run_state)
        if self.state.epoch_step % self.cfg.optim.accum_iter:
            raise ckpt.CheckpointError("checkpoint was saved inside a gradient-accumulation cycle")
        if "rng" in state:
            restore_rng_state(state["rng"])

    # ---------------------------------------------------------------- running
    def fit(self, on_epoch_end: EpochHook | None = None, on_step_end: EpochHook | None = None) -> dict[str, Any]:
        """Train until ``optim.epochs`` (or ``train.max_time_s``); returns the run summary.

        Args:
            on_epoch_end: optional ``hook(trainer) -> dict | None`` run on the main process after
                each epoch (and when the time budget ends the run), and once before a fresh run
                trains (epoch 0: the untrained encoder), e.g. a kNN / linear-probe monitor; a
                returned dict is logged and printed as a ``kind: "eval"`` record. Its run time is
                not counted as training time.
            on_step_end: the same after every optimizer step (e.g. evaluations spaced in steps,
                mid-epoch); it should decide cheaply from ``trainer.state`` when to do work. Like
                ``on_epoch_end`` it runs on the main process only, so in a distributed run it must
                not change what the processes compute (e.g. the schedule).

        A finished run (all epochs trained) is left as it is: its saved summary is returned.
        """
        cfg, main = self.cfg, self.dist.is_main
        if self.finished:
            if main:
                done = f"{self.total_steps} steps" if self._stopped_by() == "max_steps" else f"{self.num_epochs} epochs"
                print(f"dmjd: the run in {self.output_dir} has finished its {done}; nothing to train, its files are "
                      "left as they are")  # fmt: skip
            summary = self.output_dir / "summary.json"
            self.release()
            return json.loads(summary.read_text()) if summary.is_file() else {"kind": "summary", "epochs": self.state.epoch}
        self.logger = MetricsLogger(self.output_dir, cfg.train.tensorboard) if main else None
        if main:
            (self.output_dir / "config.yaml").write_text(config_to_yaml(cfg))
            self._print_start()
            self.logger.print(f"dmjd: {self.data_summary}")
            for warning in self.data_warnings:
                self.logger.print(f"dmjd: WARNING: {warning}")
            self._warn_short_run()
            for line in self._start_notes:
                self.logger.print(line)
        old_handlers = self._install_signal_handlers()
        self._run_start = time.perf_counter() - self.state.elapsed
        last: dict[str, Any] = {}
        try:
            if on_epoch_end is not None and self.state.opt_step == 0 and self.state.epoch_step == 0:
                self._evaluate(on_epoch_end)  # epoch 0: the untrained encoder
                barrier(self.dist)
            while not self.finished and not self.time_up:
                elapsed_before, steps_before, bad_before = self.state.elapsed, self.state.opt_step, self.state.bad_images
                last = self._train_epoch(on_step_end)
                if self._epoch_complete():
                    self.state.epoch += 1
                    self.state.epoch_step = 0
                self.state.elapsed = time.perf_counter() - self._run_start
                if self.logger is not None:
                    seconds = max(self.state.elapsed - elapsed_before, 1e-9)
                    images_per_s = (self.state.opt_step - steps_before) * self.unique_batch / seconds
                    bad = self.state.bad_images - bad_before
                    epoch_record = {**last, "kind": "epoch"}
                    self.logger.print(progress_line(epoch_record, self.epochs_known, images_per_s=images_per_s, bad_images=bad))
                self._save_epoch_checkpoints()  # after the epoch's line: a resume keeps it in log.txt
                if on_epoch_end is not None:
                    self._evaluate(on_epoch_end)
                barrier(self.dist)
            return self._finish(time.perf_counter() - self._run_start, last)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.logger is not None:
                self.logger.close()
            self.release()

    def release(self) -> None:
        """Release the output folder's lock (``fit`` does at its end, also on errors and signals)."""
        if self._lock is not None:
            self._lock.release()

    def _check_memory(self) -> None:
        """Measure one step's memory before the first step: refuse a batch that cannot fit the device
        (``StepMemoryError``), note one that is close; on a small CPU, note the thread hint."""
        o, dev = self.cfg.optim, self.device

        def probe(n: int) -> object:  # the model itself, not DDP's wrapper: no gradient sync is started
            m = self.cfg.model
            images = torch.rand(n, m.in_chans, m.img_size, m.img_size, device=dev)
            views = self._masks(0, n)
            autocast = torch.autocast(dev.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
            with autocast:
                return self.loss_fn(self.model(self.normalize(images), views), self.target(images), views)

        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # the run's RNG is untouched
            memory = measure_step_memory(self.model, probe)
        if isinstance(self.target, FrozenNetworkTarget):
            self.target.reset_cost()  # the probe's images are not the run's
        where = "free GPU memory" if dev.type == "cuda" else "available RAM"
        note = check_step_memory(memory, o.batch_size, o.accum_iter, available_memory(dev), where)
        hint = cpu_thread_hint(dev, torch.get_num_threads())
        self._start_notes += [f"dmjd: {line}" for line in (note, hint) if line and self.dist.is_main]

    def _where(self) -> str:
        """The run's position as users read it: ``at step 14 (epoch 3/4)``, epochs counted from 1."""
        epochs = self.epochs_known
        epoch = self.state.epoch + 1 if epochs is None else min(self.state.epoch + 1, epochs)
        return f"at step {self.state.opt_step} (epoch {epoch}{'' if epochs is None else f'/{epochs}'})"

    def _evaluate(self, hook: EpochHook) -> None:
        """Run an epoch or step hook on the main process, log and print what it returns (a
        ``kind: "eval"`` record). Its run time is not training time: the run's start moves by it."""
        hook_start = time.perf_counter()
        metrics = hook(self) if self.dist.is_main else None
        if metrics and self.logger is not None:
            record = {"kind": "eval", **self._position(), "time": round(self.state.elapsed, 3), **metrics}
            if self.state.epoch_step:
                record["mid_epoch"] = True  # a step hook's, or the end of a run cut mid-epoch
            self.logger.log(record)
            self.logger.print(progress_line(record, self.epochs_known))
            self.evals.append(record)
        self._run_start += time.perf_counter() - hook_start

    def lr_reached(self) -> float:
        """The highest learning rate the schedule reaches: the peak, or less when the warmup
        outlasts the run."""
        o = self.cfg.optim
        return lr_at(min(self.warmup_steps, self.total_steps - 1), self.total_steps, self.warmup_steps, self.peak_lr, o.min_lr)

    def _warn_short_run(self) -> None:
        o = self.cfg.optim
        if self.warmup_steps > self.total_steps and self.logger is not None:
            self.logger.print(
                f"dmjd: WARNING: optim.warmup_epochs={o.warmup_epochs:g} ({self.warmup_steps} steps) exceeds the run's "
                f"{self.total_steps} steps: the lr rises for the whole run and reaches {self.lr_reached():.4g}, not the "
                f"peak {self.peak_lr:.4g}; lower optim.warmup_epochs"
            )

    def _position(self) -> dict[str, Any]:
        """Epoch, optimizer step and effective training epochs done (K x fractional epochs)."""
        st, usable = self.state, self.steps_per_epoch * self.cfg.optim.accum_iter
        ete = self.masking.num_views * (st.epoch + st.epoch_step / usable)
        return {"epoch": st.epoch, "step": st.opt_step, "ete": round(ete, 6)}

    def _print_start(self) -> None:
        c, m = self.cfg, self.masking
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        print(
            f"dmjd: {c.model.arch}-{c.model.size} ({n_params / 1e6:.2f}M trainable params) on {self.device}"
            f" x{self.dist.world_size}, precision {self.amp_dtype or torch.float32}\n"
            f"dmjd: masking {m!r}\n"
            f"dmjd: target {c.target.name} (dim {self.target.dim}), VDB {'on' if self.model.vdb is not None else 'off'}\n"
            f"dmjd: unique batch b_u={self.unique_batch} x K={m.num_views} views; lr rule {c.optim.lr_rule}: "
            f"effective lr {self.peak_lr:.4g} (blr {c.optim.blr:g}); {self.steps_per_epoch} steps/epoch,"
            f" {self._schedule_words()}"
        )
        print(f"dmjd: {rates_summary(m, c.optim.lr_rates)}")
        for warning in m.rate_warnings():
            print(f"dmjd: WARNING: {warning}")

    def _schedule_words(self) -> str:
        """The schedule at start: steps and warmup, a budget's plan, or how a budget will be planned."""
        b = self.budget
        if b is None:
            return f"{self.total_steps} steps, {self.warmup_steps} warmup"
        if b.plan is not None:
            return f"following its plan: {describe_plan(b.plan)}"
        return (f"budget {format_duration(b.budget_s)}: the step rate is measured over the first {b.measure_steps} steps, "
                "then warmup + cosine are planned to end at the budget")  # fmt: skip

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass
        return old

    def _masks(self, micro_step: int, batch_size: int) -> MaskedViews:
        """This process's slice of the global batch's masks for one micro-step."""
        self.mask_gen.manual_seed(step_seed(self.cfg.train.seed, micro_step))
        world, rank = self.dist.world_size, self.dist.rank
        mask, drawn = self.masking.sample(
            batch_size * world, self.mask_gen, self.device, with_order=self.cfg.loss.vis_pairing == "official"
        )
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return MaskedViews.from_mask(mask[rows], self.masking.num_masked, None if drawn is None else drawn[rows])

    def compute_losses(self, images: Tensor, views: MaskedViews) -> dict[str, Tensor]:
        """Targets once per image, the model on K views, the loss terms (Eq. 6).

        With ``train.compile`` the whole computation (target, normalisation, model, loss) is one
        ``torch.compile`` region; its shapes are static because disjoint masking fixes the counts.
        """
        if self.cfg.train.compile and self.cfg.train.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return self._step_losses(images, views)

    def _losses(self, images: Tensor, views: MaskedViews) -> dict[str, Tensor]:
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            targets = self.target(images)
            out = self.ddp(self.normalize(images), views)
            return self.loss_fn(out, targets, views)

    def _optimizer_step(self) -> Tensor:
        """Clip, then step unless the gradient is non-finite; returns the skip flag (0./1.) on device."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        found_inf = (~torch.isfinite(norm)).float()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fused:
            self.optimizer.found_inf = found_inf  # fused AdamW skips the update on device, no sync
            self.optimizer.step()
        elif not bool(found_inf):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return found_inf

    def _train_epoch(self, on_step_end: EpochHook | None = None) -> dict[str, float]:
        cfg, st, o = self.cfg, self.state, self.cfg.optim
        self.model.train()
        micro_per_epoch = self.batches.steps_per_epoch()
        usable_micro = self.steps_per_epoch * o.accum_iter
        K = self.masking.num_views
        sums = _Sums(self.device)
        resumed = self._resumed_sums if st.epoch_step else None  # a mid-epoch resume continues the epoch's sums
        epoch_sums = self._epoch_sums = _Sums.from_plain(resumed, self.device) if resumed else _Sums(self.device)
        self._resumed_sums = None
        consecutive = torch.zeros((), device=self.device)
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(
            total=usable_micro, initial=st.epoch_step, desc=f"epoch {st.epoch}", leave=False,
            disable=not (cfg.train.progress and self.dist.is_main), dynamic_ncols=True,
        )  # fmt: skip
        for images, bad in self.batches.epoch(st.epoch, st.epoch_step):
            if st.epoch_step >= usable_micro:
                break
            micro = st.epoch * micro_per_epoch + st.epoch_step
            views = self._masks(micro, images.shape[0])
            boundary = (st.epoch_step + 1) % o.accum_iter == 0
            sync = nullcontext() if boundary or not self.dist.enabled else self.ddp.no_sync()
            with sync, _explain_oom(o.batch_size, o.accum_iter):
                losses = self.compute_losses(images, views)
                loss = losses["loss"] / o.accum_iter
                if self.scaler is not None:
                    loss = self.scaler.scale(loss)
                loss.backward()
            pred = measured_pred_ratio(views.mask)
            sums.add(losses, pred)
            epoch_sums.add(losses, pred)
            st.bad_images += bad
            st.epoch_step += 1
            window_images += images.shape[0] * self.dist.world_size
            bar.update(1)
            if not boundary:
                continue
            set_lr(self.optimizer, self._lr())
            found_inf = self._optimizer_step()
            consecutive = (consecutive + found_inf) * found_inf
            sums.skipped += found_inf
            epoch_sums.skipped += found_inf
            st.opt_step += 1
            if self.budget is not None:
                self._observe_budget()
            if st.opt_step % cfg.train.log_interval == 0 or st.epoch_step >= usable_micro:
                elapsed = time.perf_counter() - window_start
                record = self._record(sums, window_images / max(elapsed, 1e-9), K)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if self.logger is not None:
                    self.logger.log({"kind": "train", **record, "time": round(time.perf_counter() - self._run_start, 3)})
                    if not cfg.train.progress:
                        self.logger.print(progress_line(record, self.epochs_known))
                st.nonfinite_total += int(record["skipped_steps"])
                sums = _Sums(self.device)
                window_start, window_images = time.perf_counter(), 0
                if float(consecutive) >= cfg.train.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{int(consecutive)} consecutive steps had a non-finite loss or gradient (lr "
                        f"{self._lr():.3g}); the weights were not updated by them and the last checkpoint is "
                        "intact. Lower optim.blr, set optim.clip_grad, or use train.precision=bf16/fp32, "
                        "then --resume auto."
                    )
            if on_step_end is not None:
                st.elapsed = time.perf_counter() - self._run_start
                before = self._run_start
                self._evaluate(on_step_end)
                window_start += self._run_start - before  # evaluation is not training time
            if self._stop_signal is not None:
                self._save_interrupt_checkpoint()
            every = cfg.train.checkpoint_steps
            if every and st.opt_step % every == 0 and st.epoch_step < usable_micro:
                st.elapsed = time.perf_counter() - self._run_start
                self.save(ckpt.LAST)  # mid-epoch: resumable exactly like a preemption checkpoint
            max_time = self.time_limit_s
            if max_time is not None and time.perf_counter() - self._run_start >= max_time:
                self.time_up = True
                break
            if st.opt_step >= self.total_steps:
                break  # optim.max_steps reached mid-epoch
        bar.close()
        record = self._record(epoch_sums, 0.0, K)
        record.pop("images_per_s"), record.pop("views_per_s")
        if self._epoch_complete():
            record.update(epoch=st.epoch, ete=K * (st.epoch + 1))
        else:
            record["complete"] = False  # cut by the time budget or optim.max_steps
        if self.logger is not None:
            self.logger.log({"kind": "epoch", **record, "time": round(time.perf_counter() - self._run_start, 3)})
        return record

    def _observe_budget(self) -> None:
        """Show the time budget this step; when it makes or changes the plan, follow it: schedule,
        config (and config.yaml) and a log line."""
        assert self.budget is not None
        plan = self.budget.observe(self.state.opt_step, time.perf_counter() - self._run_start)
        if plan is None:
            return
        apply_plan(self.cfg, plan)
        self.total_steps, self.warmup_steps = plan.total_steps, plan.warmup_steps
        if self.logger is not None:
            (self.output_dir / "config.yaml").write_text(config_to_yaml(self.cfg))
            if plan.replanned_at == self.state.opt_step or not plan.checked:
                self.logger.print(f"dmjd: {describe_plan(plan)}")

    def _epoch_complete(self) -> bool:
        """Whether the current epoch ran to its end: not cut by the time budget, nor by ``optim.max_steps``
        before its last step."""
        usable_micro = self.steps_per_epoch * self.cfg.optim.accum_iter
        return not self.time_up and (self.state.opt_step < self.total_steps or self.state.epoch_step >= usable_micro)

    def _stopped_by(self) -> str:
        """What ended (or ends) the run: ``time budget``, ``epochs`` or ``max_steps``."""
        if self.time_up:
            return "time budget"
        if self.budget is not None:
            return "budget plan"
        return "epochs" if self.state.epoch >= self.num_epochs else "max_steps"

    def _lr(self) -> float:
        o = self.cfg.optim
        return lr_at(self.state.opt_step, self.total_steps, self.warmup_steps, self.peak_lr, o.min_lr)

    def _record(self, sums: _Sums, images_per_s: float, K: int) -> dict[str, float]:
        """Average the window's sums over processes (one host sync) into a metrics record."""
        values = all_reduce_mean(sums.stacked(), self.dist).tolist()
        n = max(sums.count, 1)
        st = self.state
        record: dict[str, Any] = {**self._position(), "loss": values[0] / n, "loss_mim": values[1] / n}
        if self.model.vdb is not None:
            record["loss_vis"] = values[2] / n
        record.update(
            lr=self.optimizer.param_groups[0]["lr"],
            pred_ratio=values[3] / n,
            images_per_s=images_per_s,
            views_per_s=images_per_s * K,
            skipped_steps=values[4] * self.dist.world_size,
            bad_images=st.bad_images,
        )
        if isinstance(self.target, FrozenNetworkTarget):  # teacher cost, counted apart (paper: in ETE)
            record.update(self.target.cost_metrics())
        return record

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizer, scaler, position, RNG, config."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "run_state": {**vars(self.state), **self._log_state()},
            "epoch": self.state.epoch,
            "step": self.state.opt_step,
            "rng": rng_state(),
            "config": self.cfg.model_dump(mode="json"),
            "world_size": self.dist.world_size,
            "dmjd_version": dmjd.__version__,
        }

    def _log_state(self) -> dict[str, Any]:
        """What a resume needs of the logs: the epoch's running sums mid-epoch (plain numbers, so the
        resumed epoch's record averages all its steps) and the size of ``log.txt`` (cut back to it)."""
        out: dict[str, Any] = {}
        if self._epoch_sums is not None and self.state.epoch_step:
            out["epoch_sums"] = self._epoch_sums.plain()
        if self.logger is not None:
            out["log_bytes"] = self.logger.text_bytes()
        return out

    def save(self, name: str) -> Path | None:
        """Save a checkpoint from the main process (all processes wait for it)."""
        barrier(self.dist)
        if self._epoch_sums is not None and self.state.epoch_step:
            self._epoch_sums.average_over(self.dist)  # the saved sums stand for every process
        path = ckpt.save_checkpoint(self.state_dict(), self.output_dir / name) if self.dist.is_main else None
        barrier(self.dist)
        return path

    def _save_epoch_checkpoints(self) -> None:
        epoch, cfg = self.state.epoch, self.cfg
        at_boundary = not self.time_up and self.state.epoch_step == 0
        if at_boundary and (epoch % cfg.train.checkpoint_interval == 0 or epoch == self.num_epochs):
            self.save(f"checkpoint-{epoch}.pth")
            if self.dist.is_main:
                ckpt.prune_checkpoints(self.output_dir, cfg.train.keep_checkpoints)
        self.save(ckpt.LAST)

    def _save_interrupt_checkpoint(self) -> None:
        self.state.elapsed = time.perf_counter() - self._run_start
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "signal"
        path, where = self.output_dir / ckpt.LAST, self._where()
        if self.logger is not None:  # before the save: a resume keeps log.txt up to the checkpoint
            self.logger.write(f"dmjd: interrupted by {name} {where}; checkpoint saved to {path}")
        self.save(ckpt.LAST)
        raise TrainingInterrupted(f"{name} received: saved {path} {where}; continue with --resume auto")

    def _finish(self, seconds: float, last: dict[str, float]) -> dict[str, Any]:
        summary = {
            "kind": "summary",
            "epochs": self.state.epoch,
            "steps": self.state.opt_step,
            "ete": self._position()["ete"],
            "stopped_by": self._stopped_by(),
            "time_s": round(seconds, 2),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "device_hours": round(seconds * self.dist.world_size / 3600, 4),
            "final_loss": last.get("loss"),
            "final_loss_mim": last.get("loss_mim"),
            "final_loss_vis": last.get("loss_vis"),
            "skipped_steps": self.state.nonfinite_total,
            "bad_images": self.state.bad_images,
            "lr_peak": self.peak_lr,
            "lr_reached": self.lr_reached(),
            **self._evaluation_summary(),
        }
        if self.budget is not None:
            summary["budget_s"] = self.budget.budget_s
            summary["budget_plan"] = self.budget.plan.model_dump() if self.budget.plan is not None else None
        if isinstance(self.target, FrozenNetworkTarget):
            summary.update(self.target.cost_metrics())
        summary = round_floats(summary)
        if self.dist.is_main:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _evaluation_summary(self) -> dict[str, Any]:
        """The last evaluation's accuracies (``evaluation``), those of the untrained encoder
        (``evaluation_untrained``, the epoch-0 evaluation) and the ``pixels_*`` baselines it
        reported (``evaluation_raw_pixels``)."""
        if not self.evals:
            return {}
        first, last = self.evals[0], self.evals[-1]
        keys = [k for k in last if k.endswith("top1") and not k.startswith("pixels_")]
        out: dict[str, Any] = {"evaluation": {"epoch": last["epoch"], **{k: last[k] for k in keys}}}
        if first["step"] == 0:
            out["evaluation_untrained"] = {k: first[k] for k in keys if k in first}
            pixels = {k.removeprefix("pixels_"): v for k, v in first.items() if k.startswith("pixels_")}
            if pixels:
                out["evaluation_raw_pixels"] = pixels
        return out


class _Sums:
    """Running sums of the logged quantities, kept on the device to avoid host syncs per step."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(4, device=device)
        self.skipped = torch.zeros((), device=device)
        self.count = 0

    def add(self, losses: dict[str, Tensor], pred_ratio: Tensor) -> None:
        zero = losses["loss"].new_zeros(())
        terms = [losses["loss"], losses.get("loss_mim", zero), losses.get("loss_vis", zero), pred_ratio.to(zero)]
        self.values += torch.stack([t.detach().float() for t in terms])
        self.count += 1

    def stacked(self) -> Tensor:
        return torch.cat([self.values, self.skipped.view(1)])

    def plain(self) -> dict[str, Any]:
        """The sums as plain numbers, for a checkpoint."""
        return {"values": self.values.tolist(), "skipped": float(self.skipped), "count": self.count}

    @classmethod
    def from_plain(cls, state: dict[str, Any], device: torch.device) -> _Sums:
        """Sums restored from ``plain``."""
        sums = cls(device)
        sums.values += torch.tensor(state["values"], device=device)
        sums.skipped += float(state["skipped"])
        sums.count = int(state["count"])
        return sums

    def average_over(self, dist: DistInfo) -> None:
        """Replace this process's sums by their mean over processes (what a record reports: records
        average again, and the mean is linear, so later records are unchanged)."""
        averaged = all_reduce_mean(self.stacked(), dist)
        self.values, self.skipped = averaged[:4].clone(), averaged[4].clone()


def resume_config(checkpoint: str | Path, overrides: list[str] | None = None) -> Config:
    """The config of a saved run, with dotted ``key=value`` overrides on top (e.g. another
    device; ``Pretrainer`` refuses overrides that change the run, see ``check_resumable``)."""
    from dmjd.config.loading import apply_override, parse_override

    data = load_pretraining_checkpoint(checkpoint)["config"]
    for item in overrides or []:
        path, value = parse_override(item)
        apply_override(data, path, value)
    return config_from_dict(data)


def pretrain(cfg: Config, output_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run a pre-training and return its summary (see ``Pretrainer``)."""
    return Pretrainer(cfg, output_dir, resume=resume, overwrite=overwrite).fit()

