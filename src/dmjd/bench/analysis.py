"""Convergence-curve arithmetic of the efficiency benchmark.

A curve is a run's evaluation points (training seconds or effective training epochs on x, an
accuracy on y), joined by straight lines. From curves we read the accuracy at equal wall time or
equal ETE, the time a run needs to reach a given accuracy, the speed-up over a baseline (the
paper's Tables II/III quantity) and the mean and spread of any of these over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import t as t_dist


@dataclass(frozen=True)
class Curve:
    """Evaluation points of one run, in training order.

    Attributes:
        x: training seconds or ETE, non-decreasing, ``[P]``.
        y: accuracy at each point, ``[P]``.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or not self.x:
            raise ValueError(f"a curve needs as many x as y values and at least one point, got {len(self.x)}/{len(self.y)}")
        if any(b < a for a, b in zip(self.x, self.x[1:])):
            raise ValueError(f"curve x values must be non-decreasing, got {self.x}")

    @classmethod
    def from_points(cls, points: Sequence[dict[str, float]], x: str, y: str) -> Curve:
        """The curve of ``y`` against ``x`` from evaluation records holding both keys."""
        pairs = [(float(p[x]), float(p[y])) for p in points if p.get(x) is not None and p.get(y) is not None]
        return cls(tuple(a for a, _ in pairs), tuple(b for _, b in pairs))

    @property
    def end(self) -> float:
        """The last x (where the run stopped)."""
        return self.x[-1]

    @property
    def final(self) -> float:
        """The last y (the accuracy of the finished run)."""
        return self.y[-1]


def value_at(curve: Curve, x: float) -> float:
    """The curve's accuracy at ``x`` by linear interpolation.

    Beyond the last point the final accuracy holds: the run has stopped and its final model is
    what exists at any later time. Before the first point the first accuracy holds.
    """
    return float(np.interp(x, curve.x, curve.y))


def first_reach(curve: Curve, level: float) -> float | None:
    """The smallest x at which the piecewise-linear curve reaches ``level``; None if it never does."""
    ys = np.asarray(curve.y)
    hits = np.flatnonzero(ys >= level)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return curve.x[0]
    x0, x1, y0, y1 = curve.x[i - 1], curve.x[i], ys[i - 1], ys[i]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


@dataclass(frozen=True)
class SpeedUp:
    """How fast a variant reaches the baseline's final accuracy.

    Attributes:
        level: the baseline's final accuracy.
        baseline_x: x (seconds or ETE) at which the baseline first reached ``level``.
        variant_x: x at which the variant first reached it, None if it never did.
        ratio: ``baseline_x / variant_x``; None if the variant never reached the level, or
            already had it at x = 0 (before any training, where the ratio is undefined).
    """

    level: float
    baseline_x: float
    variant_x: float | None
    ratio: float | None


def speedup(baseline: Curve, variant: Curve) -> SpeedUp:
    """Speed-up = (x the baseline needs to reach its final accuracy) / (x the variant needs)."""
    level = baseline.final
    base_x = first_reach(baseline, level)
    assert base_x is not None  # a curve always reaches its own final value
    var_x = first_reach(variant, level)
    ratio = base_x / var_x if var_x is not None and var_x > 0 else None
    return SpeedUp(level, base_x, var_x, ratio)


def common_end(curves: Sequence[Curve]) -> float:
    """The largest x every curve reached (e.g. the equal-ETE point of a comparison)."""
    return min(c.end for c in curves)


@dataclass(frozen=True)
class Stats:
    """Mean and spread of one quantity over seeds.

    Attributes:
        mean: mean of the defined values (None when there is none).
        std: sample standard deviation (ddof 1), None with fewer than two values.
        min, max: range of the defined values.
        n: number of defined values; total: number of seeds (undefined ones are e.g. a speed-up
            of a variant that never reached the level).
        ci95: half-width of the 95 % confidence interval of the mean (Student's t with n - 1
            degrees of freedom), None with fewer than two values (and for ratios, whose interval
            is not symmetric).
        ci_low, ci_high: bounds of that 95 % interval, None with fewer than two values.
    """

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    n: int
    total: int
    ci95: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


def _defined(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def _t_half_width(values: np.ndarray) -> float | None:
    """Half-width of the Student's t 95 % interval of the mean of ``values`` (None for n < 2)."""
    if values.size < 2:
        return None
    return float(t_dist.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))


def aggregate(values: Sequence[float | None]) -> Stats:
    """Mean, sample std, range and t interval of the values that are not None (or infinite)."""
    defined = _defined(values)
    if defined.size == 0:
        return Stats(None, None, None, None, 0, len(values))
    mean = float(defined.mean())
    std = float(defined.std(ddof=1)) if defined.size > 1 else None
    ci = _t_half_width(defined)
    low, high = (mean - ci, mean + ci) if ci is not None else (None, None)
    return Stats(mean, std, float(defined.min()), float(defined.max()), int(defined.size), len(values), ci, low, high)


