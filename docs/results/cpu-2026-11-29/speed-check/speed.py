import sys, json, shutil, contextlib
from pathlib import Path
from dmjd.bench.efficiency import thread_limit
from dmjd.bench.presets import PRESETS, DMJD
from dmjd.config import load_config
from dmjd.engine import Pretrainer
cfg = load_config(None, [*PRESETS["cpu"].base, *DMJD.overrides, "train.seed=0", "optim.epochs=2", "optim.warmup_epochs=0.2",
                         "train.max_time_s=40", "train.log_interval=5"])
ctx = thread_limit(2) if sys.argv[1] == "limit" else contextlib.nullcontext()
out = Path("/tmp/exp/speed2")
with ctx:
    Pretrainer(cfg, out, overwrite=True).fit()
rs = [json.loads(l) for l in open(out / "metrics.jsonl")]
rs = [r for r in rs if r.get("kind") == "train"]
a, b = rs[1], rs[-1]
print(sys.argv[1], "steps/s", round((b["step"] - a["step"]) / (b["time"] - a["time"]), 3))
