"""dmjd.engine.loss_sums.LossSums in one process: what ``add`` sums, the means it reports, and the
plain form a mid-epoch checkpoint carries."""

from __future__ import annotations

import json

import pytest
import torch

from dmjd.engine.distributed import DistInfo
from dmjd.engine.loss_sums import LossSums
from dmjd.io.checkpoint import load_checkpoint, save_checkpoint

CPU = torch.device("cpu")
ALONE = DistInfo()


def _two_steps() -> LossSums:
    """Two steps, the second without the branch losses (a method with one loss), and one skipped step."""
    sums = LossSums(CPU)
    sums.add({"loss": torch.tensor(2.0), "loss_mim": torch.tensor(1.5), "loss_vis": torch.tensor(0.5)}, torch.tensor(0.75))
    sums.add({"loss": torch.tensor(4.0)}, torch.tensor(1.0, dtype=torch.float64))
    sums.skipped += 1
    return sums


def test_means_are_per_step_and_skipped_steps_a_total():
    assert _two_steps().means(ALONE) == {
        "loss": 3.0,
        "loss_mim": 0.75,
        "loss_vis": 0.25,
        "pred_ratio": 0.875,
        "skipped_steps": 1.0,
    }


def test_no_steps_mean_zero_not_a_division_by_zero():
    assert LossSums(CPU).means(ALONE) == dict.fromkeys(("loss", "loss_mim", "loss_vis", "pred_ratio", "skipped_steps"), 0.0)


def test_add_keeps_no_graph():
    weight = torch.tensor(3.0, requires_grad=True)
    sums = LossSums(CPU)
    sums.add({"loss": weight * 2}, torch.tensor(0.5))
    assert not sums.values.requires_grad and sums.values.dtype == torch.float32
    assert sums.values.tolist() == [6.0, 0.0, 0.0, 0.5]


def test_plain_form_is_json_survives_a_checkpoint_and_continues_the_sums(tmp_path):
    sums = _two_steps()
    plain = sums.plain()
    assert plain == {"values": [6.0, 1.5, 0.5, 1.75], "skipped": 1.0, "count": 2}
    assert json.loads(json.dumps(plain)) == plain
    saved = load_checkpoint(save_checkpoint({"model": {}, "run_state": {"epoch_sums": plain}}, tmp_path / "c.pth"))
    back = LossSums.from_plain(saved["run_state"]["epoch_sums"], CPU)
    assert back.means(ALONE) == sums.means(ALONE) and back.count == 2
    for each in (sums, back):
        each.add({"loss": torch.tensor(6.0)}, torch.tensor(1.0))
    assert back.plain() == sums.plain() == {"values": [12.0, 1.5, 0.5, 2.75], "skipped": 1.0, "count": 3}


def test_averaging_over_one_process_changes_nothing():
    sums = _two_steps()
    before = sums.plain()
    sums.average_over(ALONE)
    assert sums.plain() == before
    assert sums.means(ALONE)["loss"] == pytest.approx(3.0)
