"""The pre-training loop: builds a run from a Config and trains it, resumable at any step.

Reproducibility by construction: the data order comes from ``(seed, epoch)``, each image's
augmentation from ``(seed, epoch, index)`` and each micro-step's masks from ``(seed, step)``, so
a run resumed mid-epoch, or run on another number of processes with the same global batch, sees
the same images, augmentations and masks. Resuming is ``dmjd.engine.resume``, fault handling
``dmjd.engine.faults``, the run folder ``dmjd.engine.run_dir`` and its start-up lines and summary
``dmjd.engine.run_report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dmjd.config import Config, ConfigError, config_to_yaml
from dmjd.data import Normalize
from dmjd.engine import run_report
from dmjd.engine.budget import PROVISIONAL_EPOCHS, TimeBudget, apply_plan, describe_plan, run_schedule, worth_showing
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target, mean_std
from dmjd.engine.distributed import (
    DistInfo,
    agree_on_step,
    barrier,
    from_main,
    init_distributed,
    raise_together,
    rank_log,
)
from dmjd.engine.faults import NonFiniteSteps, StopSignals, TrainingInterrupted, check_disk_space, explain_oom
from dmjd.engine.loss_sums import LossSums
from dmjd.engine.metrics import MetricsLogger, bars_shown, cut_run_logs, progress_line
from dmjd.engine.optim import build_optimizer, lr_at, optimizer_step, peak_lr, set_lr
from dmjd.engine.resources import start_memory_notes
from dmjd.engine.resume import (
    RunState,
    check_resumable,
    keep_global_batch,
    load_pretraining_checkpoint,
    resolve_resume,
    restore_run,
    training_checkpoint,
    with_saved_plan,
)
from dmjd.engine.run_dir import prepare_output_dir
from dmjd.engine.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from dmjd.engine.start_weights import config_for_source, load_start_weights, read_start, small_data_note
from dmjd.engine.training_data import training_data
from dmjd.errors import InputError
from dmjd.io import checkpoint as ckpt
from dmjd.masking import MaskedViews, StepMasks, measured_pred_ratio
from dmjd.models.dmjd import MaskedEncoder
from dmjd.targets import FrozenNetworkTarget

EpochHook = Callable[["Pretrainer"], "dict[str, Any] | None"]


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
        cfg = from_main(self.dist, cfg)  # one config: an auto recipe measured on each process may differ
        resume_path = resolve_resume(self.output_dir, resume)
        if str(resume) == "auto" and resume_path is None and self.dist.is_main:
            print(f"dmjd: no checkpoint in {self.output_dir}, starting fresh")
        loaded = load_pretraining_checkpoint(resume_path) if resume_path is not None else None
        self._start_notes: list[str] = []  # lines for the console and log.txt once the run's log is open
        if loaded is not None and resume_path is not None:
            cfg = with_saved_plan(cfg, loaded["config"])
            cfg, rebatched = keep_global_batch(cfg, loaded["config"], loaded.get("world_size", 1), self.dist.world_size)
            check_resumable(loaded, cfg, resume_path, self.dist.world_size)
            self._start_notes += [rebatched] if rebatched and self.dist.is_main else []
        start = read_start(cfg) if loaded is None else None  # read before anything is written
        if start is not None:
            cfg = config_for_source(cfg, start)
        try:
            self._lock = prepare_output_dir(self.output_dir, resume_path is not None, overwrite, self.dist.is_main, lock=True)
            refused = None
        except InputError as err:  # the main process's check (the lock, a run already there): every process stops
            refused = err
        raise_together(self.dist, refused)
        if cfg.train.rank_logs and not self.dist.is_main:
            rank_log(self.output_dir, self.dist)
        self.state = RunState()
        self.cfg = cfg
        self.logger: MetricsLogger | None = None
        self._epoch_sums: LossSums | None = None  # the current epoch's, carried by mid-epoch checkpoints
        self._resumed_sums: dict[str, Any] | None = None
        self._build()
        if start is not None:
            lines = load_start_weights(self.model, start, cfg)
            self._start_notes += lines if self.dist.is_main else []
        elif loaded is None and self.dist.is_main:
            note = small_data_note(cfg, self.steps_per_epoch * self.unique_batch)
            self._start_notes += [note] if note else []
        del start  # the source's tensors: the model holds its own copy
        self._check_memory()
        if loaded is not None and resume_path is not None:
            restored = restore_run(loaded, self.model, self.optimizer, self.scaler, cfg.optim.accum_iter)
            self.state, self._resumed_sums = restored.state, restored.epoch_sums
            if self.dist.is_main:
                same_folder = resume_path.parent.resolve() == self.output_dir.resolve()
                cut = cut_run_logs(self.output_dir, self.state.opt_step, restored.log_bytes if same_folder else None)
                dropped = f"; {cut} log records after step {self.state.opt_step} dropped (they are redone)" if cut else ""
                self._start_notes.append(f"dmjd: resumed from {resume_path} {run_report.where(self)}{dropped}")
        self.stop = StopSignals()
        self.time_up = False
        self._run_start = 0.0  # perf_counter() at which the run's training time began (moved by evaluations)
        self._shown_plan_steps: int | None = None  # total steps of the last budget plan printed on the console
        self.evals = run_report.saved_evals(self.output_dir) if loaded is not None else []

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
        cfg, dev, o = self.cfg, self.device, self.cfg.optim
        seed_everything(cfg.train.seed)
        self.target = build_target(cfg).to(dev)
        self.masking = build_masking(cfg)
        self.loss_fn = build_loss(cfg)
        self.model = build_dmjd_model(cfg, self.target.dim).to(dev)
        if cfg.model.grad_checkpointing:
            cast(MaskedEncoder, self.model.encoder).set_grad_checkpointing(True)
        self.normalize = Normalize(*mean_std(cfg)).to(dev)
        self.amp_dtype = autocast_dtype(cfg.train.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 else None
        data = training_data(cfg, dev, self.dist.rank, self.dist.world_size)
        self.batches, self.data_summary, self.data_warnings = data.batches, data.summary, data.warnings
        self.state.bad_images = max(self.state.bad_images, data.unreadable)
        micro = self.batches.steps_per_epoch()
        self.steps_per_epoch = micro // o.accum_iter
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one epoch has {micro} micro-steps, fewer than optim.accum_iter={o.accum_iter}")
        schedule = run_schedule(cfg, self.steps_per_epoch)
        self.budget, self.total_steps, self.warmup_steps = schedule.budget, schedule.total_steps, schedule.warmup_steps
        self.time_limit_s = schedule.time_limit_s
        self.unique_batch = o.batch_size * o.accum_iter * self.dist.world_size
        self.peak_lr = peak_lr(o, self.masking, self.unique_batch)
        self.optimizer = build_optimizer(self.model, self.peak_lr, o.weight_decay, o.betas, o.decay_tokens, o.fused)
        self.ddp: nn.Module = self.model
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._step_losses = torch.compile(self._losses, mode=cfg.train.compile_mode) if cfg.train.compile else self._losses
        self.step_masks = StepMasks(self.masking, cfg.train.seed, dev, self.dist.rank, self.dist.world_size,
                                    with_order=cfg.loss.vis_pairing == "official")  # fmt: skip
        if self.dist.is_main:
            check_disk_space(self.output_dir, self.model)

    def _check_memory(self) -> None:
        """Measure one step's memory before the first step: refuse a batch that cannot fit the device
        (``StepMemoryError``), note one that is close; on a small CPU, note the thread hint."""
        o, m, dev = self.cfg.optim, self.cfg.model, self.device

        def probe(n: int) -> object:  # the model itself, not DDP's wrapper: no gradient sync is started
            images = torch.rand(n, m.in_chans, m.img_size, m.img_size, device=dev)
            views = self.step_masks(0, n)
            with autocast(dev, self.amp_dtype):
                return self.loss_fn(self.model(self.normalize(images), views), self.target(images), views)

        notes = start_memory_notes(self.model, probe, dev, o.batch_size, o.accum_iter)
        if isinstance(self.target, FrozenNetworkTarget):
            self.target.reset_cost()  # the probe's images are not the run's
        self._start_notes += [f"dmjd: {line}" for line in notes if self.dist.is_main]

    # ---------------------------------------------------------------- running
    def fit(self, on_epoch_end: EpochHook | None = None, on_step_end: EpochHook | None = None) -> dict[str, Any]:
        """Train until ``optim.epochs`` (or ``train.max_time_s``); returns the run summary.

        Args:
            on_epoch_end: optional ``hook(trainer) -> dict | None`` run on the main process after
                each epoch (and when the time budget ends the run), and once before a fresh run
                trains (epoch 0: the untrained encoder), e.g. a kNN / linear-probe monitor; a
                returned dict is logged and printed as a ``kind: "eval"`` record. Its run time is
                not counted as training time. In a distributed run the other processes wait for it
                at a barrier, whether or not they were given a hook (it may be None off the main
                process), so it must not enter a collective of its own.
            on_step_end: the same after every optimizer step (e.g. evaluations spaced in steps,
                mid-epoch); it should decide cheaply from ``trainer.state`` when to do work. Like
                ``on_epoch_end`` it runs on the main process only (the others wait for it in the
                next step's collectives), so it must not change what the processes compute (e.g.
                the schedule).

        A finished run (all epochs trained) is left as it is: its saved summary is returned.
        """
        if self.finished:
            self.release()
            return run_report.finished_summary(self)
        self.logger = MetricsLogger(self.output_dir, self.cfg.train.tensorboard) if self.dist.is_main else None
        if self.logger is not None:
            (self.output_dir / "config.yaml").write_text(config_to_yaml(self.cfg))
            run_report.print_start(self, self.logger, self._start_notes)
        self._run_start = time.perf_counter() - self.state.elapsed
        last: dict[str, Any] = {}
        try:
            with self.stop:
                if self.state.opt_step == 0 and self.state.epoch_step == 0:
                    self._evaluate(on_epoch_end)  # epoch 0: the untrained encoder
                    barrier(self.dist)  # every process, hook or not: the others wait for the main one's
                while not self.finished and not self.time_up:
                    before = RunState(**vars(self.state))
                    last = self._train_epoch(on_step_end)
                    if self._epoch_complete():
                        self.state.epoch += 1
                        self.state.epoch_step = 0
                    self.state.elapsed = time.perf_counter() - self._run_start
                    if self.logger is not None:
                        self.logger.print(run_report.epoch_line(self, last, before))
                    self._save_epoch_checkpoints()  # after the epoch's line: a resume keeps it in log.txt
                    self._evaluate(on_epoch_end)
                    barrier(self.dist)
                if self.logger is not None:
                    for line in run_report.closing_lines(self):
                        self.logger.print(line)
                return run_report.write_summary(self, time.perf_counter() - self._run_start, last)
        finally:
            if self.logger is not None:
                self.logger.close()
            self.release()

    def release(self) -> None:
        """Release the output folder's lock (``fit`` does at its end, also on errors and signals)."""
        if self._lock is not None:
            self._lock.release()

    def _evaluate(self, hook: EpochHook | None) -> None:
        """Run an epoch or step hook (when given) on the main process, log and print what it returns
        (a ``kind: "eval"`` record). Its run time is not training time: the run's start moves by it."""
        hook_start = time.perf_counter()
        metrics = hook(self) if hook is not None and self.dist.is_main else None
        if metrics and self.logger is not None:
            record = run_report.eval_record(self, metrics)
            self.logger.log(record)
            self.logger.print(progress_line(record, self.epochs_known))
            self.evals.append(record)
        self._run_start += time.perf_counter() - hook_start

    def lr_reached(self) -> float:
        """The highest learning rate the schedule reaches: the peak, or less when the warmup
        outlasts the run."""
        o = self.cfg.optim
        return lr_at(min(self.warmup_steps, self.total_steps - 1), self.total_steps, self.warmup_steps, self.peak_lr, o.min_lr)

    def position(self) -> dict[str, Any]:
        """The 1-based epoch the run is in or has just finished (0 before training), the optimizer
        step, and the effective training epochs done (K x fractional epochs)."""
        st, usable = self.state, self.steps_per_epoch * self.cfg.optim.accum_iter
        ete = self.masking.num_views * (st.epoch + st.epoch_step / usable)
        return {"epoch": st.epoch + (st.epoch_step > 0), "step": st.opt_step, "ete": round(ete, 6)}

    def compute_losses(self, images: Tensor, views: MaskedViews) -> dict[str, Tensor]:
        """Targets once per image, the model on K views, the loss terms (Eq. 6).

        With ``train.compile`` the whole computation (target, normalisation, model, loss) is one
        ``torch.compile`` region; its shapes are static because disjoint masking fixes the counts.
        """
        if self.cfg.train.compile and self.cfg.train.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return self._step_losses(images, views)

    def _losses(self, images: Tensor, views: MaskedViews) -> dict[str, Tensor]:
        with autocast(self.device, self.amp_dtype):
            targets = self.target(images)
            out = self.ddp(self.normalize(images), views)
            return self.loss_fn(out, targets, views)

    def optimizer_step(self) -> Tensor:
        """Clip, then step unless the gradient is non-finite; returns the skip flag (0./1.) on device."""
        return optimizer_step(self.optimizer, self.model, self.cfg.optim.clip_grad, self.scaler)

    def _train_epoch(self, on_step_end: EpochHook | None = None) -> dict[str, float]:
        cfg, st, o = self.cfg, self.state, self.cfg.optim
        self.model.train()
        micro_per_epoch = self.batches.steps_per_epoch()
        usable_micro = self.steps_per_epoch * o.accum_iter
        sums = LossSums(self.device)
        resumed = self._resumed_sums if st.epoch_step else None  # a mid-epoch resume continues the epoch's sums
        epoch_sums = self._epoch_sums = LossSums.from_plain(resumed, self.device) if resumed else LossSums(self.device)
        self._resumed_sums = None
        nonfinite = NonFiniteSteps(self.device, cfg.train.max_nonfinite_steps)
        window_start, window_images = time.perf_counter(), 0
        bar = run_report.progress_bar(self, usable_micro)
        for images, bad in self.batches.epoch(st.epoch, st.epoch_step):
            if st.epoch_step >= usable_micro:
                break
            views = self.step_masks(st.epoch * micro_per_epoch + st.epoch_step, images.shape[0])
            boundary = (st.epoch_step + 1) % o.accum_iter == 0
            sync = nullcontext() if boundary or not self.dist.enabled else cast(DistributedDataParallel, self.ddp).no_sync()
            with sync, explain_oom(o.batch_size, o.accum_iter):
                losses = self.compute_losses(images, views)
                loss = losses["loss"] / o.accum_iter
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
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
            found_inf = self.optimizer_step()
            nonfinite.add(found_inf)
            sums.skipped += found_inf
            epoch_sums.skipped += found_inf
            st.opt_step += 1
            signum, seconds = agree_on_step(self.dist, self.stop.signum, time.perf_counter() - self._run_start)
            if signum is not None:  # never None over a signal that arrived during the collective: that
                self.stop.signum = signum  # one is shared at the next step (it was lost, 1 run in 4)
            if self.budget is not None:
                self._observe_budget(seconds)
            if st.opt_step % cfg.train.log_interval == 0 or st.epoch_step >= usable_micro:
                record = run_report.train_record(self, sums, window_images / max(time.perf_counter() - window_start, 1e-9))
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if self.logger is not None:
                    self.logger.log({"kind": "train", **record, "time": round(time.perf_counter() - self._run_start, 3)})
                    if not bars_shown(cfg.train.progress):
                        self.logger.print(progress_line(record, self.epochs_known))
                st.nonfinite_total += int(record["skipped_steps"])
                sums = LossSums(self.device)
                window_start, window_images = time.perf_counter(), 0
                nonfinite.check(self._lr())
            if on_step_end is not None:
                st.elapsed = time.perf_counter() - self._run_start
                before = self._run_start
                self._evaluate(on_step_end)
                window_start += self._run_start - before  # evaluation is not training time
            if signum is not None:
                self._save_interrupt_checkpoint()
            every = cfg.train.checkpoint_steps
            if every and st.opt_step % every == 0 and st.epoch_step < usable_micro:
                st.elapsed = time.perf_counter() - self._run_start
                self.save(ckpt.LAST)  # mid-epoch: resumable exactly like a preemption checkpoint
            if self.time_limit_s is not None and seconds >= self.time_limit_s:
                self.time_up = True
                break
            if st.opt_step >= self.total_steps:
                break  # optim.max_steps reached mid-epoch
        bar.close()
        record = run_report.epoch_record(self, epoch_sums, self._epoch_complete())
        if self.logger is not None:
            self.logger.log({"kind": "epoch", **record, "time": round(time.perf_counter() - self._run_start, 3)})
        return record

    def _observe_budget(self, seconds: float) -> None:
        """Show the time budget this step (``seconds``: the agreed training clock); when it makes or
        changes the plan, follow it: schedule, config (and config.yaml) and a log line."""
        plan = cast(TimeBudget, self.budget).observe(self.state.opt_step, seconds, self._lr())
        if plan is None:
            return
        apply_plan(self.cfg, plan)
        self.total_steps, self.warmup_steps = plan.total_steps, plan.warmup_steps
        if self.logger is not None:
            (self.output_dir / "config.yaml").write_text(config_to_yaml(self.cfg))
            if plan.replanned_at == self.state.opt_step or not plan.checked:
                line = f"dmjd: {describe_plan(plan)}"
                if worth_showing(plan, self._shown_plan_steps):
                    self.logger.print(line)
                    self._shown_plan_steps = plan.total_steps
                else:
                    self.logger.write(line)

    def _epoch_complete(self) -> bool:
        """Whether the epoch ran to its end: to its last step (also when the time budget or ``optim.max_steps``
        ended the run there), else not cut by either before it."""
        usable_micro = self.steps_per_epoch * self.cfg.optim.accum_iter
        return self.state.epoch_step >= usable_micro or (not self.time_up and self.state.opt_step < self.total_steps)

    def lr_of(self, step: int) -> float:
        """The schedule's lr of optimizer step ``step`` (counted from 0; a re-planned budget's cosine
        starts where it was re-planned)."""
        start = self.budget.cosine_start() if self.budget is not None else None
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.cfg.optim.min_lr, start)

    def _lr(self) -> float:
        return self.lr_of(self.state.opt_step)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (``dmjd.engine.resume.training_checkpoint``)."""
        sums = self._epoch_sums if self.state.epoch_step else None  # the epoch's running sums, mid-epoch
        log_state: dict[str, Any] = {"epoch_sums": sums.plain()} if sums is not None else {}
        if self.logger is not None:  # log.txt's size, which a resume cuts it back to
            log_state["log_bytes"] = self.logger.text_bytes()
        return training_checkpoint(
            self.model, self.optimizer, self.scaler, self.state, log_state, self.cfg, self.dist.world_size
        )

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
        path, where = self.output_dir / ckpt.LAST, run_report.where(self)
        if self.logger is not None:  # before the save: a resume keeps log.txt up to the checkpoint
            self.logger.write(f"dmjd: interrupted by {self.stop.name} {where}; checkpoint saved to {path}")
        self.save(ckpt.LAST)
        raise TrainingInterrupted(f"{self.stop.name} received: saved {path} {where}; continue with --resume auto")


def pretrain(cfg: Config, output_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run a pre-training and return its summary (see ``Pretrainer``)."""
    return Pretrainer(cfg, output_dir, resume=resume, overwrite=overwrite).fit()
