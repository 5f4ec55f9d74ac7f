"""Time budgets: a run whose warmup + cosine schedule ends at a wall-clock budget (``train.budget``).

A budgeted run cannot know its schedule before it trains: the step rate depends on the model, the
data path, the device and the machine's load. So it measures. ``TimeBudget`` watches the optimizer
steps of the run (training seconds, evaluation time excluded) and

1. after the first ``train.budget_measure_steps`` steps (or a tenth of the budget, whichever comes
   first, but at least 5 steps) plans the schedule: the steps that fit in the rest of the budget at the measured rate,
   with a warmup of ``train.budget_warmup`` of them (``BudgetPlan``);
2. then, over every following window of as many steps as it measured, compares the window's rate
   with the rate the plan needs (its remaining steps in the budget's remaining seconds); when they
   differ by more than ``train.budget_tolerance`` (the machine got busy, or free), it re-plans: the
   steps that fit in the rest of the budget at the window's rate. A re-plan keeps the warmup; after
   the warmup the cosine starts again from the current step at the current lr (``replanned_at``,
   ``replanned_lr``) and ends at the new last step, so the lr never jumps and the cosine still ends
   at the budget.

The time budget itself also stops the run; a run stopped before its plan's last step says so (its
summary's ``schedule_cut``). The rate is measured from the end of the first step, so start-up (first
batches, kernel selection) is not mistaken for the running speed, but the time it took is spent
from the budget. The plan is part of the run's config (``train.budget_plan``): it is written to
config.yaml, summary.json and every checkpoint, and a resumed run follows it (and keeps re-planning
from its own rate, measured afresh after the restart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from dmjd.config import Config, ConfigError
from dmjd.config.duration import format_duration, parse_duration
from dmjd.config.schema import BudgetPlan
from dmjd.errors import InputError

MEASURE_FRACTION = 0.1  # the measurement ends after this fraction of the budget at the latest...
MIN_MEASURED = 5  # ... once it has measured at least this many steps
PROVISIONAL_EPOCHS = 1_000_000  # a budgeted run's epoch cap until its plan exists


class BudgetTooSmallError(InputError):
    """The time budget does not leave room for a single optimizer step."""


def budget_seconds(cfg: Config) -> float | None:
    """The run's ``train.budget`` in seconds, None when it has none."""
    return None if cfg.train.budget is None else parse_duration(cfg.train.budget)


def apply_plan(cfg: Config, plan: BudgetPlan) -> None:
    """Write ``plan`` into ``cfg``: ``train.budget_plan`` and the ``optim`` keys it sets
    (``epochs`` rounded up, ``max_steps``, ``warmup_epochs``)."""
    cfg.train.budget_plan = plan
    cfg.optim.epochs = max(1, math.ceil(plan.total_steps / plan.steps_per_epoch))
    cfg.optim.max_steps = plan.total_steps
    cfg.optim.warmup_epochs = plan.warmup_steps / plan.steps_per_epoch


CONSOLE_CHANGE = 0.1  # a re-plan reaches the console when it moves the planned steps this much (log.txt gets all)


def worth_showing(plan: BudgetPlan, shown_steps: int | None) -> bool:
    """Whether a (re-)plan goes to the console: the first plan, and a re-plan whose total steps differ
    from the last plan shown by more than ``CONSOLE_CHANGE``. Short steps time noisily, so a small
    model re-plans often within a few per cent (46 times in a 2-minute run); each re-plan is still
    followed, recorded in config.yaml and written to log.txt."""
    return shown_steps is None or abs(plan.total_steps / max(shown_steps, 1) - 1.0) > CONSOLE_CHANGE


def steps_in(seconds_left: float, steps_per_s: float) -> int:
    """Optimizer steps that fit in ``seconds_left`` at ``steps_per_s`` (never negative)."""
    return max(0, math.floor(seconds_left * steps_per_s))


