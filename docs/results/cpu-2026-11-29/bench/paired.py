"""Seed-paired DMJD - MAE differences of the final evaluations and fine-tuning (t-interval, 95 %)."""
import json, sys
from statistics import mean, stdev
from scipy.stats import t
r = json.load(open(sys.argv[1]))
runs = {(v["label"], v["seed"]): v for v in r["runs"].values()}
seeds = sorted({s for _, s in runs})
for name, get in (("kNN", lambda v: v["summary"]["evaluation"]["knn_top1"]),
                  ("linear", lambda v: v["summary"]["evaluation"]["linprobe_top1"]),
                  ("fine-tune", lambda v: v["finetune_top1"])):
    d = [100 * (get(runs["DMJD", s]) - get(runs["MAE", s])) for s in seeds]
    h = t.ppf(0.975, len(d) - 1) * stdev(d) / len(d) ** 0.5
    print(f"{name}: per seed {', '.join(f'{x:+.2f}' for x in d)}; mean {mean(d):+.2f} [{mean(d) - h:+.2f}, {mean(d) + h:+.2f}]")
