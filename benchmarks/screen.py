"""Settings screen: one benchmark configuration, a fixed number of epochs, the probes after each.

E.g. ``python benchmarks/screen.py --testbed cpu --variant MAE --epochs 3 data.limit=20000 optim.blr=4e-3``
"""

import sys

from dmjd.bench.screen import main

if __name__ == "__main__":
    sys.exit(main())
