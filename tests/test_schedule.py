"""dmjd.engine.budget.run_schedule: a run's steps, warmup and time limit at its start, from ``optim.*``,
from a budget still to be planned, or from a budget's saved plan."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from dmjd.config import ConfigError
from dmjd.config.schema import BudgetPlan
from dmjd.engine.budget import PROVISIONAL_EPOCHS, TimeBudget, run_schedule

PLAN = BudgetPlan(
    budget_s=90.0, steps_per_s=2.0, measured_steps=4, planned_at=5, planned_at_s=3.0, total_steps=25, warmup_steps=3,
    steps_per_epoch=10,
)  # fmt: skip


def test_an_epoch_counted_run_has_its_epochs_steps_and_warmup_and_no_time_limit():
    schedule = run_schedule(tiny_config("optim.epochs=3", "optim.warmup_epochs=0.5"), steps_per_epoch=10)
    assert (schedule.budget, schedule.total_steps, schedule.warmup_steps, schedule.time_limit_s) == (None, 30, 5, None)


def test_max_steps_caps_the_run_and_max_time_s_is_its_time_limit():
    cfg = tiny_config("optim.epochs=3", "optim.max_steps=12", "train.max_time_s=50")
    schedule = run_schedule(cfg, steps_per_epoch=10)
    assert (schedule.total_steps, schedule.time_limit_s) == (12, 50)
    assert run_schedule(tiny_config("optim.epochs=3", "optim.max_steps=100"), 10).total_steps == 30  # a cap, not a length


def test_a_budget_without_plan_is_open_ended_with_a_provisional_warmup_and_ends_at_the_budget():
    cfg = tiny_config("train.budget=90s", "train.budget_measure_steps=4", "train.budget_warmup=0.1")
    schedule = run_schedule(cfg, steps_per_epoch=10)
    assert isinstance(schedule.budget, TimeBudget) and schedule.budget.plan is None
    assert schedule.total_steps == 10 * PROVISIONAL_EPOCHS
    assert schedule.warmup_steps == schedule.budget.provisional_warmup == 40  # 100 measurements x 4 steps x 0.1
    assert schedule.time_limit_s == 90
    assert run_schedule(tiny_config("train.budget=90s", "train.max_time_s=30"), 10).time_limit_s == 30  # the sooner


def test_a_saved_plan_sets_the_schedule_and_is_written_into_the_config():
    cfg = tiny_config("train.budget=90s", "optim.epochs=400")
    cfg.train.budget_plan = PLAN
    schedule = run_schedule(cfg, steps_per_epoch=10)
    assert schedule.budget.plan == PLAN
    assert (schedule.total_steps, schedule.warmup_steps, schedule.time_limit_s) == (25, 3, 90)
    assert (cfg.optim.epochs, cfg.optim.max_steps, cfg.optim.warmup_epochs) == (3, 25, 0.3)


def test_a_saved_plan_for_another_number_of_steps_per_epoch_is_refused():
    cfg = tiny_config("train.budget=90s")
    cfg.train.budget_plan = PLAN
    with pytest.raises(
        ConfigError, match=r"made for 10 steps per epoch, this data and batch give 12; set train.budget_plan=null"
    ):
        run_schedule(cfg, steps_per_epoch=12)
    assert cfg.optim.max_steps is None  # refused before the plan was applied
