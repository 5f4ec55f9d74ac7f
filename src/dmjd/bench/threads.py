"""Thread benchmark: steps/s of a small pre-training config with 1 torch thread against N, in
alternating runs.

On a small or shared CPU, more intra-op threads can train slower than one (threads spin-wait for
each other and for the cores other processes hold). One round times each thread count once, in
an order that alternates from round to round, so that a machine that gets busier or quieter
meanwhile shifts both counts alike; the spread over the rounds says how far one figure can be
trusted. Each timing is the throughput benchmark's engine step (``dmjd.bench.throughput.measure``)
on a fixed synthetic batch, inside ``thread_limit``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from dmjd.bench.environment import git_commit, machine_info, now_utc, publish, thread_limit
from dmjd.bench.throughput import SETTINGS, measure, throughput_config


def alternating_rounds(
    setting: str, config: str, batch: int, threads: Sequence[int], rounds: int, steps: int, warmup: int
) -> dict[int, list[float]]:
    """Steps/s of ``config`` at each thread count, ``rounds`` times, the order reversed every other round.

    Returns:
        ``{threads: [steps/s of round 1, round 2, ...]}``.
    """
    cfg = throughput_config(setting, config, batch, "cpu")
    rates: dict[int, list[float]] = {n: [] for n in threads}
    for r in range(rounds):
        for n in threads if r % 2 == 0 else reversed(threads):
            with thread_limit(n):
                result = measure(cfg, steps, warmup, count_flops=False)
            rates[n].append(1000.0 / result["step_ms"])
    return rates


def summarise(rates: dict[int, list[float]]) -> dict[str, Any]:
    """Median, min and max steps/s per thread count, and each count's median over one thread's."""
    base = statistics.median(rates[min(rates)])
    return {
        str(n): {
            "median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v,
            "vs_fewest": statistics.median(v) / base,
        }
        for n, v in rates.items()
    }  # fmt: skip


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: thread count, median / min / max steps/s, ratio to the fewest."""
    lines = ["| torch threads | steps/s median | min | max | median vs fewest threads |", "|---|---|---|---|---|"]
    for n, s in summary.items():
        lines.append(f"| {n} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['vs_fewest']:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/threads.py [--threads 1,2] [--rounds 5] [--steps 10]`` (run it alone on the machine)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=lambda v: [int(n) for n in v.split(",")], default=[1, os.cpu_count() or 1],
                        help="comma-separated thread counts (default 1 and the core count)")  # fmt: skip
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu-small")
    parser.add_argument("--config", default="DMJD", help="a configuration of the setting (default DMJD)")
    parser.add_argument("--batch", type=int, default=64, help="unique images per step (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--output", default=None, help="write results to OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    threads = sorted(set(args.threads))
    rates = alternating_rounds(args.setting, args.config, args.batch, threads, args.rounds, args.steps, args.warmup)
    summary = summarise(rates)
    result = {
        "benchmark": "threads", "date": now_utc(), "commit": git_commit(), "machine": machine_info(torch.device("cpu")),
        "setting": args.setting, "config": args.config, "batch": args.batch, "rounds": args.rounds,
        "steps": args.steps, "warmup": args.warmup, "steps_per_s": summary,
    }  # fmt: skip
    publish(result, format_table(summary), args.output)
    return 0
