"""Settings screen: one configuration of a benchmark testbed trained for a fixed number of epochs and
evaluated after every epoch with the benchmark's probes (kNN + linear probe on its labelled splits).

It answers "does this setting learn better features per image seen?" before a benchmark spends its
wall-clock budget on it. Its figures are accuracy per epoch, not per second: a busy machine slows a
screen down but does not change its numbers (fixed seed). Use ``data.limit`` to make epochs short.

E.g. ``python benchmarks/screen.py --testbed cpu --variant MAE --epochs 3 data.limit=20000 optim.blr=4e-3``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmjd.bench.efficiency import build_monitor, train_run
from dmjd.bench.environment import thread_limit
from dmjd.bench.evaluators import PeriodicEvaluator
from dmjd.bench.testbeds import SECTIONS, TESTBEDS, add_testbed_argument
from dmjd.config import load_config

VARIANTS = {v.label: v for section in SECTIONS.values() for v in section.variants}


def screen(
    testbed: str, variant: str, epochs: int, overrides: Sequence[str] = (), seed: int = 0, warmup_fraction: float = 0.1
) -> dict[str, Any]:
    """Train ``variant`` of ``testbed`` (+ ``overrides``) for ``epochs`` and evaluate every epoch.

    Returns:
        ``{"overrides": [...], "points": [{"epoch", "ete", "time", "knn_top1", "linprobe_top1", ...}],
        "summary": {...}}``; the first point is the untrained encoder.

    Raises:
        KeyError: unknown testbed or variant label.
    """
    bench = TESTBEDS[testbed]
    all_overrides = [*bench.base, *VARIANTS[variant].overrides, f"train.seed={seed}", f"optim.epochs={epochs}",
                     f"optim.warmup_epochs={warmup_fraction * epochs:g}", *overrides]  # fmt: skip
    with thread_limit(bench.threads), tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, all_overrides)
        monitor = build_monitor(cfg, bench.eval_images, bench.pool)
        record = train_run(cfg, Path(tmp) / "run", PeriodicEvaluator(monitor))
    return {"overrides": list(overrides), "points": record["points"], "summary": record["summary"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_testbed_argument(parser, "the benchmark testbed whose model, data and probes it uses (default cpu)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="MAE", help="a configuration of the benchmark")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides on top of the variant")
    args = parser.parse_args(argv)
    result = screen(args.testbed, args.variant, args.epochs, args.overrides, args.seed)
    for p in result["points"]:
        print(f"screen: epoch {p['epoch']} (ETE {p['ete']:.2f}, {p['time']:.0f} s): kNN {100 * p['knn_top1']:.2f} %, "
              f"linear {100 * p['linprobe_top1']:.2f} %", flush=True)  # fmt: skip
    print(json.dumps(result, default=str))
    return 0
