"""A fixed-ETE benchmark read as the paper reads Tables II-III: accuracy at equal effective training
epochs, and the ETE each configuration needs to reach another's final accuracy.

Every run of a fixed-ETE benchmark (``run_efficiency(..., ete=E)``) trains exactly E ETE and is
evaluated on the same ETE grid, so no figure here depends on time. Each of the section's paper
orderings (``worse``, ``better``) and each variant against the baseline is a *pair*: the seed-paired
difference at E (linear probe, kNN, fine-tuning) and the ETE speed-up, (ETE at which ``worse``
first reached its final accuracy) / (ETE at which ``better`` first reached it), per seed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dmjd.bench.analysis import (
    Stats,
    aggregate,
    aggregate_ratios,
    paired_difference,
    runs_info,
    seed_curves,
    speedup,
    value_at,
)
from dmjd.bench.evaluators import ete_grid


def ratio_verdict(ratio: dict[str, Any], reached: int, seeds: int) -> str:
    """An ETE speed-up in words: resolved when its 95 % CI excludes 1x."""
    if ratio["mean"] is None:
        return f"never reached ({reached}/{seeds} seeds)" if not reached else "undefined (level held before training)"
    if ratio["ci_low"] is None:
        return "one seed, no CI"
    if ratio["ci_low"] > 1:
        return "faster (resolved)"
    if ratio["ci_high"] < 1:
        return "slower (resolved)"
    return "not resolved (CI spans 1x)"


def pairs(results: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """The pairs a comparison reads: the section's paper orderings, then each variant against the
    baseline that no ordering covers."""
    comparison = results["comparisons"][name]
    ordered = [(str(w), str(b)) for w, b in comparison.get("section", {}).get("expected_pairs", ())]
    base = comparison["baseline"]
    extra = [(base, v["label"]) for v in comparison["variants"] if v["label"] != base]
    return list(dict.fromkeys([*ordered, *extra]))


def _pair(
    results: dict[str, Any], keys: dict[str, dict[str, str]], worse: str, better: str, metric: str, ete: float
) -> dict[str, Any]:
    """One pair in one metric: the paired difference at ``ete`` (points) and the ETE speed-up."""
    w, b = (seed_curves(results, keys[label], "ete", metric) for label in (worse, better))
    seeds = [s for s in w if s in b]
    speeds = {s: speedup(w[s], b[s]) for s in seeds}
    diff: Stats = paired_difference({s: value_at(w[s], ete) for s in seeds}, {s: value_at(b[s], ete) for s in seeds}, 100.0)
    return {
        "diff_at_end": asdict(diff),
        "ete_speedup": asdict(aggregate_ratios([speeds[s].ratio for s in seeds])),
        "level": {s: speeds[s].level for s in seeds},
        "worse_ete_to_level": {s: speeds[s].baseline_x for s in seeds},
        "better_ete_to_level": {s: speeds[s].variant_x for s in seeds},
        "reached": sum(speeds[s].variant_x is not None for s in seeds),
        "seeds": len(seeds),
    }


def analyse_equal_ete(results: dict[str, Any], name: str) -> dict[str, Any]:
    """A fixed-ETE comparison: per variant and metric the accuracy before training, at each grid ETE
    and at the end (``at_end``, = ``final``), and per pair the differences and ETE speed-ups.

    Returns:
        ``{"equal_ete", "grid", "metrics": {metric: {label: {...}}}, "pairs": [{"worse", "better",
        metric: {...}, "finetune": Stats}], "runs": {label: {...}}}``.
    """
    ete = float(results["ete"])
    comparison = results["comparisons"][name]
    keys = {v["label"]: v["runs"] for v in comparison["variants"]}
    grid = (0.0, *ete_grid(ete))
    metrics: dict[str, dict[str, Any]] = {}
    for metric in results["metrics"]:
        table = {}
        for label, runs in keys.items():
            curves = seed_curves(results, runs, "ete", metric)
            table[label] = {
                "start": asdict(aggregate([c.y[0] for c in curves.values()])),
                "at_end": asdict(aggregate([value_at(c, ete) for c in curves.values()])),
                "at_end_by_seed": {s: value_at(c, ete) for s, c in curves.items()},
                "at_grid": {f"{x:g}": asdict(aggregate([value_at(c, x) for c in curves.values()])) for x in grid},
                "seeds": len(curves),
            }
        metrics[metric] = table
    info = runs_info(results, comparison["variants"])
    read_pairs = []
    for worse, better in pairs(results, name):
        entry: dict[str, Any] = {"worse": worse, "better": better}
        entry.update({metric: _pair(results, keys, worse, better, metric, ete) for metric in results["metrics"]})
        fw, fb = info[worse]["finetune_by_seed"], info[better]["finetune_by_seed"]
        entry["finetune"] = asdict(paired_difference(fw, fb, 100.0))
        read_pairs.append(entry)
    return {"equal_ete": ete, "grid": list(grid), "metrics": metrics, "pairs": read_pairs, "runs": info}
