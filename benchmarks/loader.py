"""Loader benchmark: ImageFolder + PIL, shards + PIL and shards + decoding on the training device.

E.g. ``python benchmarks/loader.py --workers 1,2 --output bench/loader`` (CPU), or on a GPU machine
``python benchmarks/loader.py --device cuda --workers 1,2,4,8 --images 4096``.
"""

import sys

from dmjd.bench.loader import main

if __name__ == "__main__":
    sys.exit(main())
