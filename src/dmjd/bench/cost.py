"""Cost per effective epoch: what one ETE costs on the path the data actually takes, measured and
modelled (issue 30, the paper's "Gh." column apart from its "ETE" column).

Disjoint masking trains K views per decoded and augmented image (the official code embeds each
image once and repeats it for the K views), so per view the loader's work is 1/K of MAE's while the
model's is the same. An ETE is the same number of views for every method, so at equal ETE the
wall-clock speed-up of DM is the ratio of the views/s the two methods sustain. The model:

    views/s = min(compute views/s, K x loader images/s per core x loader cores)

* compute views/s: the training step on images already in memory (``compute_rate``);
* loader images/s per core: decode + RandomResizedCrop + flip in DataLoader workers, per busy CPU
  core (``dmjd.bench.loader.measure``).

A run is *compute-bound* when the first term is the smaller (DM saves nothing: data held in memory,
or enough cores per accelerator) and *data-bound* otherwise (DM's saving approaches K).
"""

from __future__ import annotations

import gc
import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmjd.bench.environment import release_device_memory
from dmjd.bench.loader import measure as measure_loader
from dmjd.bench.profile import plain_steps
from dmjd.bench.throughput import synthetic_images
from dmjd.config import Config, load_config
from dmjd.data import endless
from dmjd.engine import Pretrainer
from dmjd.eval.monitor import available_cores


@dataclass(frozen=True)
class CostModel:
    """The two rates of one method on one machine, and the views/s they allow.

    Attributes:
        compute_views_per_s: training-step views/s on images already in memory.
        loader_images_per_core: images/s one busy CPU core decodes and augments for training.
        num_views: K, views trained per loaded image.
    """

    compute_views_per_s: float
    loader_images_per_core: float
    num_views: int

    def data_views_per_s(self, cores: float) -> float:
        """Views/s the loader can feed with ``cores`` busy cores: K views per loaded image."""
        return self.num_views * self.loader_images_per_core * cores

    def views_per_s(self, cores: float) -> float:
        """Views/s of training through the loader with ``cores`` loader cores: the slower of the two rates."""
        return min(self.compute_views_per_s, self.data_views_per_s(cores))

    def shared_cpu_views_per_s(self, cores: float, workers: int) -> float:
        """Views/s when the training step runs on the same CPU as ``workers`` loader workers (a CPU
        device, one training thread): the step keeps ``views/s / compute`` of a core busy, the
        workers share what is left, at most one core each."""
        k_load = self.num_views * self.loader_images_per_core
        shared = k_load * cores / (1.0 + k_load / self.compute_views_per_s)  # v = kL (cores - v / compute)
        return min(self.compute_views_per_s, k_load * workers, shared)

    def bound(self, cores: float) -> str:
        """``"data"`` when the loader limits the rate with ``cores`` cores, else ``"compute"``."""
        return self.limit(self.views_per_s(cores))

    def limit(self, views_per_s: float) -> str:
        """What limits a predicted rate: ``"data"`` below the step's compute rate, else ``"compute"``."""
        return "data" if views_per_s < self.compute_views_per_s else "compute"

    def machine_views_per_s(self, device_type: str, cores: float) -> float:
        """Views/s through the loader on a machine with ``cores`` CPU cores: shared with the step
        (``shared_cpu_views_per_s``, a worker per core) on a CPU device, all of them loading
        (``views_per_s``) beside an accelerator."""
        if device_type == "cpu":
            return self.shared_cpu_views_per_s(cores, max(int(cores), 1))
        return self.views_per_s(cores)


def dm_speedup(baseline: CostModel, dm: CostModel, cores: float) -> float:
    """DM's wall-clock speed-up over ``baseline`` at equal ETE with ``cores`` loader cores: the
    ratio of their views/s (an ETE is the same number of views for both)."""
    return dm.views_per_s(cores) / baseline.views_per_s(cores)


def speedup_curve(baseline: CostModel, dm: CostModel, cores: Sequence[float]) -> list[dict[str, float | str]]:
    """``dm_speedup`` at each core count, with what bounds each method there."""
    return [{"cores": c, "speedup": dm_speedup(baseline, dm, c), "baseline_bound": baseline.bound(c),
             "dm_bound": dm.bound(c)} for c in cores]  # fmt: skip


