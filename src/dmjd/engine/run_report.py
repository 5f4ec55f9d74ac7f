"""What a run says: its start-up lines, its position as users read it, its metrics records and its
summary (``summary.json``: steps, time, losses, learning rates, the first and last evaluations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dmjd.config import Config
from dmjd.config.duration import format_duration
from dmjd.engine.budget import TimeBudget, describe_plan
from dmjd.engine.distributed import DistInfo
from dmjd.engine.loss_sums import LossSums
from dmjd.engine.metrics import MetricsLogger, bars_shown, progress_line, read_metrics, round_floats
from dmjd.engine.optim import rates_summary
from dmjd.engine.resume import RunState
from dmjd.io.atomic import atomic_write
from dmjd.masking import DisjointMasking
from dmjd.models import VIT_SIZES, DMJDModel
from dmjd.targets import FrozenNetworkTarget, Target


class Run(Protocol):
    """What the report reads of a run (``dmjd.engine.Pretrainer`` is one)."""

    cfg: Config
    output_dir: Path
    device: torch.device
    dist: DistInfo
    amp_dtype: torch.dtype | None
    masking: DisjointMasking
    model: DMJDModel
    target: Target
    state: RunState
    budget: TimeBudget | None
    data_summary: str
    data_warnings: tuple[str, ...]
    unique_batch: int
    peak_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    time_up: bool
    evals: list[dict[str, Any]]

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def epochs_known(self) -> int | None: ...

    @property
    def num_epochs(self) -> int: ...

    def lr_reached(self) -> float: ...

    def lr_of(self, step: int) -> float: ...

    def position(self) -> dict[str, Any]: ...


def where(trainer: Run) -> str:
    """The run's position as users read it: ``at step 14 (epoch 3/4)``, epochs counted from 1."""
    epochs = trainer.epochs_known
    epoch = trainer.state.epoch + 1 if epochs is None else min(trainer.state.epoch + 1, epochs)
    return f"at step {trainer.state.opt_step} (epoch {epoch}{'' if epochs is None else f'/{epochs}'})"


def model_words(cfg: Config) -> str:
    """The encoder as the start-up line names it: ``vit-base``, or its width, depth and heads when they
    replace the size preset's (a recipe's or ``model.init``'s ViT is no ViT-B)."""
    m = cfg.model
    if m.arch != "vit" or (m.embed_dim, m.depth, m.num_heads) == (None, None, None):
        return f"{m.arch}-{m.size}"
    preset = VIT_SIZES[m.size]
    return (f"ViT {m.embed_dim or preset['embed_dim']} wide, {m.depth or preset['depth']} blocks, "
            f"{m.num_heads or preset['num_heads']} heads")  # fmt: skip


def print_start(trainer: Run, logger: MetricsLogger, notes: list[str]) -> None:
    """The start-up lines: model, masking, target, batch and learning rate, schedule (console), then
    the data and its warnings, a warning when the warmup outlasts the run, and ``notes`` (memory,
    threads, resume: console and log.txt)."""
    t, c, m = trainer, trainer.cfg, trainer.masking
    n_params = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
    print(
        f"dmjd: {model_words(c)} ({n_params / 1e6:.2f}M trainable params) on {t.device}"
        f" x{t.dist.world_size}, precision {t.amp_dtype or torch.float32}\n"
        f"dmjd: masking {m!r}\n"
        f"dmjd: target {c.target.name} (dim {t.target.dim}), VDB {'on' if t.model.vdb is not None else 'off'}\n"
        f"dmjd: unique batch b_u={t.unique_batch} x K={m.num_views} views; lr rule {c.optim.lr_rule}: "
        f"effective lr {t.peak_lr:.4g} (blr {c.optim.blr:g}); {t.steps_per_epoch} steps/epoch,"
        f" {_schedule_words(t)}"
    )
    print(f"dmjd: {rates_summary(m, c.optim.lr_rates)}")
    for warning in m.rate_warnings():
        print(f"dmjd: WARNING: {warning}")
    logger.print(f"dmjd: {t.data_summary}")
    for warning in t.data_warnings:
        logger.print(f"dmjd: WARNING: {warning}")
    if t.warmup_steps > t.total_steps:
        logger.print(
            f"dmjd: WARNING: optim.warmup_epochs={c.optim.warmup_epochs:g} ({t.warmup_steps} steps) exceeds the run's "
            f"{t.total_steps} steps: the lr rises for the whole run and reaches {t.lr_reached():.4g}, not the "
            f"peak {t.peak_lr:.4g}; lower optim.warmup_epochs"
        )
    for line in notes:
        logger.print(line)


