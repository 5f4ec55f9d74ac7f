"""When a benchmark run is evaluated: spaced in optimizer steps (wall-clock races, ``train.budget``)
or at a fixed grid of effective training epochs (fixed-ETE studies), and the end-of-run fine-tuning.

Both evaluators are the trainer's ``on_epoch_end`` / ``on_step_end`` hooks (``Pretrainer.fit``): they
evaluate the untrained encoder before training, at their points, and the final encoder, at most
once per optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from dmjd.engine import Pretrainer
from dmjd.eval.monitor import OnlineMonitor

Monitor = Callable[[nn.Module], dict[str, float]]


def eval_interval(steps: int, points: int) -> int:
    """Optimizer steps between evaluations so that a run of ``steps`` has about ``points`` of them."""
    return max(1, math.ceil(steps / max(points, 1)))


def ete_grid(ete: float, linear_points: int = 8) -> tuple[float, ...]:
    """The ETE at which a fixed-ETE run is evaluated (besides 0, the untrained encoder): the powers of
    two below ``ete`` (the early curve, where accuracy moves fastest) and ``linear_points`` evenly
    spaced points up to ``ete`` (the late curve, where "ETE to reach an accuracy" is read)."""
    powers = [2.0**i for i in range(int(math.log2(ete)) + 1)] if ete >= 1 else []
    spaced = [ete * i / linear_points for i in range(1, linear_points + 1)]
    return tuple(sorted({round(x, 6) for x in (*powers, *spaced) if 0 < x <= ete}))


class PeriodicEvaluator:
    """Evaluations before training, every ``every_steps`` optimizer steps (mid-epoch if need be;
    None: at every epoch end instead) and when the run ends.

    Spacing them in steps gives a run of under two epochs (DMJD on a CPU) as many points on its
    curve as a longer one, so that its time to an accuracy is not read off a single evaluation.

    Args:
        monitor: ``monitor(encoder) -> {"knn_top1": ..., "linprobe_top1": ...}``.
        every_steps: optimizer steps between evaluations, or None for every epoch.
        points: instead of ``every_steps``, about this many evaluations over a budgeted run: the
            interval is set from its plan once it exists.
    """

    def __init__(self, monitor: Monitor, every_steps: int | None = None, points: int | None = None) -> None:
        self.monitor, self.every_steps, self.points = monitor, every_steps, points
        self._last_step: int | None = None

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """The monitor's accuracies plus ``eval_s``, the seconds the evaluation took."""
        start = time.perf_counter()
        result = dict(self.monitor(encoder))
        result["eval_s"] = time.perf_counter() - start
        return result

    def _at(self, trainer: Pretrainer, due: bool) -> dict[str, float] | None:
        step = trainer.state.opt_step
        if not due or step == self._last_step:
            return None
        self._last_step = step
        return self.evaluate(trainer.model.encoder)

    def on_epoch_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """Before training, at the end of the run and, without ``every_steps``, after every epoch."""
        due = trainer.state.opt_step == 0 or self.every_steps is None or trainer.time_up or trainer.finished
        return self._at(trainer, due)

    def on_step_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """Every ``every_steps`` optimizer steps; the last step is left to ``on_epoch_end``, which
        follows it, so that the final evaluation carries the epoch count of a finished epoch."""
        plan = trainer.budget.plan if trainer.budget is not None else None
        if self.points is not None and self.every_steps is None and plan is not None:
            self.every_steps = eval_interval(plan.total_steps, self.points)
        every = self.every_steps
        return self._at(trainer, every is not None and trainer.state.opt_step % every == 0 and not trainer.finished)


class EteEvaluator(PeriodicEvaluator):
    """Evaluations at a fixed grid of ETE (``ete_grid``): at the first optimizer step whose ETE
    reaches each grid point, before training and at the end. The grid depends on ETE alone, not on
    time, so a run evaluated on a busy machine gives the same points as on an idle one, and a
    resumed run continues with the first grid point after its position."""

    def __init__(self, monitor: Monitor, grid: Sequence[float]) -> None:
        super().__init__(monitor)
        self.grid = tuple(grid)

    def on_epoch_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """Before training and when the run has trained all its epochs."""
        return self._at(trainer, trainer.state.opt_step == 0 or trainer.finished)

    def on_step_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """When this step's ETE has just passed a grid point (the last step is ``on_epoch_end``'s)."""
        step_ete = trainer.masking.num_views / trainer.steps_per_epoch  # ETE one optimizer step adds
        ete = trainer.position()["ete"]
        crossed = any(ete - step_ete < point - 1e-9 <= ete for point in self.grid)
        return self._at(trainer, crossed and not trainer.finished)


class EndOfRunFinetune:
    """Fine-tunes a run's final encoder on the monitor's cached labelled splits
    (``dmjd.eval.quick_finetune``) and returns the test top-1; None when the splits are not cached."""

    def __init__(self, monitor: Monitor, epochs: int) -> None:
        self.monitor, self.epochs = monitor, epochs

    def __call__(self, encoder: nn.Module, amp_dtype: torch.dtype | None, seed: int) -> float | None:
        cache = getattr(self.monitor, "cache", None)
        if not self.epochs or cache is None:
            return None
        from dmjd.eval.quick_finetune import quick_finetune_top1

        train, test = cache
        monitor = cast(OnlineMonitor, self.monitor)  # the monitor that caches labelled splits
        return quick_finetune_top1(encoder, train, test, monitor.normalize, epochs=self.epochs,
                                   pool=monitor.pool, amp_dtype=amp_dtype, seed=seed)  # fmt: skip
