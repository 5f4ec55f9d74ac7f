"""Throughput benchmark: images/s, views/s and model FLOPs utilisation of MAE and DMJD.

E.g. ``python benchmarks/throughput.py --device cuda --batch 256 --steps 30 --output bench/throughput``.
"""

import sys

from dmjd.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