def _schedule_words(trainer: Run) -> str:
    """The schedule at start: steps and warmup, a budget's plan, or how a budget will be planned."""
    b = trainer.budget
    if b is None:
        return f"{trainer.total_steps} steps, {trainer.warmup_steps} warmup"
    if b.plan is not None:
        return f"following its plan: {describe_plan(b.plan)}"
    return (f"budget {format_duration(b.budget_s)}: the step rate is measured over the first {b.measure_steps} steps, "
            "then warmup + cosine are planned to end at the budget")  # fmt: skip


def progress_bar(trainer: Run, total: int) -> tqdm:
    """The epoch's progress bar of ``total`` micro-steps (main process, ``train.progress``)."""
    st = trainer.state
    disable = not (bars_shown(trainer.cfg.train.progress) and trainer.dist.is_main)
    epochs = "" if trainer.epochs_known is None else f"/{trainer.epochs_known}"
    return tqdm(total=total, initial=st.epoch_step, desc=f"epoch {st.epoch + 1}{epochs}", leave=False, disable=disable,
                dynamic_ncols=True)  # fmt: skip


def train_record(trainer: Run, sums: LossSums, images_per_s: float) -> dict[str, Any]:
    """A metrics record of the window (or epoch) ``sums`` cover, averaged over processes (one host sync)."""
    t, means = trainer, sums.means(trainer.dist)
    record: dict[str, Any] = {**t.position(), "loss": means["loss"], "loss_mim": means["loss_mim"]}
    if t.model.vdb is not None:
        record["loss_vis"] = means["loss_vis"]
    record.update(
        lr=t.optimizer.param_groups[0]["lr"],
        pred_ratio=means["pred_ratio"],
        images_per_s=images_per_s,
        views_per_s=images_per_s * t.masking.num_views,
        skipped_steps=means["skipped_steps"],
        bad_images=t.state.bad_images,
    )
    if isinstance(t.target, FrozenNetworkTarget):  # teacher cost, counted apart (paper: in ETE)
        record.update(t.target.cost_metrics())
    return record


def epoch_record(trainer: Run, sums: LossSums, complete: bool) -> dict[str, Any]:
    """The record of an epoch (``sums``: all its steps); one cut by the time budget or
    ``optim.max_steps`` says ``complete: False``."""
    record = train_record(trainer, sums, 0.0)
    record.pop("images_per_s"), record.pop("views_per_s")
    if not complete:
        record["complete"] = False
    return record


def epoch_line(trainer: Run, record: dict[str, Any], before: RunState) -> str:
    """The console line of the epoch that ``record`` closes, with its images/s and bad images since
    ``before`` (the run's state when the epoch started)."""
    t = trainer
    seconds = max(t.state.elapsed - before.elapsed, 1e-9)
    images_per_s = (t.state.opt_step - before.opt_step) * t.unique_batch / seconds
    bad = t.state.bad_images - before.bad_images
    return progress_line({**record, "kind": "epoch"}, t.epochs_known, images_per_s=images_per_s, bad_images=bad)


