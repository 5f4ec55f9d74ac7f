"""Loader benchmark: images/s of dmjd's training data paths on the same JPEGs, in total and per busy core.

Three paths, each built by ``dmjd.engine.training_data`` exactly as ``dmjd pretrain`` builds it
(RandomResizedCrop to ``--img-size`` + flip, 3 channels) and timed as the training loop consumes it:

* ``imagefolder``: an ImageFolder read file by file, decoded and augmented by PIL in DataLoader workers;
* ``shards``: the same JPEGs as WebDataset shards (``dmjd shard`` copies them byte for byte),
  decoded and augmented by PIL in the workers;
* ``shards-device``: the same shards, the workers only reading bytes and the batches decoded
  (``torchvision.io.decode_jpeg``) and augmented on ``--device`` (on a CPU that is the main process).

Cores: the machine's busy CPU time over the timed window (``/proc/stat``: all processes, so run it
on an otherwise idle machine), from which images/s per busy core and the cores needed to feed
``--feed-rate`` images/s (default: dmjd's ViT-B/16 DMJD step on one H200, docs/results.md) follow.
The JPEGs are ``--src`` (an ImageFolder of yours) or, by default, generated: smooth colour fields
with noise at ImageNet's typical size (500 x 375, about 100-150 KB at quality 90).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dmjd.bench.environment import device_name, git_commit, machine_info, now_utc, publish
from dmjd.config import Config, load_config
from dmjd.data import build_dataset, endless
from dmjd.data.shard_writer import keep_image, write_shards
from dmjd.engine.training_data import training_data

PATHS = ("imagefolder", "shards", "shards-device")
H200_DMJD_VIT_B = 1622.0  # images/s, dmjd-vit-b eager bf16 on one H200 (docs/results.md, 2026-11-28)


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (500, 375), classes: int = 10, seed: int = 0) -> Path:
    """Write ``n`` photo-like JPEGs (a smooth random colour field plus pixel noise, quality 90) into
    ``folder/class<k>/``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(n):
        coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        out = folder / f"class{i % classes}"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / f"{i:06d}.jpg", quality=90)
    return folder


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process), from ``/proc/stat``."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / 100.0  # USER_HZ is 100 on Linux


def path_overrides(path: str, folder: Path, pattern: str, workers: int, batch: int, img_size: int) -> list[str]:
    """Config overrides of one data path on the benchmark's data (the rest is the ``demo`` preset)."""
    if path == "imagefolder":
        data = ["data.name=imagefolder", f"data.path={folder}", "data.pipeline=loader"]
    else:
        data = ["data.name=webdataset", f"data.path={pattern}",
                f"data.pipeline={'device' if path == 'shards-device' else 'loader'}"]  # fmt: skip
    return [*data, "data.limit=null", "data.split_holdout=false", f"data.num_workers={workers}", f"optim.batch_size={batch}",
            f"model.img_size={img_size}", "model.patch_size=16", "model.in_chans=3", "masking.pattern=random",
            "masking.block_size=1"]  # fmt: skip


def measure(cfg: Config, device: torch.device, batches: int, warmup: int) -> dict[str, float]:
    """Images/s and busy cores while ``batches`` batches of ``cfg``'s training data are consumed after
    ``warmup`` (worker start-up)."""
    data = training_data(cfg, device)
    stream = endless(data.batches)
    for _ in range(warmup):
        next(stream)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    cpu0, t0 = busy_cpu_seconds(), time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(stream))
    sync()
    elapsed, cpu = time.perf_counter() - t0, busy_cpu_seconds() - cpu0
    stream.close()
    cores = max(cpu / elapsed, 1e-9)
    return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed, "busy_cores": cores,
            "images_per_s_per_core": images / elapsed / cores}  # fmt: skip


