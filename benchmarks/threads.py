"""Thread benchmark: steps/s with 1 torch thread against N on a small CPU, in alternating runs.

E.g. ``OMP_NUM_THREADS= python benchmarks/threads.py --threads 1,2 --rounds 5 --output bench/threads``
(alone on the machine: other processes make the figures meaningless).
"""

import sys

from dmjd.bench.threads import main

if __name__ == "__main__":
    sys.exit(main())
