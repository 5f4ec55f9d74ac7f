"""Efficiency benchmark: MAE vs +DM vs +JD vs DMJD pre-trained side by side at equal wall time.

Same as ``dmjd bench``; e.g. ``python benchmarks/efficiency.py --testbed cpu --output-dir bench-cpu``.
"""

import argparse
import sys

from dmjd.bench import register_bench_command


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/efficiency.py")
    register_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