def run_loader_benchmark(
    src: Path | None,
    n_images: int,
    workers: Sequence[int],
    paths: Sequence[str],
    batch: int,
    batches: int,
    warmup: int,
    img_size: int,
    device: str,
    feed_rate: float,
    shard_size: int = 256,
    rounds: int = 2,
) -> dict[str, Any]:
    """Measure every path x worker count ``rounds`` times on the same JPEGs (generated into a
    temporary folder when ``src`` is None) and the cores each path needs to feed ``feed_rate`` images/s."""
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = src or make_jpegs(Path(tmp) / "images" / "train", n_images)
        manifest = write_shards(build_dataset("imagefolder", "all", keep_image, str(folder)), Path(tmp) / "shards",
                                shard_size)  # fmt: skip
        pattern = f"{tmp}/shards/train-{{000000..{len(manifest['shards']) - 1:06d}}}.tar"
        sizes = [p.stat().st_size for p in Path(folder).rglob("*.jp*g")]
        results: dict[str, Any] = {
            "date": now_utc(), "commit": git_commit(), "device": device_name(dev), "machine": machine_info(dev),
            "images": manifest["samples"], "shards": len(manifest["shards"]), "mean_jpeg_kb": float(np.mean(sizes)) / 1e3,
            "source": str(src) if src else "generated 500 x 375 JPEGs", "batch_size": batch, "batches": batches,
            "warmup": warmup, "img_size": img_size, "feed_rate": feed_rate,
        }  # fmt: skip
        rounds_of: dict[str, list[dict[str, float]]] = {}
        for r in range(rounds):  # rounds interleave the paths, so that a slow spell of the machine hits all
            for path in paths:
                for w in workers:
                    cfg = load_config("demo", path_overrides(path, folder, pattern, w, batch, img_size))
                    m = measure(cfg, dev, batches, warmup)
                    rounds_of.setdefault(f"{path} [{w} workers]", []).append(m)
                    print(f"loader: round {r + 1} {path} [{w} workers] {m['images_per_s']:.0f} images/s on "
                          f"{m['busy_cores']:.2f} busy cores", flush=True)  # fmt: skip
        results["rounds"] = rounds
        results["runs"] = {label: _summary(runs, feed_rate) for label, runs in rounds_of.items()}
    return results


def _summary(runs: list[dict[str, float]], feed_rate: float) -> dict[str, Any]:
    """Means over rounds (with the range of images/s), and the cores needed to feed ``feed_rate``."""
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    rates = [r["images_per_s"] for r in runs]
    return {**mean, "images_per_s_min": min(rates), "images_per_s_max": max(rates), "rounds": runs,
            "cores_to_feed": math.ceil(feed_rate / mean["images_per_s_per_core"])}  # fmt: skip


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of the measurements."""
    lines = [
        f"Loader throughput on {results['device']} ({results['machine']['cpu_count']} CPU cores): "
        f"{results['images']} JPEGs ({results['source']}, mean {results['mean_jpeg_kb']:.0f} KB, "
        f"{results['shards']} shards), RandomResizedCrop to {results['img_size']} px + flip, batch "
        f"{results['batch_size']}, {results['batches']} timed batches after {results['warmup']}; mean over "
        f"{results['rounds']} interleaved rounds (images/s range in brackets)",
        f"Command: `{results.get('command', '')}`; date (UTC) {results['date']}; commit `{results['commit']}`",
        "",
        f"| path [workers] | images/s | busy cores | images/s per core | cores to feed {results['feed_rate']:.0f} images/s |",
        "|---|---|---|---|---|",
    ]
    for label, r in results["runs"].items():
        lines.append(f"| {label} | {r['images_per_s']:.0f} [{r['images_per_s_min']:.0f}, {r['images_per_s_max']:.0f}] | "
                     f"{r['busy_cores']:.2f} | {r['images_per_s_per_core']:.0f} | {r['cores_to_feed']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/loader.py [--src IMAGEFOLDER] [--workers 1,2] [--device cuda]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--src", type=Path, default=None, help="an ImageFolder of JPEGs (default: generated ones)")
    parser.add_argument("--images", type=int, default=1024, help="JPEGs to generate (default 1024)")
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                        help="comma-separated DataLoader worker counts (default 1,2)")  # fmt: skip
    parser.add_argument("--paths", type=lambda v: v.split(","), default=list(PATHS),
                        help=f"comma-separated, from {', '.join(PATHS)}")  # fmt: skip
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches (default 12)")
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing (default 3)")
    parser.add_argument("--img-size", type=int, default=224, help="crop side, a multiple of 16 (default 224)")
    parser.add_argument("--device", default=default_device, help=f"training device (default {default_device})")
    parser.add_argument("--feed-rate", type=float, default=H200_DMJD_VIT_B,
                        help="images/s to feed (default: ViT-B/16 DMJD on one H200, 1622)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (default 2)")
    parser.add_argument("--output", default=None, help="write results to OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    if unknown := [p for p in args.paths if p not in PATHS]:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    results = run_loader_benchmark(args.src, args.images, args.workers, args.paths, args.batch, args.batches,
                                   args.warmup, args.img_size, args.device, args.feed_rate,
                                   rounds=args.rounds)  # fmt: skip
    results["command"] = shlex.join(sys.argv if argv is None else ["loader", *argv])
    publish(results, format_table(results), args.output)
    return 0