# ------------------------------------------------------------------------------------- measuring
def compute_rate(cfg: Config, workdir: Path, steps: int, warmup: int) -> float:
    """Views/s of the training step on one fixed batch of synthetic images in memory: the model's
    rate with no data path at all."""
    return _views_per_s(cfg, workdir, steps, warmup, synthetic=True)


def data_path_rate(cfg: Config, workdir: Path, steps: int, warmup: int) -> float:
    """Views/s of the training step fed by ``cfg``'s own data path (``data.pipeline``: the device
    path from memory, or DataLoader workers decoding files), as a run trains."""
    return _views_per_s(cfg, workdir, steps, warmup, synthetic=False)


def _views_per_s(cfg: Config, workdir: Path, steps: int, warmup: int, synthetic: bool) -> float:
    try:
        trainer = Pretrainer(cfg, workdir, overwrite=True)
        trainer.model.train()
        stream = None if synthetic else endless(trainer.batches)
        batches = stream if stream is not None else itertools.repeat(synthetic_images(trainer, cfg.optim.batch_size))
        plain_steps(trainer, batches, 0, warmup)
        seconds = plain_steps(trainer, batches, warmup, steps)
        views = cfg.optim.batch_size * trainer.masking.num_views * steps
        if stream is not None:
            stream.close()
        del trainer
    finally:
        gc.collect()  # the trainer's DataLoader workers end with it, before its folder goes
        shutil.rmtree(workdir, ignore_errors=True)
        release_device_memory()
    return views / seconds


def loader_rate(cfg: Config, batches: int, warmup: int) -> dict[str, float]:
    """Images/s and busy cores of ``cfg``'s loader alone (no training): its images/s per busy core."""
    return measure_loader(cfg, torch.device("cpu"), batches, warmup)


# --------------------------------------------------------------------------------- the benchmark
# The model sizes measured: ViT-Ti/16 and ViT-S/16 (the issue's), and a 2-block ViT of width 64 whose
# step outpaces a loader core on a CPU (the data-bound check of the model on a small machine).
MODELS: dict[str, tuple[str, ...]] = {
    "vit-2x64/16": ("model.size=tiny", "model.embed_dim=64", "model.depth=2", "model.num_heads=2",
                    "model.decoder_dim=64", "model.decoder_depth=1", "model.decoder_heads=2", "model.vdb_hidden=64"),
    "vit-ti/16": ("model.size=tiny", "model.decoder_dim=128", "model.decoder_depth=2", "model.decoder_heads=4",
                  "model.vdb_hidden=128"),
    "vit-s/16": ("model.size=small", "model.decoder_dim=256", "model.decoder_depth=2", "model.decoder_heads=8",
                 "model.vdb_hidden=256"),
}  # fmt: skip
METHODS: dict[str, tuple[str, ...]] = {
    "MAE": ("masking.pattern=random", "masking.mask_ratio=0.75", "masking.num_views=1", "masking.pred_ratio=null",
            "target.name=pixels", "target.norm_pix=true", "model.vdb=false"),
    "+DM": ("masking.pattern=random", "masking.mask_ratio=0.75", "masking.num_views=2", "masking.pred_ratio=1.0",
            "target.name=pixels", "target.norm_pix=true", "model.vdb=false"),
    "DMJD": ("masking.pattern=block", "masking.block_size=2", "masking.mask_ratio=0.6", "masking.num_views=2",
             "masking.pred_ratio=1.0", "target.name=hog", "target.hog_variant=dmjd", "target.cell_size=8",
             "model.vdb=true"),
}  # fmt: skip


def cost_config(folder: Path, model: str, method: str, pipeline: str, workers: int, batch: int, img_size: int) -> Config:
    """One measured configuration: the ``demo`` preset at ``img_size`` px, patch 16, RGB, on the JPEG
    ``folder`` through ``pipeline`` (``device``: decoded once into memory; ``loader``: workers)."""
    return load_config("demo", [
        f"data.path={folder}", "data.name=imagefolder", "data.split_holdout=false", "data.limit=null",
        f"data.pipeline={pipeline}", f"data.num_workers={workers}", f"data.cache_size={img_size}",
        f"model.img_size={img_size}", "model.patch_size=16", "model.in_chans=3", *MODELS[model], *METHODS[method],
        f"optim.batch_size={batch}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
    ])  # fmt: skip


