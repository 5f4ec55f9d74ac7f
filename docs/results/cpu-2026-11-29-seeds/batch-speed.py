"""Steps/s and images/s of a `cpu`-preset variant under config overrides, 25 s of training each
(`dmjd.bench.efficiency.calibrate`). Usage: python batch-speed.py DMJD '' 'optim.batch_size=64'"""
import sys
import tempfile
from pathlib import Path
from dmjd.bench.efficiency import calibrate
from dmjd.bench.environment import thread_limit
from dmjd.bench.presets import PRESETS, SECTIONS
from dmjd.config import load_config
V = {v.label: v for s in SECTIONS.values() for v in s.variants}
b = PRESETS["cpu"]
cases = [l.split() for l in sys.argv[2:]]
for ov in cases:
    cfg = load_config(None, [*b.base, *V[sys.argv[1]].overrides, *ov])
    with thread_limit(2), tempfile.TemporaryDirectory() as t:
        c = calibrate(cfg, 25.0, Path(t) / "r")
    bs = cfg.optim.batch_size
    print(f"{sys.argv[1]} {ov}: {c.steps_per_s:.2f} steps/s, {c.steps_per_s*bs:.0f} img/s, epoch {c.steps_per_epoch/c.steps_per_s:.0f} s", flush=True)
