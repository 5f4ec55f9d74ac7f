"""Time budgets (``train.budget``): the plan from a measured rate, re-plans when the rate drifts, resume, refusals."""

from __future__ import annotations

import itertools
import types

import pytest
import yaml

from conftest import tiny_config
from dmjd.config import ConfigError
from dmjd.config.duration import format_duration, parse_duration
from dmjd.config.schema import BudgetPlan
from dmjd.engine import Pretrainer
from dmjd.engine import trainer as trainer_module
from dmjd.engine.budget import BudgetTooSmallError, TimeBudget, worth_showing
from dmjd.engine.optim import lr_at


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


def run_to_the_budget(budget: TimeBudget, seconds_per_step) -> tuple[list[tuple[int, float, float]], list]:
    """Train against ``budget`` as the trainer does, a step taking ``seconds_per_step(step)``, until the
    plan's last step or the budget's end; returns ``(step, seconds, lr of that step)`` and every plan made."""
    trace, plans, step, seconds = [], [], 0, 0.0
    while True:
        plan = budget.plan
        total, warmup = (plan.total_steps, plan.warmup_steps) if plan else (10**9, budget.provisional_warmup)
        if step >= total or seconds >= budget.budget_s:
            return trace, plans
        lr = lr_at(step, total, warmup, 1.0, 0.0, budget.cosine_start())  # the lr the step trains with
        step, seconds = step + 1, seconds + seconds_per_step(step)
        trace.append((step, seconds, lr))
        plan = budget.observe(step, seconds, lr_at(step, total, warmup, 1.0, 0.0, budget.cosine_start()))
        plans += [plan] if plan is not None else []


@pytest.mark.parametrize(("before", "after"), [(0.1, 0.25), (0.2, 0.1)])  # a slowdown, a speed-up
def test_a_rate_that_changes_mid_run_is_replanned_and_the_cosine_still_ends_at_the_budget(before, after):
    budget = TimeBudget(100.0, steps_per_epoch=10, warmup_fraction=0.1, measure_steps=10)
    trace, plans = run_to_the_budget(budget, lambda step: before if step < 200 else after)
    first, last = plans[0], budget.plan
    assert last.replans >= 1 and last.replanned_at > 200 and last.replanned_lr is not None
    assert (last.total_steps < first.total_steps) == (after > before)
    step, seconds, lr = trace[-1]
    assert step == last.total_steps and 100.0 - after - 1e-6 <= seconds <= 100.0  # the plan ends at the budget
    assert lr < 0.02  # the cosine's tail was trained: the last step's lr is near its end (0)
    lrs = [lr for step, _, lr in trace if step > first.planned_at]  # the plan's warmup replaced the provisional one
    assert max(abs(b - a) for a, b in itertools.pairwise(lrs)) <= 1 / first.warmup_steps + 1e-9  # the warmup's slope: no jump
    assert max(lrs) == pytest.approx(1.0, abs=0.02)


def test_a_steady_rate_is_not_replanned_and_a_resumed_budget_measures_afresh():
    budget = TimeBudget(100.0, steps_per_epoch=10, warmup_fraction=0.1, measure_steps=10)
    trace, plans = run_to_the_budget(budget, lambda step: 0.1)
    assert len(plans) == 2 and plans[1].checked and budget.plan.replans == 0  # the plan, then its first check
    assert trace[-1][0] == budget.plan.total_steps
    resumed = TimeBudget(100.0, steps_per_epoch=10, measure_steps=10, plan=plans[0])
    assert [resumed.observe(s, 50.0 + s) for s in (500, 503, 509)] == [None, None, None]  # a window from step 500
    assert resumed.observe(510, 60.0).replanned_at == 510  # 1 step/s where the plan needs about 10


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
    summary = first.fit()  # stopped by max_time_s (2 s of the 6 s budget) after planning
    plan = first.budget.plan
    assert plan is not None and first.state.opt_step < plan.total_steps
    cut = summary["schedule_cut"]  # the summary and the last log line say the schedule was cut, where, at which lr
    assert (cut["step"], cut["planned_steps"]) == (first.state.opt_step, plan.total_steps) and cut["lr"] > 0
    assert (
        f"the time limit stopped the run at step {cut['step']} of its {plan.total_steps} planned steps, with lr "
        in ((tmp_path / "log.txt").read_text().splitlines()[-1])
    )
    # the user's own command again (no plan in it), without the early stop
    resumed = Pretrainer(tiny_config("train.budget=6s", "train.budget_measure_steps=4"), tmp_path, resume="auto")
    assert resumed.budget.plan == plan
    assert (resumed.total_steps, resumed.warmup_steps) == (plan.total_steps, plan.warmup_steps)
    assert resumed.fit()["schedule_cut"] is None
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


def test_a_replan_reaches_the_console_only_when_it_moves_the_plan_by_more_than_a_tenth():
    first = BudgetPlan(budget_s=120.0, steps_per_s=15.0, measured_steps=20, planned_at=21, planned_at_s=1.5,
                       total_steps=1800, warmup_steps=180, steps_per_epoch=15)  # fmt: skip
    assert worth_showing(first, None)  # the first plan always
    assert not worth_showing(first.model_copy(update={"total_steps": 1900}), 1800)  # +5.6 %: log.txt only
    assert worth_showing(first.model_copy(update={"total_steps": 2000}), 1800)  # +11 %
    assert worth_showing(first.model_copy(update={"total_steps": 1600}), 1800)  # -11 %