def describe_plan(plan: BudgetPlan) -> str:
    """One start-up line, e.g. ``budget 20 min: ~2,340 steps = 7.5 epochs at 1.95 steps/s over the first 20 steps``."""
    line = (
        f"budget {format_duration(plan.budget_s)}: ~{plan.total_steps:,} steps = {plan.epochs:.3g} epochs at "
        f"{plan.steps_per_s:.3g} steps/s over the first {plan.measured_steps} steps, warmup {plan.warmup_steps} steps"
    )
    if plan.replanned_at is not None:
        start = f", the cosine from lr {plan.replanned_lr:.3g}" if plan.replanned_lr is not None else ""
        line += f" (re-planned at step {plan.replanned_at}{start}; {plan.replans} re-plan{'s' * (plan.replans > 1)})"
    return line


class TimeBudget:
    """Plans a budgeted run from its own step rate; the trainer calls ``observe`` after every
    optimizer step.

    Args:
        budget_s: the budget in training seconds.
        steps_per_epoch: optimizer steps of one epoch.
        warmup_fraction: warmup steps as a fraction of the planned steps.
        measure_steps: steps the rate is measured over (fewer when a tenth of the budget ends sooner).
        tolerance: relative drift of a window's rate from the rate the plan needs that triggers a re-plan.
        plan: a saved plan to follow (a resumed run, or a config that carries one).
    """

    def __init__(
        self,
        budget_s: float,
        steps_per_epoch: int,
        warmup_fraction: float = 0.1,
        measure_steps: int = 20,
        tolerance: float = 0.2,
        plan: BudgetPlan | None = None,
    ) -> None:
        self.budget_s, self.steps_per_epoch = budget_s, steps_per_epoch
        self.warmup_fraction, self.measure_steps, self.tolerance = warmup_fraction, measure_steps, tolerance
        self.plan = plan
        self._start: tuple[int, float] | None = None  # (step, seconds) where the measurement began
        self._window: tuple[int, float] | None = None  # (step, seconds) where the current drift window began

    @classmethod
    def from_config(cls, cfg: Config, steps_per_epoch: int) -> TimeBudget | None:
        """The budget of ``cfg`` (None without ``train.budget``)."""
        seconds = budget_seconds(cfg)
        if seconds is None:
            return None
        t = cfg.train
        return cls(seconds, steps_per_epoch, t.budget_warmup, t.budget_measure_steps, t.budget_tolerance, t.budget_plan)

    @property
    def provisional_warmup(self) -> int:
        """Warmup steps before the plan exists: as if the run were a hundred measurements long, so the
        learning rate stays low while the rate is measured."""
        return max(1, round(100 * self.measure_steps * self.warmup_fraction))

    def observe(self, step: int, seconds: float, lr: float | None = None) -> BudgetPlan | None:
        """Take note of optimizer step ``step`` ending ``seconds`` into training (``lr``: the lr the
        schedule gives the next step, where a re-plan's cosine starts); returns the new plan when
        this step made, first checked or re-planned it, else None.

        Raises:
            BudgetTooSmallError: the first step of a fresh run already used the whole budget.
        """
        if self.plan is None:
            plan = self._measure(step, seconds)
            self._window = (step, seconds) if plan is not None else None
            return plan
        if self._window is None:  # a resumed run: its rate is measured afresh from here
            self._window = (step, seconds)
            return None
        if step - self._window[0] < max(self.plan.measured_steps, MIN_MEASURED):
            return None
        return self._check(step, seconds, lr)

    def _measure(self, step: int, seconds: float) -> BudgetPlan | None:
        if self._start is None:
            if step == 1 and seconds >= self.budget_s:
                raise BudgetTooSmallError(
                    f"train.budget={format_duration(self.budget_s)} is shorter than one training step here (the "
                    f"first took {seconds:.1f} s with start-up); give a budget of at least {max(10 * seconds, 60):.0f} s"
                )
            self._start = (step, seconds)
            return None
        first_step, first_s = self._start
        measured = step - first_step
        enough = measured >= self.measure_steps or (
            measured >= min(MIN_MEASURED, self.measure_steps) and seconds >= MEASURE_FRACTION * self.budget_s
        )
        if not enough or seconds <= first_s:
            return None
        rate = measured / (seconds - first_s)
        total = step + steps_in(self.budget_s - seconds, rate)
        self.plan = BudgetPlan(
            budget_s=self.budget_s, steps_per_s=rate, measured_steps=measured, planned_at=step, planned_at_s=seconds,
            total_steps=total, warmup_steps=round(self.warmup_fraction * total), steps_per_epoch=self.steps_per_epoch,
        )  # fmt: skip
        return self.plan

    def _check(self, step: int, seconds: float, lr: float | None) -> BudgetPlan | None:
        """Close the drift window ending at ``step``: re-plan when its rate is off the rate the plan
        needs by more than the tolerance; returns the plan when it changed."""
        plan, (first_step, first_s) = self.plan, cast(tuple[int, float], self._window)
        assert plan is not None
        self._window = (step, seconds)
        rate = (step - first_step) / max(seconds - first_s, 1e-9)
        needed = (plan.total_steps - step) / max(self.budget_s - seconds, 1e-9)
        update: dict[str, object] = {"checked": True}
        total = step + steps_in(self.budget_s - seconds, rate)
        if abs(rate / max(needed, 1e-9) - 1.0) > self.tolerance and total != plan.total_steps:
            after_warmup = step >= plan.warmup_steps and lr is not None
            update.update(steps_per_s=rate, total_steps=total, replanned_at=step, replans=plan.replans + 1,
                          replanned_lr=lr if after_warmup else plan.replanned_lr)  # fmt: skip
        elif plan.checked:
            return None
        self.plan = plan.model_copy(update=update)
        return self.plan

    def cosine_start(self) -> tuple[int, float] | None:
        """Where the plan's cosine starts when a re-plan after the warmup moved it: ``(step, lr)``."""
        plan = self.plan
        if plan is None or plan.replanned_at is None or plan.replanned_lr is None:
            return None
        return plan.replanned_at, plan.replanned_lr


