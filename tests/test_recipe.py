"""The auto recipe (``dmjd.recipe``): its choices for a table of data shapes, budgets and devices."""

from __future__ import annotations

import pytest

from dmjd.cli import main
from dmjd.config import ConfigError
from dmjd.data.profile import DataProfile
from dmjd.recipe import VIT_LADDER, VitSize, auto_config, choose_recipe, patch_size, step_flops

CPU = 1e10  # sustained step FLOP/s of a small CPU
GPU = 1e14


def profile(n: int, h: int, w: int, channels: int = 3, labelled: bool = True) -> DataProfile:
    return DataProfile("imagefolder", "/data", n, (h, w), min(h, w), max(h, w), channels, labelled,
                       10 if labelled else 0, False, "classes" if labelled else "flat", 100)  # fmt: skip


def chosen(choices) -> dict:
    return {c.key: c.value for c in choices}


@pytest.mark.parametrize(
    ("data", "budget_s", "flops", "img", "patch", "grid"),
    [
        (profile(60_000, 28, 28, 1), 1200, CPU, 32, 4, 8),  # Fashion-MNIST size
        (profile(5_000, 64, 64), 120, CPU, 64, 8, 8),
        (profile(20_000, 96, 96), 1800, CPU, 96, 8, 12),
        (profile(20_000, 128, 140), 1800, CPU, 128, 16, 8),
        (profile(100_000, 375, 500), 7200, GPU, 224, 16, 14),  # photos
        (profile(3_000, 40, 36), 600, CPU, 32, 4, 8),
    ],
)
def test_image_size_and_patch_give_an_8_to_14_token_grid(data, budget_s, flops, img, patch, grid):
    c = chosen(choose_recipe(data, budget_s, "dmjd", flops))
    assert (c["model.img_size"], c["model.patch_size"]) == (img, patch)
    assert img // patch == grid and 8 <= grid <= 14
    assert c["model.in_chans"] == data.channels
    assert c["target.cell_size"] == patch // 2 and patch % c["target.cell_size"] == 0


def test_the_model_grows_with_the_budget_and_the_device():
    data = profile(20_000, 64, 64)
    widths = [chosen(choose_recipe(data, b, "dmjd", CPU))["model.embed_dim"] for b in (60, 1200, 7200, 86_400)]
    assert widths == sorted(widths) and widths[0] == VIT_LADDER[0].width and widths[-1] > widths[0]
    assert chosen(choose_recipe(data, 1200, "dmjd", GPU))["model.embed_dim"] == VIT_LADDER[-1].width


def test_the_chosen_model_trains_the_minimum_epochs_unless_it_is_the_smallest():
    data = profile(50_000, 64, 64)
    c = chosen(choose_recipe(data, 1800, "dmjd", CPU))
    size = next(s for s in VIT_LADDER if s.width == c["model.embed_dim"])
    step_s = step_flops(size, 64, 8, 3, "dmjd", c["optim.batch_size"]) / CPU
    epochs = 1800 / step_s / (50_000 // c["optim.batch_size"])
    assert size is VIT_LADDER[0] or epochs >= 5
    bigger = VIT_LADDER[VIT_LADDER.index(size) + 1]
    step_s = step_flops(bigger, 64, 8, 3, "dmjd", c["optim.batch_size"]) / CPU
    assert 1800 / step_s / (50_000 // c["optim.batch_size"]) < 5  # the next rung would not


def test_methods_set_their_masking_target_and_branches():
    data = profile(5_000, 32, 32)
    dmjd = chosen(choose_recipe(data, 600, "dmjd", CPU))
    assert (dmjd["masking.pattern"], dmjd["masking.num_views"], dmjd["masking.pred_ratio"]) == ("block", 2, 1.0)
    assert dmjd["masking.mask_ratio"] == 10 / 16  # 0.6 in whole 2x2 cells of the 8x8 grid
    assert (dmjd["target.name"], dmjd["model.vdb"]) == ("hog", True)
    mae = chosen(choose_recipe(data, 600, "mae", CPU))
    assert (mae["masking.pattern"], mae["masking.mask_ratio"], mae["masking.num_views"]) == ("random", 0.75, 1)
    assert (mae["target.name"], mae["target.norm_pix"], mae["model.vdb"]) == ("pixels", True, False)


def test_batch_leaves_at_least_8_steps_per_epoch_and_tiny_sets_are_refused():
    assert chosen(choose_recipe(profile(200, 32, 32), 60, "dmjd", CPU))["optim.batch_size"] == 16
    assert chosen(choose_recipe(profile(60_000, 32, 32), 60, "dmjd", CPU))["optim.batch_size"] == 128
    assert chosen(choose_recipe(profile(60_000, 32, 32), 60, "dmjd", GPU, "cuda"))["optim.batch_size"] == 256
    assert chosen(choose_recipe(profile(40, 32, 32), 60, "dmjd", CPU))["optim.batch_size"] == 8  # the smallest
    with pytest.raises(ConfigError, match="fewer than a batch"):
        choose_recipe(profile(15, 32, 32), 60, "dmjd", CPU)
    with pytest.raises(ConfigError, match=r"recipe.method"):
        choose_recipe(profile(2000, 32, 32), 60, "simclr", CPU)


def test_monitor_only_on_labelled_data():
    assert "monitor.interval" in chosen(choose_recipe(profile(2000, 32, 32), 600, "dmjd", CPU))
    assert "monitor.interval" not in chosen(choose_recipe(profile(2000, 32, 32, labelled=False), 600, "dmjd", CPU))


def test_patch_size_ladder():
    assert [patch_size(s) for s in (32, 64, 96, 128, 224)] == [4, 8, 8, 16, 16]


def test_step_flops_scale_with_batch_and_views():
    size = VitSize(64, 4, 4, 4e-3)
    assert step_flops(size, 32, 4, 1, "dmjd", 256) == pytest.approx(2 * step_flops(size, 32, 4, 1, "dmjd", 128))
    assert step_flops(size, 32, 4, 1, "dmjd", 128) > step_flops(size, 32, 4, 1, "mae", 128)


def test_auto_config_keeps_the_users_keys_and_records_the_reasons():
    cfg, choices, _ = auto_config(["model.embed_dim=96", "model.num_heads=4", "train.budget=3m"], device="cpu", flops_per_s=CPU)
    assert cfg.model.embed_dim == 96 and "model.embed_dim" not in {c.key for c in choices}
    assert cfg.data.name == "embedded" and cfg.model.img_size == 32 and cfg.model.in_chans == 1
    assert cfg.recipe.method == "dmjd" and cfg.recipe.reasons["model.patch_size"].startswith("4: ")
    assert cfg.train.budget == "3m"
    mae = auto_config(["recipe.method=mae"], device="cpu", flops_per_s=CPU).config
    assert mae.masking.num_views == 1 and mae.train.budget == "20m"


def test_resume_auto_with_nothing_to_resume_or_start_is_refused(tmp_path, capsys):
    assert main(["pretrain", "--output-dir", str(tmp_path / "run"), "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0] and "data.path" in err[0]
    assert not (tmp_path / "run").exists()
