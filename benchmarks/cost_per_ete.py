"""Cost per ETE: views/s of MAE, +DM and DMJD in memory and through the JPEG loader, against the cost
model views/s = min(compute, K x loader images/s per core x cores), and DM's predicted speed-up on a GPU.

E.g. ``python benchmarks/cost_per_ete.py --output OUT/cost`` on an otherwise idle machine.
"""

import sys

from dmjd.bench.cost import main

if __name__ == "__main__":
    sys.exit(main())