def aggregate_ratios(values: Sequence[float | None]) -> Stats:
    """Geometric mean and 95 % interval of positive ratios (speed-ups), taken in log space.

    A speed-up is a ratio: 2x and 0.5x are equally far from 1x, and an interval on the plain mean
    can reach below zero with few seeds. The t interval of the mean log-ratio, mapped back with
    ``exp``, is asymmetric and always positive. ``std`` is the sample std of the ratios themselves.
    """
    defined = _defined(values)
    defined = defined[defined > 0]
    if defined.size == 0:
        return Stats(None, None, None, None, 0, len(values))
    logs = np.log(defined)
    mean_log = float(logs.mean())
    half = _t_half_width(logs)
    low, high = (math.exp(mean_log - half), math.exp(mean_log + half)) if half is not None else (None, None)
    std = float(defined.std(ddof=1)) if defined.size > 1 else None
    return Stats(
        math.exp(mean_log), std, float(defined.min()), float(defined.max()), int(defined.size), len(values),
        None, low, high,
    )  # fmt: skip


def mean_curve(curves: Sequence[Curve], grid: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over curves (e.g. seeds) of their interpolated values on ``grid`` ``[G]``."""
    values = np.asarray([[value_at(c, x) for x in grid] for c in curves])
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def no_spread(std: float | None) -> bool:
    """Whether seeds agree exactly (a std of float round-off: 0.3631 - 0.3292 and 0.3600 - 0.3262 are
    the same 11 of 325 images); their t-interval has zero width and resolves nothing."""
    return std is not None and std < 1e-9


def difference_verdict(diff: Mapping[str, Any]) -> str:
    """A seed-paired difference (``Stats`` as a dict) in words: which way it goes and whether its
    95 % CI excludes 0. Seeds that all differ by exactly the same amount (accuracies on a few hundred
    test images are quantised) give a zero-width interval, which resolves nothing."""
    if diff["mean"] is None:
        return "no paired seeds"
    if diff["ci_low"] is None:
        return "one seed, no CI"
    direction = "higher" if diff["mean"] > 0 else "lower" if diff["mean"] < 0 else "level"
    if no_spread(diff.get("std")):
        return f"{direction} by the same amount on all {diff['n']} seeds (no spread: no CI)"
    if diff["ci_low"] > 0 or diff["ci_high"] < 0:
        return f"{direction} (resolved)"
    return f"{direction}, not resolved"


def paired_difference(worse: Mapping[str, float | None], better: Mapping[str, float | None], scale: float = 1.0) -> Stats:
    """Mean and 95 % CI of ``scale * (better - worse)`` over the seeds both have (seed-paired)."""
    return aggregate([scale * (b - w) for s, w in worse.items() if w is not None and (b := better.get(s)) is not None])


# ------------------------------------------------------------------------------ saved results
def seed_curves(results: dict[str, Any], keys: dict[str, str], x: str, metric: str) -> dict[str, Curve]:
    """Per seed, the curve of ``metric`` against ``x`` of the runs named in ``keys`` (seed -> run key)
    in a benchmark's results."""
    out = {}
    for seed, key in keys.items():
        run = results["runs"].get(key)
        if run is not None:
            curve_points = [p for p in run["points"] if p.get(metric) is not None]
            if curve_points:
                out[seed] = Curve.from_points(curve_points, x, metric)
    return out


def runs_info(results: dict[str, Any], variants: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant of a comparison: epochs, ETE, times, views, prediction rate, peak lr, errors and the
    end-of-run fine-tuning accuracy of its runs, over seeds."""
    info = {}
    for v in variants:
        rs = [results["runs"][k] for k in v["runs"].values() if k in results["runs"]]
        info[v["label"]] = {
            "epochs": asdict(aggregate([r["summary"].get("epochs") for r in rs])),
            "scheduled_epochs": asdict(aggregate([r["epochs"] for r in rs])),
            "ete": asdict(aggregate([r["points"][-1]["ete"] for r in rs])),
            "time_s": asdict(aggregate([r["summary"].get("time_s") for r in rs])),
            "eval_s": asdict(aggregate([sum(p.get("eval_s", 0.0) for p in r["points"]) for r in rs])),
            "num_views": rs[0]["num_views"] if rs else None,
            "pred_ratio": rs[0]["pred_ratio"] if rs else None,
            "peak_lr": rs[0]["peak_lr"] if rs else None,
            "errors": [r["error"] for r in rs if r.get("error")],
            "finetune": asdict(aggregate([r.get("finetune_top1") for r in rs])),
            "finetune_by_seed": {
                s: results["runs"][k].get("finetune_top1") for s, k in v["runs"].items() if k in results["runs"]
            },
        }
    return info
