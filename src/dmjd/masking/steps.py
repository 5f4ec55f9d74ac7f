"""The masks of each training micro-step: a pure function of the run's seed and the step, so a run
resumed mid-epoch, or run on another number of processes with the same global batch, draws the same
masks. Each process takes its slice of the global batch's masks."""

from __future__ import annotations

import torch

from dmjd.masking.disjoint import DisjointMasking
from dmjd.masking.views import MaskedViews


def step_seed(seed: int, micro_step: int) -> int:
    """The seed of one micro-step's masks (independent of process count and resumption)."""
    return (seed * 2_654_435_761 + micro_step * 40_503 + 12_345) % (2**63 - 1)


class StepMasks:
    """``step_masks(micro_step, batch_size)``: this process's views of one micro-step.

    Args:
        masking: draws the K views of the global batch.
        seed: the run's seed.
        device: where the masks are drawn (a generator of that device).
        rank, world_size: this process's slice of the global batch.
        with_order: also carry the draw's visible-token order (the official code's pairing).
    """

    def __init__(
        self,
        masking: DisjointMasking,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        with_order: bool = False,
    ) -> None:
        self.masking, self.seed, self.device = masking, seed, device
        self.rank, self.world_size, self.with_order = rank, world_size, with_order
        self.generator = torch.Generator(device=device)

    def __call__(self, micro_step: int, batch_size: int) -> MaskedViews:
        self.generator.manual_seed(step_seed(self.seed, micro_step))
        mask, drawn = self.masking.sample(batch_size * self.world_size, self.generator, self.device, self.with_order)
        rows = slice(self.rank * batch_size, (self.rank + 1) * batch_size)
        return MaskedViews.from_mask(mask[rows], self.masking.num_masked, None if drawn is None else drawn[rows])
