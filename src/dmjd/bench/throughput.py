"""Throughput benchmark: images/s, views/s and model FLOPs utilisation, eager and compiled.

Each configuration is timed on the engine's own training step (masks made on the device, targets
once per image, forward + backward, AdamW step), fed either with synthetic images already on the
device (``--data synthetic``: the loader is out of the measurement) or through the device-resident
data path (``--data device``: the embedded sample as uint8 on the device, RandomResizedCrop + flip
there, as ``data.pipeline=device`` trains). Each execution mode (``eager``, or ``torch.compile``
with mode ``default`` / ``reduce-overhead`` (CUDA graphs) / ``max-autotune-no-cudagraphs``) is
timed after its warm-up steps; the seconds the warm-up took beyond that many steady steps are
reported as the compile time. FLOPs of one step (forward + backward, the
optimizer's are negligible) are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager
model with the math attention kernel (so that attention matmuls are counted on every device); the
model FLOPs utilisation is achieved FLOP/s over the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dmjd.bench.environment import device_name, git_commit, machine_info, now_utc, publish, release_device_memory, thread_limit
from dmjd.bench.testbeds import DMJD, MAE, PLUS_DM, PLUS_JD, TESTBEDS
from dmjd.config import Config, load_config
from dmjd.data import endless
from dmjd.engine import Pretrainer

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the first name found in
# the device name wins, so more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)

# Per setting and configuration: (config preset name or None, overrides). ``vit-b16`` is the paper's
# ViT-B/16 at 224 px (the shipped MAE and DMJD recipes); ``vit-ti4-32`` the GPU reproduction
# benchmark's ViT-Ti/4 on 32 px images (the ``gpu`` testbed) with its four main configurations;
# ``cpu-small`` the ``cpu`` testbed's model.
SETTINGS: dict[str, dict[str, tuple[str | None, tuple[str, ...]]]] = {
    "vit-b16": {"MAE": ("mae-vit-b", ()), "DMJD": ("dmjd-vit-b", ())},
    "vit-ti4-32": {v.label: (None, TESTBEDS["gpu"].base + v.overrides) for v in (MAE, PLUS_DM, PLUS_JD, DMJD)},
    "cpu-small": {v.label: (None, TESTBEDS["cpu"].base + v.overrides) for v in (MAE, DMJD)},
}
MODES = ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def peak_bf16_flops(name: str) -> tuple[str, float] | None:
    """``(table entry, FLOP/s)`` of the first table name contained in a device name, else None."""
    return next(((key, peak) for key, peak in PEAK_BF16_FLOPS if key in name), None)


def compile_overrides(mode: str) -> list[str]:
    """Config overrides of an execution mode: ``eager`` or a ``torch.compile`` mode."""
    return ["train.compile=false"] if mode == "eager" else ["train.compile=true", f"train.compile_mode={mode}"]


def throughput_config(setting: str, config: str, batch: int, device: str, mode: str = "eager") -> Config:
    """The run config of one measured configuration: its recipe on the embedded sample, ``mode``
    ``eager`` or a ``torch.compile`` mode."""
    preset, overrides = SETTINGS[setting][config]
    precision = "bf16" if device.startswith("cuda") else "fp32"
    return load_config(
        preset,
        [
            *overrides,
            "data.name=embedded", "data.path=null", "data.limit=null", "data.num_workers=0",
            f"optim.batch_size={batch}", "optim.accum_iter=1",
            f"train.device={device}", f"train.precision={precision}", *compile_overrides(mode),
            "train.tensorboard=false", "train.progress=false",
        ],
    )  # fmt: skip


def synthetic_images(trainer: Pretrainer, batch: int) -> Tensor:
    """Uniform images in [0, 1] of the configured shape, created on the training device."""
    m = trainer.cfg.model
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    return torch.rand(batch, m.in_chans, m.img_size, m.img_size, device=trainer.device, generator=gen)


def train_step(trainer: Pretrainer, images: Tensor, step: int) -> None:
    """One engine training step on a fixed batch: masks, targets, forward, backward, AdamW."""
    views = trainer.step_masks(step, images.shape[0])
    loss = trainer.compute_losses(images, views)["loss"]
    (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()
    trainer.optimizer_step()


def step_flops(trainer: Pretrainer, images: Tensor) -> int:
    """FLOPs of one forward + backward pass (matmuls, convolutions and attention)."""
    views = trainer.step_masks(0, images.shape[0])
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        trainer.model.zero_grad(set_to_none=True)
        trainer.compute_losses(images, views)["loss"].backward()
    trainer.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def image_source(trainer: Pretrainer, data: str) -> Iterator[Tensor]:
    """Endless batches: one synthetic batch repeated, or the trainer's device-resident data path."""
    if data == "synthetic":
        return repeat(synthetic_images(trainer, trainer.cfg.optim.batch_size))
    if data != "device":
        raise ValueError(f"data must be 'synthetic' or 'device', got {data!r}")
    return endless(trainer.batches)


