"""Steps/s of the cpu preset's VARIANT (DMJD or MAE, default DMJD) for 35 s in a fresh process under
a thread-setting MODE: none, torch (torch.set_num_threads(2)), tpc (threadpool_limits(2)) or limit
(dmjd.bench.efficiency.thread_limit(2) as of commit 8059d01, i.e. both)."""
import contextlib
import json
import sys
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from dmjd.bench.efficiency import thread_limit
from dmjd.bench.presets import DMJD, MAE, PRESETS
from dmjd.config import load_config
from dmjd.engine import Pretrainer

mode, variant = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "DMJD")
cfg = load_config(None, [*PRESETS["cpu"].base, *(MAE if variant == "MAE" else DMJD).overrides, "train.seed=0",
                         "optim.epochs=2", "optim.warmup_epochs=0.2", "train.max_time_s=35", "train.log_interval=5"])
ctx = contextlib.nullcontext()
if mode == "torch":
    torch.set_num_threads(2)
elif mode == "tpc":
    ctx = threadpool_limits(limits=2)
elif mode == "limit":
    ctx = thread_limit(2)
out = Path("/tmp/sc/run")
with ctx:
    Pretrainer(cfg, out, overwrite=True).fit()
records = [r for r in map(json.loads, open(out / "metrics.jsonl")) if r.get("kind") == "train"]
a, b = records[1], records[-1]
print(mode, *(sys.argv[2:3]), "steps/s", round((b["step"] - a["step"]) / (b["time"] - a["time"]), 3), flush=True)
