"""Benchmarks: training efficiency of DM / JD against MAE at equal wall time (issue 4), the step
profile, training throughput with model FLOPs utilisation (issue 6), and ``dmjd compare``: the same
benchmark on the user's own data (``dmjd.bench.compare``).

Heavy modules (training, plotting) load when a benchmark runs; ``register_bench_command`` only
adds the ``dmjd bench`` parser.
"""

from dmjd.bench.commands import register_bench_command, register_compare_command

__all__ = ["register_bench_command", "register_compare_command"]
