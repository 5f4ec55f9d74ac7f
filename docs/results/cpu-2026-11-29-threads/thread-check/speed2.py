import sys, json, contextlib, torch
from pathlib import Path
from threadpoolctl import threadpool_limits
from dmjd.bench.efficiency import thread_limit
from dmjd.bench.presets import PRESETS, DMJD, MAE
from dmjd.config import load_config
from dmjd.engine import Pretrainer
cfg = load_config(None, [*PRESETS["cpu"].base, *(MAE if sys.argv[2] == "MAE" else DMJD).overrides, "train.seed=0", "optim.epochs=2", "optim.warmup_epochs=0.2",
                         "train.max_time_s=35", "train.log_interval=5"])
mode = sys.argv[1]
if mode == "torch":
    torch.set_num_threads(2); ctx = contextlib.nullcontext()
elif mode == "tpc":
    ctx = threadpool_limits(limits=2)
elif mode == "limit":
    ctx = thread_limit(2)
else:
    ctx = contextlib.nullcontext()
out = Path("/tmp/sc/run")
with ctx:
    Pretrainer(cfg, out, overwrite=True).fit()
rs = [json.loads(l) for l in open(out / "metrics.jsonl")]
rs = [r for r in rs if r.get("kind") == "train"]
a, b = rs[1], rs[-1]
print(mode, sys.argv[2], "steps/s", round((b["step"] - a["step"]) / (b["time"] - a["time"]), 3), flush=True)
