"""Correctness checks that need a GPU: device parity and bf16 behaviour. Prints one JSON object.

    python benchmarks/gpu_checks.py [--output FILE.json]

1. masking on CUDA keeps its invariants (exact per-view counts, union = m_pred);
2. HOG and pixel targets on CUDA equal the CPU result;
3. the DMJD loss of ViT-B/16 under bf16 autocast is within 2 % of fp32 on the same weights/masks;
4. a short bf16 pre-training on random-but-structured images lowers the loss with no skipped step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from dmjd.config import load_config
from dmjd.engine import Pretrainer
from dmjd.engine.builders import build_dmjd_model, build_loss, build_masking, build_target
from dmjd.engine.metrics import read_metrics
from dmjd.masking import MaskedViews
from dmjd.targets import create_target


def check_masking(device: torch.device) -> dict:
    cfg = load_config("dmjd-vit-b")
    masking = build_masking(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    mask = masking(256, generator=gen, device=device)
    per_view = mask.sum(-1)
    union = mask.any(1).sum(-1)
    return {
        "device": str(mask.device),
        "per_view_exact": bool((per_view == masking.num_masked).all()),
        "union_exact": bool((union == masking.num_predicted).all()),
    }


def check_targets(device: torch.device) -> dict:
    images = torch.rand(8, 3, 224, 224)
    out = {}
    for name, kwargs in (("hog-dmjd", {"variant": "dmjd"}), ("hog-maskfeat", {"variant": "maskfeat"}), ("pixels", {})):
        target = create_target(name.split("-")[0], patch_size=16, in_chans=3, **kwargs)
        cpu = target(images)
        gpu = target.to(device)(images.to(device)).cpu()
        out[name] = {"max_abs_diff": float((cpu - gpu).abs().max()), "dim": target.dim}
    return out


def check_bf16_loss(device: torch.device, preset: str) -> dict:
    cfg = load_config(preset)
    torch.manual_seed(0)
    target = build_target(cfg).to(device)
    model = build_dmjd_model(cfg, target.dim).to(device).eval()
    loss_fn = build_loss(cfg)
    masking = build_masking(cfg)
    m = cfg.model
    images = torch.rand(16, m.in_chans, m.img_size, m.img_size, device=device)
    views = MaskedViews.from_mask(masking(16, generator=torch.Generator(device=device).manual_seed(1), device=device))
    x = (images - 0.45) / 0.225  # stand-in statistics: both precisions see the same input
    targets = target(images)
    with torch.no_grad():
        fp32 = {k: float(v) for k, v in loss_fn(model(x, views), targets, views).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = {k: float(v) for k, v in loss_fn(model(x, views), targets, views).items()}
    rel = {k: abs(bf16[k] - fp32[k]) / abs(fp32[k]) for k in fp32}
    return {"fp32": fp32, "bf16": bf16, "rel_diff": rel, "within_2pct": all(r < 0.02 for r in rel.values())}


def check_bf16_training(device: torch.device, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            "demo",
            [
                f"optim.epochs={epochs}", "train.precision=bf16", "train.progress=false",
                "train.tensorboard=false", "data.num_workers=4", f"train.device={device}",
            ],
        )  # fmt: skip
        start = time.perf_counter()
        summary = Pretrainer(cfg, tmp).fit()
        losses = [r["loss"] for r in read_metrics(f"{tmp}/metrics.jsonl") if r["kind"] == "train"]
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "loss_fell": losses[-1] < 0.8 * losses[0],
        "skipped_steps": summary["skipped_steps"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the bf16 demo pre-training")
    parser.add_argument("--loss-preset", default="dmjd-vit-b", help="model of the bf16-vs-fp32 loss check")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu)",
        "torch": torch.__version__,
    }
    checks = {
        "masking": lambda: check_masking(device),
        "targets": lambda: check_targets(device),
        "bf16_loss": lambda: check_bf16_loss(device, args.loss_preset),
        "bf16_training": lambda: check_bf16_training(device, args.epochs),
    }
    for name, check in checks.items():
        result[name] = check()
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