def measure(cfg: Config, steps: int, warmup: int, count_flops: bool = True, data: str = "synthetic") -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` (compilation and CUDA-graph capture happen there).

    Returns:
        ``{"step_ms", "images_per_s", "views_per_s", "flops_per_step", "compile_s", "batch_size",
        "num_views", "params_m"}``: ``flops_per_step`` None when not counted (count on the eager
        config), ``compile_s`` the warm-up's seconds beyond ``warmup`` steady steps (None eager).
    """
    batch = cfg.optim.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(cfg, tmp, overwrite=True)
        if data == "device" and not hasattr(trainer.batches, "images"):
            raise RuntimeError("--data device needs the device pipeline (data.pipeline=device fits the sample)")
        images = image_source(trainer, data)
        flops = step_flops(trainer, next(images)) if count_flops else None
        start = time.perf_counter()
        for i in range(warmup):
            train_step(trainer, next(images), i)
        _sync(trainer.device)
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            train_step(trainer, next(images), i)
        _sync(trainer.device)
        seconds = (time.perf_counter() - start) / steps
        views = trainer.masking.num_views
        params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
        del trainer, images
    release_device_memory()
    return {
        "step_ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "views_per_s": batch * views / seconds,
        "flops_per_step": flops,
        "compile_s": max(warm_s - warmup * seconds, 0.0) if cfg.train.compile else None,
        "batch_size": batch,
        "num_views": views,
        "params_m": params,
    }


def run_throughput(
    setting: str,
    device: str,
    batch: int,
    steps: int,
    warmup: int,
    modes: Sequence[str] = ("eager",),
    data: str = "synthetic",
    configs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure each configuration of a setting in each mode; adds achieved TFLOP/s and MFU on a GPU
    with a known peak (FLOPs counted once per configuration on the eager model)."""  # fmt: skip
    dev = torch.device(device)
    name = device_name(dev)
    peak = peak_bf16_flops(name) if dev.type == "cuda" else None
    results: dict[str, Any] = {
        "benchmark": "dmjd throughput",
        "setting": setting,
        "device": name,
        "peak": {"entry": peak[0], "bf16_flops": peak[1]} if peak else None,
        "batch_size": batch,
        "steps": steps,
        "warmup": warmup,
        "modes": list(modes),
        "data": data,
        "date": now_utc(),
        "commit": git_commit(),
        "machine": machine_info(dev),
        "configs": {},
    }
    for label in configs or SETTINGS[setting]:
        flops = None
        for mode in modes:
            cfg = throughput_config(setting, label, batch, device, mode)
            r = measure(cfg, steps, warmup, count_flops=flops is None and mode == "eager", data=data)
            if flops is None:
                flops = (
                    r["flops_per_step"]
                    or measure(throughput_config(setting, label, batch, device), 1, 0, data=data)["flops_per_step"]
                )
            r["flops_per_step"] = flops
            r["tflops_per_s"] = flops / (r["step_ms"] / 1000) / 1e12
            r["mfu"] = r["tflops_per_s"] * 1e12 / peak[1] if peak else None
            results["configs"][f"{label} [{mode}]"] = r
            print(f"throughput: {label} [{mode}] {r['images_per_s']:.0f} images/s", flush=True)
    return results


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of the measurements, with the peak used for the MFU."""
    peak = results["peak"]
    lines = [
        f"Throughput, setting {results['setting']}, on {results['device']}, batch {results['batch_size']} unique "
        f"images, data {results['data']}, {results['steps']} timed steps after {results['warmup']} warm-up, "
        f"{results['machine']['torch_threads']} torch threads",
        f"Command: `{results.get('command', '')}`; date (UTC) {results['date']}; commit `{results['commit']}`",
        "MFU peak: "
        + (f"{peak['entry']} dense bf16 {peak['bf16_flops'] / 1e12:g} TFLOP/s" if peak else "none (no known GPU peak)"),
        "",
        "| config [mode] | params (M) | K | step ms | steps/s | images/s | views/s | GFLOP/step | TFLOP/s | MFU | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["configs"].items():
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-"
        compile_s = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
        lines.append(
            f"| {label} | {r['params_m']:.1f} | {r['num_views']} | {r['step_ms']:.2f} | {1000 / r['step_ms']:.1f} | "
            f"{r['images_per_s']:.0f} | {r['views_per_s']:.0f} | {r['flops_per_step'] / 1e9:.1f} | "
            f"{r['tflops_per_s']:.2f} | {mfu} | {compile_s} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The throughput benchmark's options."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"device (default {default_device})")
    parser.add_argument(
        "--setting", choices=sorted(SETTINGS), default=None,
        help="vit-b16 (224 px, the paper's model; default on GPU), vit-ti4-32 (32 px, the GPU reproduction's "
        "model, four configurations) or cpu-small (default on CPU)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="unique images per step (default 256 GPU, 128 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU, 10 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU, 3 CPU)")
    parser.add_argument(
        "--modes",
        type=lambda v: v.split(","),
        default=["eager"],
        help=f"comma-separated execution modes out of {', '.join(MODES)} (default eager)",
    )
    parser.add_argument(
        "--data",
        choices=["synthetic", "device"],
        default="synthetic",
        help="synthetic images on the device, or the device-resident data path",
    )
    parser.add_argument("--configs", type=lambda v: v.split(","), default=None, help="subset of the setting's configurations")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: torch's); 1 on a small shared CPU avoids oversubscription",
    )  # fmt: skip
    parser.add_argument("--output", default=None, help="write results to OUTPUT.json and OUTPUT.md")


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/throughput.py [--device cuda] [--setting vit-ti4-32] [--modes eager,reduce-overhead]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if unknown := [m for m in args.modes if m not in MODES]:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    gpu = args.device.startswith("cuda")
    with thread_limit(args.threads):
        results = run_throughput(
            setting=args.setting or ("vit-b16" if gpu else "cpu-small"),
            device=args.device,
            batch=args.batch or (256 if gpu else 128),
            steps=args.steps or (30 if gpu else 10),
            warmup=args.warmup if args.warmup is not None else (10 if gpu else 3),
            modes=args.modes,
            data=args.data,
            configs=args.configs,
        )
    results["command"] = shlex.join(sys.argv if argv is None else ["throughput", *argv])
    publish(results, format_table(results), args.output)
    return 0
