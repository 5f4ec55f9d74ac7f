"""dmjd.masking.StepMasks: each micro-step's masks are a pure function of the run's seed and the step,
and a process's slice of them is the same on any number of processes with the same global batch."""

from __future__ import annotations

import pytest
import torch

from dmjd.masking import DisjointMasking, MaskedViews, StepMasks, step_seed

CPU = torch.device("cpu")


def _masking() -> DisjointMasking:
    return DisjointMasking((4, 4), mask_ratio=0.5, num_views=2, pred_ratio=0.75)


def _fields(views: MaskedViews) -> tuple:
    return views.mask, views.ids_keep, views.ids_masked, views.ids_restore


def _equal(a: MaskedViews, b: MaskedViews) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_fields(a), _fields(b)))


def test_the_same_seed_and_step_give_the_same_masks_whatever_came_before():
    masks = StepMasks(_masking(), seed=3, device=CPU)
    first = masks(5, 4)
    masks(6, 4)
    torch.manual_seed(123)  # the global generator plays no part
    assert _equal(masks(5, 4), first)
    assert _equal(StepMasks(_masking(), seed=3, device=CPU)(5, 4), first)


def test_other_steps_and_other_seeds_give_other_masks():
    masks = StepMasks(_masking(), seed=3, device=CPU)
    assert not torch.equal(masks(5, 8).mask, masks(6, 8).mask)
    assert not torch.equal(masks(5, 8).mask, StepMasks(_masking(), seed=4, device=CPU)(5, 8).mask)
    assert len({step_seed(3, step) for step in range(1000)}) == 1000


@pytest.mark.parametrize("with_order", [False, True])
def test_two_processes_slices_are_one_process_batch(with_order):
    one = StepMasks(_masking(), seed=7, device=CPU, with_order=with_order)(9, 6)
    ranks = [StepMasks(_masking(), seed=7, device=CPU, rank=r, world_size=2, with_order=with_order)(9, 3) for r in (0, 1)]
    assert [views.mask.shape for views in ranks] == [torch.Size([3, 2, 16])] * 2
    for i, field in enumerate(_fields(one)):
        assert torch.equal(torch.cat([_fields(views)[i] for views in ranks]), field)
    if with_order:
        assert torch.equal(torch.cat([views.ids_keep_drawn for views in ranks]), one.ids_keep_drawn)
    else:
        assert one.ids_keep_drawn is None and ranks[0].ids_keep_drawn is None
