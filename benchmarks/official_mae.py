"""dmjd's MAE mode against the official MAE code (a facebookresearch/mae checkout you supply).

E.g. ``python benchmarks/official_mae.py --mae-dir ~/src/mae --setting vit-b16 --device cuda --output bench/official``.
"""

import sys

from dmjd.bench.official_mae import main

if __name__ == "__main__":
    sys.exit(main())