def run_cost_benchmark(
    folder: Path,
    workdir: Path,
    models: Sequence[str],
    methods: Sequence[str],
    workers: Sequence[int],
    batch: int,
    steps: int,
    warmup: int,
    img_size: int = 224,
) -> dict[str, Any]:
    """Measure, per model and method, the compute rate (synthetic images in memory), the device path
    (decoded once, augmented in memory) and the loader path with each worker count; the loader's
    images/s per busy core alone; and the cost model's prediction of each loader-path rate.

    Training uses one torch thread; on a CPU it shares the cores with the workers, so each loader-path
    rate is predicted by ``CostModel.shared_cpu_views_per_s``. Time enough steps that the batches the
    workers prefetch before timing starts (2 per worker) are a small part of them.
    """
    cores = available_cores()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = loader_rate(cost_config(folder, models[0], methods[0], "loader", 1, batch, img_size), 12, 3)
        out: dict[str, Any] = {"cores": cores, "batch": batch, "steps": steps, "warmup": warmup, "img_size": img_size,
                               "loader": loader, "rates": {}}  # fmt: skip
        for model, method in itertools.product(models, methods):
            cfg = cost_config(folder, model, method, "device", 1, batch, img_size)
            entry: dict[str, Any] = {"num_views": cfg.masking.num_views}
            entry["compute"] = compute_rate(cfg, workdir, steps, warmup)
            entry["device_path"] = data_path_rate(cfg, workdir, steps, warmup)
            cost = CostModel(entry["compute"], loader["images_per_s_per_core"], cfg.masking.num_views)
            for w in workers:
                measured = data_path_rate(cost_config(folder, model, method, "loader", w, batch, img_size), workdir,
                                          steps, warmup)  # fmt: skip
                predicted = cost.shared_cpu_views_per_s(cores, w)
                entry[f"loader_{w}"] = {"measured": measured, "predicted": predicted, "bound": cost.limit(predicted)}
            print(f"cost: {model} {method}: " + ", ".join(
                f"{k} {v if isinstance(v, (int, float)) else v['measured']:.1f}" for k, v in entry.items()
                if k != "num_views"), flush=True)  # fmt: skip
            out["rates"][f"{model} {method}"] = entry
    finally:
        torch.set_num_threads(threads)
    return out


def gpu_prediction(loader_images_per_core: float, rates: dict[str, float], cores: Sequence[float]) -> dict[str, Any]:
    """DM's predicted speed-up at equal ETE on one accelerator against CPU cores per accelerator,
    from its measured step rates (``rates``: ``MAE``, ``+DM``, ``DMJD`` views/s on data in memory)."""
    mae = CostModel(rates["MAE"], loader_images_per_core, 1)
    return {label: speedup_curve(mae, CostModel(rates[label], loader_images_per_core, 2), cores)
            for label in ("+DM", "DMJD")}  # fmt: skip


# One H200, ViT-B/16 at 224 px, batch 256, eager bf16, synthetic images in memory (docs/results.md,
# 2026-11-28): MAE 3,502 views/s, DMJD 3,243. +DM trains MAE's model and target on two views, so its
# per-view step is taken as MAE's (not measured on the GPU).
H200_VIT_B_VIEWS_PER_S = {"MAE": 3502.0, "+DM": 3502.0, "DMJD": 3243.0}
CORES_PER_ACCELERATOR = (1, 2, 4, 6, 8, 12, 16, 24, 32)