@dataclass(frozen=True)
class RunSchedule:
    """A run's length at its start: its time budget (None without one), optimizer steps, warmup
    steps and the training seconds after which it stops (None: no time limit)."""

    budget: TimeBudget | None
    total_steps: int
    warmup_steps: int
    time_limit_s: float | None


def run_schedule(cfg: Config, steps_per_epoch: int) -> RunSchedule:
    """The schedule of ``cfg`` at ``steps_per_epoch``: from ``optim.*`` (capped by ``optim.max_steps``),
    from a budget's saved plan (applied to ``cfg``), or, for a budget still to be planned, open-ended
    with a provisional warmup that keeps the lr low while the step rate is measured.

    Raises:
        ConfigError: a saved plan made for another number of steps per epoch.
    """
    budget, o = TimeBudget.from_config(cfg, steps_per_epoch), cfg.optim
    if budget is not None and budget.plan is not None:
        if budget.plan.steps_per_epoch != steps_per_epoch:
            raise ConfigError(
                f"train.budget_plan was made for {budget.plan.steps_per_epoch} steps per epoch, this data and "
                f"batch give {steps_per_epoch}; set train.budget_plan=null to plan again"
            )
        apply_plan(cfg, budget.plan)
    if budget is not None and budget.plan is None:
        total_steps, warmup_steps = steps_per_epoch * PROVISIONAL_EPOCHS, budget.provisional_warmup
    else:
        total_steps = steps_per_epoch * o.epochs
        total_steps = min(total_steps, o.max_steps or total_steps)
        warmup_steps = int(round(o.warmup_epochs * steps_per_epoch))
    limits = [t for t in (cfg.train.max_time_s, budget_seconds(cfg)) if t is not None]
    return RunSchedule(budget, total_steps, warmup_steps, min(limits) if limits else None)
