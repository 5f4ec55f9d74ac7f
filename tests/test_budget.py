"""Time budgets (``train.budget``): the plan from a measured rate, the one re-plan, resume, refusals."""

from __future__ import annotations

import types

import pytest
import yaml

from conftest import tiny_config
from dmjd.config import ConfigError
from dmjd.config.duration import format_duration, parse_duration
from dmjd.engine import Pretrainer
from dmjd.engine import trainer as trainer_module
from dmjd.engine.budget import BudgetTooSmallError, TimeBudget


def feed(budget: TimeBudget, rates: list[tuple[int, float]], start_s: float = 0.0, first: int = 1):
    """Report steps to ``budget`` at ``(steps, seconds per step)`` segments; returns every plan it made."""
    plans, step, seconds = [], first - 1, start_s
    for count, per_step in rates:
        for _ in range(count):
            step, seconds = step + 1, seconds + per_step
            plan = budget.observe(step, seconds)
            if plan is not None:
                plans.append(plan)
    return plans


def test_durations_parse_as_users_write_them():
    assert [parse_duration(t) for t in ("90s", "20m", "2h", "1h30m", "45", 12)] == [90, 1200, 7200, 5400, 45, 12]
    for bad in ("soon", "0s", "-3", "20x"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert [format_duration(s) for s in (45, 270, 1200, 7200)] == ["45 s", "4.5 min", "20 min", "2 h"]


def test_plan_fits_warmup_and_cosine_into_the_budget():
    budget = TimeBudget(600.0, steps_per_epoch=50, warmup_fraction=0.1, measure_steps=20)
    # a 4 s first step (start-up), then 0.25 s per step: 4 steps/s
    plans = feed(budget, [(1, 4.0), (400, 0.25)])
    plan = plans[0]
    assert plan.steps_per_s == pytest.approx(4.0)
    assert (plan.planned_at, plan.measured_steps) == (21, 20)
    assert plan.planned_at_s + (plan.total_steps - plan.planned_at) * 0.25 == pytest.approx(600.0, abs=0.25)
    assert plan.warmup_steps == round(0.1 * plan.total_steps)
    assert plan.epochs == pytest.approx(plan.total_steps / 50)
    assert len(plans) == 2 and plans[1].checked and plans[1].replanned_at is None  # steady rate: no re-plan


def test_a_short_budget_measures_a_tenth_of_it_but_at_least_five_steps():
    budget = TimeBudget(20.0, steps_per_epoch=10, measure_steps=20)
    plan = feed(budget, [(1, 0.5), (30, 0.4)])[0]
    assert plan.measured_steps == 5  # 0.5 + 5 x 0.4 = 2.5 s >= a tenth of 20 s


def test_a_drifting_rate_is_replanned_once():
    budget = TimeBudget(100.0, steps_per_epoch=10, warmup_fraction=0.1, measure_steps=10)
    plans = feed(budget, [(11, 0.1), (500, 0.2)])  # twice as slow after the plan
    first, replanned = plans[0], plans[1]
    assert replanned.replanned_at is not None and replanned.checked
    assert replanned.steps_per_s == pytest.approx(5.0, rel=0.1)
    assert replanned.total_steps < first.total_steps
    assert len(plans) == 2  # never again, whatever the rate does then


def test_a_budget_shorter_than_one_step_is_refused():
    budget = TimeBudget(1.0, steps_per_epoch=10)
    with pytest.raises(BudgetTooSmallError, match="shorter than one training step"):
        budget.observe(1, 3.0)


def test_bad_budget_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"train.budget"):
        tiny_config("train.budget=soon")


class FakeClock:
    """``time.perf_counter`` that advances by ``tick`` seconds at each call: the trainer's own reads."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def fake_time(monkeypatch, tick: float) -> None:
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=FakeClock(tick).perf_counter))


def test_budgeted_run_plans_ends_at_the_budget_and_records_the_plan(tmp_path, monkeypatch):
    fake_time(monkeypatch, 0.05)
    cfg = tiny_config("train.budget=6s", "train.budget_measure_steps=4", "optim.epochs=1")
    trainer = Pretrainer(cfg, tmp_path)
    summary = trainer.fit()
    plan = trainer.budget.plan
    assert plan is not None and summary["budget_plan"]["total_steps"] == plan.total_steps
    assert summary["steps"] == plan.total_steps or summary["stopped_by"] == "time budget"
    assert summary["time_s"] <= 6.0 + 1.0
    assert trainer.cfg.optim.max_steps == plan.total_steps and trainer.total_steps == plan.total_steps
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["budget_plan"]["total_steps"] == plan.total_steps
    assert saved["optim"]["max_steps"] == plan.total_steps  # optim.epochs (1) was replaced by the plan's
    assert plan.total_steps > trainer.steps_per_epoch


def test_resumed_budgeted_run_follows_its_saved_plan(tmp_path, monkeypatch):
    fake_time(monkeypatch, 0.05)
    cfg = tiny_config("train.budget=6s", "train.budget_measure_steps=4", "train.max_time_s=2")
    first = Pretrainer(cfg, tmp_path)
    first.fit()  # stopped by max_time_s (2 s of the 6 s budget) after planning
    plan = first.budget.plan
    assert plan is not None and first.state.opt_step < plan.total_steps
    # the user's own command again (no plan in it), without the early stop
    resumed = Pretrainer(tiny_config("train.budget=6s", "train.budget_measure_steps=4"), tmp_path, resume="auto")
    assert resumed.budget.plan == plan
    assert (resumed.total_steps, resumed.warmup_steps) == (plan.total_steps, plan.warmup_steps)
    resumed.fit()
    assert resumed.budget.plan.planned_at == plan.planned_at  # no new measurement


def test_a_plan_for_another_data_size_is_refused(tmp_path, monkeypatch):
    fake_time(monkeypatch, 0.05)
    trainer = Pretrainer(tiny_config("train.budget=6s", "train.budget_measure_steps=4"), tmp_path / "a")
    trainer.fit()
    plan = trainer.budget.plan.model_dump()
    cfg = tiny_config("train.budget=6s", "data.limit=256")
    cfg.train.budget_plan = type(trainer.budget.plan)(**plan)
    with pytest.raises(ConfigError, match="budget_plan=null"):
        Pretrainer(cfg, tmp_path / "b")