def format_table(results: dict[str, Any]) -> str:
    """Markdown: the loader's rate, each configuration's measured and predicted views/s, and the
    GPU prediction."""
    ld = results["loader"]
    workers = sorted({int(k.split("_")[1]) for r in results["rates"].values() for k in r if k.startswith("loader_")})
    lines = [
        f"Cost per ETE on {results['machine']['cpu']} ({results['cores']} cores), {results['img_size']} px crops of "
        f"{results['images']} generated {results.get('jpeg_size', '500x375')} JPEGs, batch {results['batch']}, {results['steps']} timed steps after "
        f"{results['warmup']}; training on 1 torch thread. Command: `{results.get('command', '')}`; date (UTC) "
        f"{results['date']}; commit `{results['commit']}`",
        "",
        f"Loader alone (ImageFolder + PIL, 1 worker): {ld['images_per_s']:.0f} images/s on {ld['busy_cores']:.2f} busy "
        f"cores = {ld['images_per_s_per_core']:.0f} images/s per core.",
        "",
        "| model, method | K | compute (in memory, synthetic) | device path (decoded once) | "
        + " | ".join(f"loader, {w} worker(s): measured / predicted (bound)" for w in workers)
        + " |",
        "|---|---|---|---|" + "---|" * len(workers),
    ]
    for label, r in results["rates"].items():
        cells = [f"{r[f'loader_{w}']['measured']:.1f} / {r[f'loader_{w}']['predicted']:.1f} ({r[f'loader_{w}']['bound']})"
                 for w in workers]  # fmt: skip
        lines.append(f"| {label} | {r['num_views']} | {r['compute']:.1f} | {r['device_path']:.1f} | {' | '.join(cells)} |")
    gpu = results["gpu_prediction"]
    lines += ["", "Predicted wall-clock speed-up at equal ETE on one H200 (ViT-B/16 step rates) against CPU cores per "
              f"accelerator, at this machine's {ld['images_per_s_per_core']:.0f} loader images/s per core:", "",
              "| cores | " + " | ".join(gpu) + " |", "|---|" + "---|" * len(gpu)]  # fmt: skip
    for i, cores in enumerate(results["gpu_cores"]):
        lines.append(f"| {cores:g} | " + " | ".join(
            f"{gpu[label][i]['speedup']:.2f}x ({gpu[label][i]['baseline_bound']} / {gpu[label][i]['dm_bound']})"
            for label in gpu) + " |")  # fmt: skip
    return "\n".join(lines)


