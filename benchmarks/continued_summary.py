"""The continued pre-training evidence in one table (issue 31): the two `dmjd compare` folders of
``benchmarks/continued_study.sh`` (``--init`` and from scratch) read together.

Prints, on the target's test split: the starting encoder, continued MAE and DMJD, MAE and DMJD from
scratch, the untrained encoders and raw pixels (linear probe, kNN, fine-tuning), then seed-paired
differences with their 95 % t-interval (``dmjd.bench.analysis.paired_difference``).

    python benchmarks/continued_summary.py OUT/continued OUT/scratch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dmjd.bench.analysis import Stats, aggregate, paired_difference

METRICS = {"linear": "linprobe_top1", "kNN": "knn_top1"}
MEASURES = (*METRICS, "fine-tune")


def per_seed(results: dict[str, Any], label: str, measure: str) -> dict[str, float | None]:
    """``{seed: accuracy in %}`` of ``label``'s runs at their end."""
    out: dict[str, float | None] = {}
    for run in results["runs"].values():
        if run["label"] == label:
            value = run.get("finetune_top1") if measure == "fine-tune" else run["summary"]["evaluation"][METRICS[measure]]
            out[str(run["seed"])] = None if value is None else 100 * value
    return out


def start_scores(results: dict[str, Any]) -> dict[str, float]:
    """The encoder before training of a comparison, linear, kNN and fine-tune in %: the mean over its
    runs (one encoder for every run with --init; from scratch, each seed's own initialisation)."""
    befores = [run["summary"]["evaluation_untrained"] for run in results["runs"].values()]
    key = "start_finetune_top1" if "start_finetune_top1" in results["baselines"] else "untrained_finetune_top1"
    levels = {m: 100 * sum(b[METRICS[m]] for b in befores) / len(befores) for m in METRICS}
    return levels | {"fine-tune": 100 * results["baselines"][key]}


def level_row(levels: dict[str, float]) -> dict[str, str]:
    """One level per measure, '-' where there is none."""
    return {m: f"{levels[m]:.1f}" if m in levels else "-" for m in MEASURES}


def seeds_row(results: dict[str, Any], label: str) -> dict[str, str]:
    """``label``'s mean ± std over seeds, per measure."""
    return {m: cell(aggregate(list(per_seed(results, label, m).values()))) for m in MEASURES}


def cell(stats: Stats, signed: bool = False) -> str:
    """``mean ± std`` (a level) or ``+mean [low, high]`` (a difference)."""
    if stats.mean is None:
        return "-"
    if signed:
        ci = f" [{stats.ci_low:+.1f}, {stats.ci_high:+.1f}]" if stats.ci_low is not None else ""
        return f"{stats.mean:+.1f}{ci}"
    return f"{stats.mean:.1f}" + (f" ± {stats.std:.1f}" if stats.std is not None else "")


def main() -> None:
    """Print the two tables as Markdown."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("continued", type=Path, help="the dmjd compare --init folder")
    p.add_argument("scratch", type=Path, help="the dmjd compare folder without --init")
    args = p.parse_args()
    cont, scratch = (json.loads((f / "results.json").read_text()) for f in (args.continued, args.scratch))
    start, b = start_scores(cont), cont["baselines"]
    untrained = {m: 100 * b["untrained"][METRICS[m]] for m in METRICS} | {"fine-tune": 100 * b["untrained_finetune_top1"]}
    rows = {
        "starting encoder (no training on the target)": level_row(start),
        **{f"continued {label}": seeds_row(cont, label) for label in ("MAE", "DMJD")},
        **{f"{label} from scratch": seeds_row(scratch, label) for label in ("MAE", "DMJD")},
        "untrained, the source's architecture": level_row(untrained),
        "untrained, the from-scratch architecture (mean of the seeds)": level_row(start_scores(scratch)),
        "raw pixels": level_row({m: 100 * b["raw_pixels"][METRICS[m]] for m in METRICS}),
    }
    print("| encoder | " + " | ".join(MEASURES) + " |\n|---|" + "---|" * len(MEASURES))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[m] for m in MEASURES) + " |")
    pairs = {
        "continued MAE - starting encoder": (cont, "MAE", None, None),
        "continued DMJD - starting encoder": (cont, "DMJD", None, None),
        "continued DMJD - continued MAE": (cont, "DMJD", cont, "MAE"),
        "continued MAE - MAE from scratch": (cont, "MAE", scratch, "MAE"),
        "continued DMJD - DMJD from scratch": (cont, "DMJD", scratch, "DMJD"),
    }
    print("\n| seed-paired difference (points) | " + " | ".join(MEASURES) + " |\n|---|" + "---|" * len(MEASURES))
    for name, (results, label, other, other_label) in pairs.items():
        cells = []
        for m in MEASURES:
            better = per_seed(results, label, m)
            worse = dict.fromkeys(better, start[m]) if other is None else per_seed(other, str(other_label), m)
            cells.append(cell(paired_difference(worse, better), signed=True))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
