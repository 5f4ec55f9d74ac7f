"""Running sums of the logged loss terms, kept on the device so that a step needs no host sync."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dmjd.engine.distributed import DistInfo, all_reduce_mean


class LossSums:
    """Sums of ``loss``, ``loss_mim``, ``loss_vis`` and the prediction rate over steps, and of the
    skipped (non-finite) steps; ``count`` steps added."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(4, device=device)
        self.skipped = torch.zeros((), device=device)
        self.count = 0

    def add(self, losses: dict[str, Tensor], pred_ratio: Tensor) -> None:
        zero = losses["loss"].new_zeros(())
        terms = [losses["loss"], losses.get("loss_mim", zero), losses.get("loss_vis", zero), pred_ratio.to(zero)]
        self.values += torch.stack([t.detach().float() for t in terms])
        self.count += 1

    def stacked(self) -> Tensor:
        return torch.cat([self.values, self.skipped.view(1)])

    def means(self, dist: DistInfo) -> dict[str, float]:
        """Per-step means averaged over processes (one host sync); ``skipped_steps`` is the total."""
        values = all_reduce_mean(self.stacked(), dist).tolist()
        n = max(self.count, 1)
        return {
            "loss": values[0] / n,
            "loss_mim": values[1] / n,
            "loss_vis": values[2] / n,
            "pred_ratio": values[3] / n,
            "skipped_steps": values[4] * dist.world_size,
        }

    def plain(self) -> dict[str, Any]:
        """The sums as plain numbers, for a checkpoint."""
        return {"values": self.values.tolist(), "skipped": float(self.skipped), "count": self.count}

    @classmethod
    def from_plain(cls, state: dict[str, Any], device: torch.device) -> LossSums:
        """Sums restored from ``plain``."""
        sums = cls(device)
        sums.values += torch.tensor(state["values"], device=device)
        sums.skipped += float(state["skipped"])
        sums.count = int(state["count"])
        return sums

    def average_over(self, dist: DistInfo) -> None:
        """Replace this process's sums by their mean over processes (what a record reports: records
        average again, and the mean is linear, so later records are unchanged)."""
        averaged = all_reduce_mean(self.stacked(), dist)
        self.values, self.skipped = averaged[:4].clone(), averaged[4].clone()
