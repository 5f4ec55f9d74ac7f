"""dmjd.engine.resume on its own: what a checkpoint holds and how it is restored, which checkpoint a
run resumes from, what a resumed run may change, and the saved budget plan."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from dmjd.config import ConfigError
from dmjd.config.loading import dotted_items
from dmjd.config.schema import BudgetPlan
from dmjd.engine.resume import (
    RESUMABLE_KEYS,
    Restored,
    RunState,
    check_resumable,
    keep_global_batch,
    load_pretraining_checkpoint,
    resolve_resume,
    restore_rng_state,
    restore_run,
    resume_config,
    rng_state,
    run_changes,
    split_global_batch,
    training_checkpoint,
    with_saved_plan,
)
from dmjd.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

PLAN = BudgetPlan(
    budget_s=6.0, steps_per_s=5.0, measured_steps=4, planned_at=5, planned_at_s=1.0, total_steps=25, warmup_steps=3,
    steps_per_epoch=10,
)  # fmt: skip


def _draws() -> tuple:
    """One draw of each global generator: Python, NumPy (incl. a cached Gaussian) and torch."""
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def _trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A small model and an AdamW that has taken one step (so it has moments to restore)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    model(torch.randn(5, 4)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """One optimizer step on a fixed batch; the weights after it."""
    model(torch.ones(5, 4)).square().mean().backward()
    optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _saved(tmp_path, checkpoint: dict, name: str = "c.pth") -> dict:
    """``checkpoint`` through a real save and a weights-only load, as a resume reads it."""
    return load_checkpoint(save_checkpoint(checkpoint, tmp_path / name))


# ------------------------------------------------------------------------------ RNG state
def test_rng_state_survives_a_weights_only_checkpoint_and_every_generator_continues_identically(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()  # leave NumPy with a cached Gaussian, so its full state matters
    saved = _saved(tmp_path, {"model": {}, "rng": rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    restore_rng_state(saved["rng"])
    assert _draws() == expected


# --------------------------------------------------------------- training checkpoint round trip
def test_training_checkpoint_round_trip_restores_weights_optimizer_position_and_log_state(tmp_path):
    cfg = tiny_config()
    model, optimizer = _trained(0)
    state = RunState(epoch=1, epoch_step=4, opt_step=9, nonfinite_total=2, bad_images=1, elapsed=3.5)
    sums = {"values": [1.0, 2.0, 3.0, 4.0], "skipped": 1.0, "count": 4}
    checkpoint = training_checkpoint(model, optimizer, None, state, {"epoch_sums": sums, "log_bytes": 123}, cfg, 2)
    after_save = torch.rand(4)  # what the global generator draws next at the save
    saved = _saved(tmp_path, checkpoint)
    assert (saved["epoch"], saved["step"], saved["world_size"], saved["scaler"]) == (1, 9, 2, None)
    assert saved["config"] == cfg.model_dump(mode="json")

    other, other_optimizer = _trained(1)  # other weights and moments
    restored = restore_run(saved, other, other_optimizer, None, accum_iter=1)
    assert restored == Restored(state, sums, 123)
    for (key, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(torch.rand(4), after_save)  # the RNG state came back too
    assert other_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for a, b in zip(_step(model, optimizer), _step(other, other_optimizer)):  # same moments: same next step
        assert torch.equal(a, b)


def test_restore_run_without_log_state_and_with_a_scaler(tmp_path):
    model, optimizer = _trained(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    saved = _saved(tmp_path, training_checkpoint(model, optimizer, scaler, RunState(epoch=2), {}, tiny_config(), 1))
    fresh = torch.amp.GradScaler("cpu")
    restored = restore_run(saved, *_trained(1), fresh, accum_iter=1)
    assert (restored.state, restored.epoch_sums, restored.log_bytes) == (RunState(epoch=2), None, None)
    assert fresh.get_scale() == 1024.0


def _mismatch_error(tmp_path) -> CheckpointError:
    """What restoring a checkpoint of one model into a wider one raises."""
    model, optimizer = _trained(0)
    saved = _saved(tmp_path, training_checkpoint(model, optimizer, None, RunState(), {}, tiny_config(), 1))
    wider = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    with pytest.raises(CheckpointError) as err:
        restore_run(saved, wider, torch.optim.AdamW(wider.parameters()), None, accum_iter=1)
    return err.value


def test_weights_that_do_not_fit_the_model_are_a_checkpoint_error_naming_the_mismatch(tmp_path):
    message = str(_mismatch_error(tmp_path))
    assert message.startswith("checkpoint does not match the configured model: ")
    assert "size mismatch for 0.weight" in message


def test_the_mismatch_error_is_one_line(tmp_path):
    assert "\n" not in str(_mismatch_error(tmp_path))


@pytest.mark.parametrize(("epoch_step", "accum_iter", "fits"), [(3, 2, False), (4, 2, True), (5, 5, True), (7, 4, False)])
def test_a_checkpoint_inside_an_accumulation_cycle_is_refused(tmp_path, epoch_step, accum_iter, fits):
    model, optimizer = _trained(0)
    cfg = tiny_config(f"optim.accum_iter={accum_iter}")
    checkpoint = training_checkpoint(model, optimizer, None, RunState(epoch_step=epoch_step), {}, cfg, 1)
    saved = _saved(tmp_path, checkpoint)
    if fits:
        assert restore_run(saved, *_trained(1), None, accum_iter).state.epoch_step == epoch_step
    else:
        with pytest.raises(CheckpointError, match="inside a gradient-accumulation cycle"):
            restore_run(saved, *_trained(1), None, accum_iter)


@pytest.mark.parametrize(("saved_accum", "accum_iter", "expected"), [(2, 4, 12), (4, 2, 6), (3, 1, 3)])
def test_a_position_inside_the_epoch_is_converted_to_another_accumulation(tmp_path, saved_accum, accum_iter, expected):
    model, optimizer = _trained(0)
    cfg = tiny_config(f"optim.accum_iter={saved_accum}")
    state = RunState(epoch_step=3 * saved_accum, opt_step=3)  # 3 optimizer steps into the epoch
    saved = _saved(tmp_path, training_checkpoint(model, optimizer, None, state, {}, cfg, 1))
    assert restore_run(saved, *_trained(1), None, accum_iter).state.epoch_step == expected


# ------------------------------------------------------------------------ which checkpoint
def test_resolve_resume_none_auto_and_a_missing_file(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(run, None) is None
    assert resolve_resume(run, "auto") is None  # no folder yet: a fresh start
    run.mkdir()
    assert resolve_resume(run, "auto") is None  # a folder without checkpoint: a fresh start
    for epoch in (3, 12):
        save_checkpoint({"model": {}}, run / f"checkpoint-{epoch}.pth")
    assert resolve_resume(run, "auto") == run / "checkpoint-12.pth"
    save_checkpoint({"model": {}}, run / "checkpoint-last.pth")
    assert resolve_resume(run, "auto") == run / "checkpoint-last.pth"
    assert resolve_resume(tmp_path / "elsewhere", run / "checkpoint-3.pth") == run / "checkpoint-3.pth"
    missing = run / "checkpoint-99.pth"
    with pytest.raises(CheckpointError, match=rf"--resume {missing}: no such checkpoint file"):
        resolve_resume(run, missing)


def test_only_pretraining_checkpoints_are_resumed_the_others_refused_with_the_reason(tmp_path):
    full = {"model": {}, "optimizer": {}, "run_state": {}, "config": {}}
    assert load_pretraining_checkpoint(save_checkpoint(full, tmp_path / "pre.pth"))["run_state"] == {}
    finetune = save_checkpoint({**full, "kind": "finetune"}, tmp_path / "ft.pth")
    with pytest.raises(
        CheckpointError, match=r"ft\.pth is not a pre-training checkpoint \(a fine-tuning checkpoint\); expected"
    ):
        load_pretraining_checkpoint(finetune)
    weights = save_checkpoint({"model": {}, "config": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"\(no optimizer, run_state entry\); expected a dmjd pre-training checkpoint"):
        load_pretraining_checkpoint(weights)


# ---------------------------------------------------------------- what a resumed run may change
def test_every_resumable_key_is_a_config_key():
    """A misspelt key in RESUMABLE_KEYS would silently refuse a harmless change."""
    assert not RESUMABLE_KEYS - dotted_items(tiny_config().model_dump(mode="json")).keys()


def test_run_changes_ignores_how_a_run_runs_and_lists_what_it_computes():
    saved = tiny_config().model_dump(mode="json")
    harmless = tiny_config(
        "data.num_workers=2", "train.device=cpu", "train.log_interval=7", "train.max_time_s=10", "train.keep_checkpoints=9",
        "train.max_nonfinite_steps=3", "monitor.interval=3", "monitor.max_images=200",
    )  # fmt: skip
    harmless.recipe.method = "dmjd"
    assert run_changes(saved, harmless) == []
    changed = tiny_config("model.depth=3", "optim.blr=0.002", "train.log_interval=7")
    assert run_changes(saved, changed) == ["model.depth: 2 -> 3", "optim.blr: 0.001 -> 0.002"]
    assert run_changes(saved, tiny_config("optim.batch_size=32")) == ["optim.batch_size: 64 -> 32"]


def test_the_per_process_batch_may_change_with_the_process_count_when_the_global_batch_stays():
    saved = tiny_config("optim.batch_size=64").model_dump(mode="json")
    assert run_changes(saved, tiny_config("optim.batch_size=32"), saved_world=2, world=4) == []
    assert run_changes(saved, tiny_config("optim.batch_size=128"), saved_world=2, world=1) == []
    assert run_changes(saved, tiny_config("optim.batch_size=32", "optim.accum_iter=4"), saved_world=2, world=1) == []
    assert run_changes(saved, tiny_config("optim.batch_size=64"), saved_world=2, world=4) == [
        "optim.batch_size x optim.accum_iter x processes (the global batch): 128 -> 256 "
        "(optim.batch_size=32 optim.accum_iter=1 keeps it on 4 processes)"
    ]
    assert run_changes(saved, tiny_config("optim.batch_size=64"), saved_world=2, world=3) == [
        "optim.batch_size x optim.accum_iter x processes (the global batch): 128 -> 192 "
        "(no split of 128 over 3 processes exists; run on 1, 2, 4, 8, 16, 32, 64 processes)"
    ]


@pytest.mark.parametrize(
    ("global_batch", "accum_iter", "world", "split"),
    [(64, 1, 2, (32, 1)), (64, 2, 4, (8, 2)), (48, 4, 3, (4, 4)), (24, 5, 2, (2, 6)), (12, 1, 8, None), (6, 1, 6, (1, 1))],
)
def test_a_global_batch_is_split_keeping_the_accumulation_when_it_can(global_batch, accum_iter, world, split):
    assert split_global_batch(global_batch, accum_iter, world) == split
    if split is not None:
        assert split[0] * split[1] * world == global_batch


def test_a_resume_on_another_process_count_re_derives_the_per_process_batch_and_says_so():
    saved = tiny_config("optim.batch_size=32", "optim.accum_iter=2").model_dump(mode="json")  # x 2 processes = 128
    cfg = tiny_config("optim.batch_size=32", "optim.accum_iter=2")
    same, note = keep_global_batch(cfg, saved, saved_world=2, world=2)
    assert same is cfg and note is None
    one, note = keep_global_batch(cfg, saved, saved_world=2, world=1)
    assert (one.optim.batch_size, one.optim.accum_iter) == (64, 2) and (cfg.optim.batch_size, cfg.optim.accum_iter) == (32, 2)
    assert note == (
        "dmjd: resumed on 1 process instead of 2: optim.batch_size 32 -> 64, optim.accum_iter 2 -> 2; "
        "the global batch stays 128"
    )
    assert run_changes(saved, one, saved_world=2, world=1) == []
    eight, _ = keep_global_batch(cfg, saved, saved_world=2, world=8)
    assert (eight.optim.batch_size, eight.optim.accum_iter) == (8, 2)
    own = tiny_config("optim.batch_size=16", "optim.accum_iter=8")  # the user's own pair is kept (and checked later)
    assert keep_global_batch(own, saved, saved_world=2, world=1)[0] is own
    with pytest.raises(
        ConfigError, match=r"global batch of 128 images .*no split of 128 over 3 processes exists; run on 1, 2, 4"
    ):
        keep_global_batch(cfg, saved, saved_world=2, world=3)


def test_check_resumable_names_each_change_and_what_may_change(tmp_path):
    state = {"config": tiny_config().model_dump(mode="json"), "world_size": 1}
    check_resumable(state, tiny_config("train.device=cpu"), tmp_path / "c.pth")  # harmless: no error
    with pytest.raises(ConfigError) as err:
        check_resumable(state, tiny_config("model.depth=3", "masking.num_views=3"), tmp_path / "c.pth")
    message = str(err.value)
    assert message.startswith(
        f"resuming {tmp_path / 'c.pth'} with these settings would change the run: masking.num_views: 2 -> 3; "
        "model.depth: 2 -> 3. A resumed run may change only where and how it runs"
    )
    assert message.endswith("start a new run in another --output-dir instead") and "\n" not in message
    with pytest.raises(ConfigError, match=r"the global batch\): 64 -> 128"):
        check_resumable(state, tiny_config(), tmp_path / "c.pth", world=2)


# ------------------------------------------------------------------------- saved budget plan
def _budgeted(budget: str | None, plan: BudgetPlan | None = None):
    cfg = tiny_config(*([f"train.budget={budget}"] if budget else []))
    cfg.train.budget_plan = plan
    return cfg


def test_a_resumed_budgeted_run_follows_its_saved_plan():
    saved = _budgeted("6s", PLAN).model_dump(mode="json")
    cfg = _budgeted("6s")
    out = with_saved_plan(cfg, saved)
    assert out.train.budget_plan == PLAN
    assert (out.optim.epochs, out.optim.max_steps, out.optim.warmup_epochs) == (3, 25, 0.3)
    assert cfg.train.budget_plan is None and cfg.optim.max_steps is None  # the caller's config is left as it was


def test_the_saved_plan_is_not_followed_for_another_budget_an_own_plan_or_none_saved():
    saved = _budgeted("6s", PLAN).model_dump(mode="json")
    for cfg in (_budgeted("8s"), _budgeted(None), _budgeted("6s", PLAN.model_copy(update={"total_steps": 40}))):
        assert with_saved_plan(cfg, saved) is cfg
    cfg = _budgeted("6s")
    assert with_saved_plan(cfg, _budgeted("6s").model_dump(mode="json")) is cfg


def test_resume_config_is_the_saved_config_with_the_overrides_on_top(tmp_path):
    cfg = tiny_config("optim.epochs=3")
    model, optimizer = _trained(0)
    path = save_checkpoint(training_checkpoint(model, optimizer, None, RunState(), {}, cfg, 1), tmp_path / "c.pth")
    assert resume_config(path) == cfg
    resumed = resume_config(path, ["train.device=cpu", "optim.epochs=5"])
    assert (resumed.train.device, resumed.optim.epochs) == ("cpu", 5)
    assert resumed.model_copy(update={"train": cfg.train, "optim": cfg.optim}) == cfg  # nothing else changed


def test_a_run_saved_before_the_held_out_split_resumes_on_every_image(tmp_path):
    model, optimizer = _trained(0)
    state = training_checkpoint(model, optimizer, None, RunState(), {}, tiny_config(), 1)
    del state["config"]["data"]["split_holdout"]  # a checkpoint written before data.split_holdout existed
    path = save_checkpoint(state, tmp_path / "old.pth")
    assert resume_config(path).data.split_holdout is False  # what it trained on: all of its folder
    new = save_checkpoint(training_checkpoint(model, optimizer, None, RunState(), {}, tiny_config(), 1), tmp_path / "n.pth")
    assert resume_config(new).data.split_holdout is True
