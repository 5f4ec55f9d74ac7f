"""Feature check: the benchmark's probes on raw pixels, HOG descriptors and a checkpoint's tokens pooled several ways.

E.g. ``python benchmarks/feature_check.py --checkpoint runs/mae/checkpoint-last.pth``
"""

import sys

from dmjd.bench.feature_check import main

if __name__ == "__main__":
    sys.exit(main())