def plot_speedup(results: dict[str, Any], path: Path) -> Path:
    """The predicted speed-up against cores per accelerator, one line per DM method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, curve in results["gpu_prediction"].items():
        ax.plot([p["cores"] for p in curve], [p["speedup"] for p in curve], "o-", label=f"{label} against MAE")
    ax.axhline(1.0, color="0.5", linewidth=1, linestyle=":")
    ax.set_xlabel("CPU cores feeding one H200 (loader workers)")
    ax.set_ylabel("wall-clock speed-up at equal ETE")
    ax.set_title(f"Cost model, {results['loader']['images_per_s_per_core']:.0f} images/s per core", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/cost_per_ete.py [--models vit-ti/16,vit-s/16] [--output OUT/cost]``."""
    import argparse
    import shlex
    import sys
    import tempfile

    from dmjd.bench.environment import git_commit, machine_info, now_utc, publish
    from dmjd.bench.loader import make_jpegs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--workers", default="1,2", help="loader worker counts (default 1,2)")
    parser.add_argument("--images", type=int, default=256, help="JPEGs to generate (default 256)")
    parser.add_argument("--jpeg-size", default="500x375",
                        help="WxH of the generated JPEGs (default 500x375, ImageNet's typical size; larger ones make "
                        "the loader slower per image)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing (default 2)")
    parser.add_argument("--img-size", type=int, default=224, help="crop side (default 224)")
    parser.add_argument("--output", default=None, help="write OUTPUT.json, OUTPUT.md and OUTPUT.png")
    args = parser.parse_args(argv)
    models, methods = args.models.split(","), args.methods.split(",")
    if unknown := [m for m in models if m not in MODELS] + [m for m in methods if m not in METHODS]:
        parser.error(f"unknown model(s) or method(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        width, height = (int(v) for v in args.jpeg_size.split("x"))
        folder = make_jpegs(Path(tmp) / "jpegs", args.images, size=(width, height))
        results = run_cost_benchmark(folder, Path(tmp) / "work", models, methods,
                                     [int(w) for w in args.workers.split(",")], args.batch, args.steps, args.warmup,
                                     args.img_size)  # fmt: skip
    per_core = results["loader"]["images_per_s_per_core"]
    results.update(
        images=args.images, jpeg_size=args.jpeg_size, date=now_utc(), commit=git_commit(), machine=machine_info(torch.device("cpu")),
        command=shlex.join(sys.argv if argv is None else ["cost_per_ete", *argv]), gpu_cores=list(CORES_PER_ACCELERATOR),
        gpu_rates=H200_VIT_B_VIEWS_PER_S, gpu_prediction=gpu_prediction(per_core, H200_VIT_B_VIEWS_PER_S, CORES_PER_ACCELERATOR),
    )  # fmt: skip
    publish(results, format_table(results), args.output)
    if args.output:
        plot_speedup(results, Path(args.output).with_suffix(".png"))
    return 0


# ------------------------------------------------------------------------- a user's data path
def cost_split(configs: dict[str, Config], workdir: Path, steps: int = 3, warmup: int = 1, batches: int = 4) -> dict[str, Any]:
    """The per-view cost split of the data path of ``configs`` (``dmjd compare``'s methods, labelled,
    on the user's data): the loader's images/s per busy core on this data, each method's compute
    views/s, where the run's data went (held in memory or through workers) and the cost model's
    prediction of each method's views/s and DM's speed-up with this machine's loader cores.

    Loader cores are the CPUs this process may use; on a CPU device the step shares them with the
    workers (``CostModel.machine_views_per_s``), as the cost benchmark models this machine.
    """
    from dmjd.data import DeviceBatches
    from dmjd.engine.runtime import resolve_device
    from dmjd.engine.training_data import training_data

    first = next(iter(configs.values()))
    device = resolve_device(first.train.device)
    in_memory = isinstance(training_data(first, device).batches, DeviceBatches)
    through_loader = first.model_copy(deep=True)
    through_loader.data.pipeline, through_loader.data.num_workers = "loader", 1
    loader = loader_rate(through_loader, batches, 1)
    cores = available_cores()
    models = {label: CostModel(compute_rate(cfg, workdir / "step", steps, warmup), loader["images_per_s_per_core"],
                               cfg.masking.num_views) for label, cfg in configs.items()}  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)
    baseline = next(label for label, m in models.items() if m.num_views == 1) if any(
        m.num_views == 1 for m in models.values()) else next(iter(models))  # fmt: skip
    rates = {label: m.machine_views_per_s(device.type, cores) for label, m in models.items()}
    return {
        "in_memory": in_memory,
        "device": device.type,
        "loader_images_per_core": loader["images_per_s_per_core"],
        "loader_cores": cores,
        "shared_cores": device.type == "cpu",
        "baseline": baseline,
        "methods": {label: {"num_views": m.num_views, "compute_views_per_s": m.compute_views_per_s,
                            "views_per_s": rates[label],
                            "bound": m.limit(rates[label]),
                            "speedup": rates[label] / rates[baseline]}
                    for label, m in models.items()},
    }  # fmt: skip


def regime_sentence(split: dict[str, Any]) -> str:
    """``cost_split`` in words: which regime this machine is in and whether DM's loading saving applies."""
    base = split["baseline"]
    b = split["methods"][base]
    others = {label: m for label, m in split["methods"].items() if label != base}
    rates = ", ".join(f"{label} {m['compute_views_per_s']:,.0f}" for label, m in split["methods"].items())
    facts = (f"the loader decodes and augments {split['loader_images_per_core']:,.0f} images/s per core on this data; "
             f"the training step runs {rates} views/s on data in memory")  # fmt: skip
    through = "; ".join(f"{label} {m['speedup']:.2f}x {base}'s views/s ({m['bound']}-bound)" for label, m in others.items())
    shared = split.get("shared_cores", False)  # absent from comparisons made before it existed
    model = "views/s = min(compute, K x loader images/s per core x cores)" + (", the step sharing the cores" if shared else "")
    cores = f"{split['loader_cores']} core(s)" + (" shared with the step" if shared else "")
    loader = (f"through a loader with {cores}, {base} would be {b['bound']}-bound and the cost model ({model}) "
              f"predicts {through}")  # fmt: skip
    if split["in_memory"]:
        return (f"{facts}. This run held the data in memory, decoded once, so loading costs nothing per view and "
                f"disjoint masking's loading saving does not apply here: time per ETE is the step's. {loader[0].upper()}"
                f"{loader[1:]}, at equal ETE.")  # fmt: skip
    saving = "applies" if b["bound"] == "data" else "does not apply (the step, not the loader, is the limit)"
    return f"{facts}. This run read its data through DataLoader workers: {loader}, at equal ETE; DM's loading saving {saving}."