def eval_record(trainer: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``kind: "eval"`` record of an evaluation hook's ``metrics`` at the run's position."""
    record = {"kind": "eval", **trainer.position(), "time": round(trainer.state.elapsed, 3), **metrics}
    if trainer.state.epoch_step:
        record["mid_epoch"] = True  # a step hook's, or the end of a run cut mid-epoch
    return record


def stopped_by(trainer: Run) -> str:
    """What ended (or ends) the run: ``time budget``, ``budget plan``, ``epochs`` or ``max_steps``."""
    if trainer.time_up:
        return "time budget"
    if trainer.budget is not None:
        return "budget plan"
    return "epochs" if trainer.state.epoch >= trainer.num_epochs else "max_steps"


def schedule_cut(trainer: Run) -> dict[str, Any] | None:
    """Where the time limit stopped a run before its schedule's last step: ``{"step", "planned_steps",
    "lr"}`` (the lr of its last step, not yet the cosine's end), None when it ran to its end."""
    t = trainer
    if not t.time_up or t.state.opt_step >= t.total_steps:
        return None
    planned = None if t.budget is not None and t.budget.plan is None else t.total_steps  # None: before any plan
    return {"step": t.state.opt_step, "planned_steps": planned, "lr": t.lr_of(t.state.opt_step - 1)}


def closing_lines(trainer: Run) -> list[str]:
    """The lines that end a run's log: that its schedule was cut, and where (none when it was not)."""
    cut = schedule_cut(trainer)
    if cut is None:
        return []
    planned = f"of its {cut['planned_steps']} planned steps" if cut["planned_steps"] else "before its schedule was planned"
    return [
        f"dmjd: the schedule was cut: the time limit stopped the run at step {cut['step']} {planned}, with lr "
        f"{cut['lr']:.3g} (the cosine ends at {trainer.cfg.optim.min_lr:.3g})"
    ]


def finished_summary(trainer: Run) -> dict[str, Any]:
    """For a run that has already finished: say so, and return its saved summary (its files are kept)."""
    if trainer.dist.is_main:
        t = trainer
        print(f"dmjd: the run in {t.output_dir} has finished its {epochs_trained(t):g} epochs ({t.state.opt_step:,} "
              f"steps, stopped by {stopped_by(t)}); nothing to train, its files are left as they are")  # fmt: skip
    summary = trainer.output_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {"kind": "summary", "epochs": epochs_trained(trainer)}


def epochs_trained(trainer: Run) -> float:
    """Epochs the run has trained, a fraction when its last one was cut (summary.json's ``epochs``):
    6.25 is six epochs and a quarter of the seventh, whose log line says ``epoch 7/12 stopped``."""
    st, usable = trainer.state, trainer.steps_per_epoch * trainer.cfg.optim.accum_iter
    return round(st.epoch + st.epoch_step / usable, 3)


def write_summary(trainer: Run, seconds: float, last: dict[str, Any]) -> dict[str, Any]:
    """The run's summary after ``seconds`` of training (``last``: the last epoch record), written to
    ``summary.json`` by the main process."""
    t = trainer
    summary = {
        "kind": "summary",
        "epochs": epochs_trained(t),
        "steps": t.state.opt_step,
        "ete": t.position()["ete"],
        "stopped_by": stopped_by(t),
        "time_s": round(seconds, 2),
        "device": str(t.device),
        "world_size": t.dist.world_size,
        "device_hours": round(seconds * t.dist.world_size / 3600, 4),
        "final_loss": last.get("loss"),
        "final_loss_mim": last.get("loss_mim"),
        "final_loss_vis": last.get("loss_vis"),
        "skipped_steps": t.state.nonfinite_total,
        "bad_images": t.state.bad_images,
        "lr_peak": t.peak_lr,
        "lr_reached": t.lr_reached(),
        **evaluation_summary(t.evals),
    }
    if t.budget is not None:
        summary["budget_s"] = t.budget.budget_s
        summary["budget_plan"] = t.budget.plan.model_dump() if t.budget.plan is not None else None
    summary["schedule_cut"] = schedule_cut(t)
    if isinstance(t.target, FrozenNetworkTarget):
        summary.update(t.target.cost_metrics())
    summary = round_floats(summary)
    if t.dist.is_main:
        atomic_write(t.output_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def saved_evals(output_dir: Path) -> list[dict[str, Any]]:
    """The ``kind: "eval"`` records of a resumed run's ``metrics.jsonl`` (none without the file)."""
    metrics_file = output_dir / "metrics.jsonl"
    return [r for r in read_metrics(metrics_file) if r.get("kind") == "eval"] if metrics_file.is_file() else []


def evaluation_summary(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluation's accuracies (``evaluation``), those of the untrained encoder
    (``evaluation_untrained``, the epoch-0 evaluation), the ``pixels_*`` baselines it reported
    (``evaluation_raw_pixels``) and the test split's size (``evaluation_test_images``) when it said it."""
    if not evals:
        return {}
    first, last = evals[0], evals[-1]
    keys = [k for k in last if k.endswith("top1") and not k.startswith("pixels_")]
    out: dict[str, Any] = {"evaluation": {"epoch": last["epoch"], **{k: last[k] for k in keys}}}
    if first["step"] == 0:
        out["evaluation_untrained"] = {k: first[k] for k in keys if k in first}
        pixels = {k.removeprefix("pixels_"): v for k, v in first.items() if k.startswith("pixels_")}
        if pixels:
            out["evaluation_raw_pixels"] = pixels
        if "test_images" in first:
            out["evaluation_test_images"] = first["test_images"]
    return out
