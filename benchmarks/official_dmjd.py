"""dmjd against the official DMJD code (a mx-mark/DMJD checkout you supply): same weights, images, masks.

E.g. ``python benchmarks/official_dmjd.py --dmjd-dir ~/src/DMJD --batch 2 --output bench/official-dmjd``.
"""

import sys

from dmjd.bench.official_dmjd import main

if __name__ == "__main__":
    sys.exit(main())
