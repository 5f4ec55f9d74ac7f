"""dmjd's MAE mode side by side with the official MAE code (facebookresearch/mae) on one device.

The official code is imported from a checkout the user supplies (``--mae-dir``; never vendored)
and patched at run time only where current libraries broke it: ``torch._six.inf`` (removed from
PyTorch), ``np.float`` (removed from NumPy) and timm's ``Block`` no longer taking ``qk_scale``.
Its training step is timed as its ``engine_pretrain.train_one_epoch`` runs it: fp16 autocast, the
forward with ``mask_ratio=0.75``, ``loss.item()`` every step, its ``NativeScalerWithGradNormCount``
(scaled backward, unscale, grad-norm, step, update), ``zero_grad`` and ``torch.cuda.synchronize``,
with the AdamW(0.9, 0.95) and weight-decay groups of its ``main_pretrain.py``. dmjd's MAE mode runs
the same model size, batch, mask ratio, norm-pix target and precision through its own engine step
(``dmjd.bench.throughput.measure``). Both are fed the same synthetic images already on the device,
so neither data loader is measured. Runs alternate (official, dmjd, official, dmjd, ...) so that
drift of the machine affects both alike.
"""

from __future__ import annotations

import argparse
import importlib
import math
import shlex
import sys
import time
import types
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmjd.bench.environment import device_name, git_commit, machine_info, now_utc, publish, release_device_memory, thread_limit
from dmjd.bench.throughput import compile_overrides, measure
from dmjd.config import Config, load_config

# Per setting: the official model's constructor arguments and dmjd's matching overrides.
SETTINGS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "vit-b16": (
        dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
        ("model.size=base", "model.img_size=224", "model.patch_size=16"),
    ),
    "vit-ti4-32": (
        dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
             decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
        ("model.size=tiny", "model.img_size=32", "model.patch_size=4", "model.decoder_dim=128",
         "model.decoder_depth=4", "model.decoder_heads=4"),
    ),
}  # fmt: skip


def import_official_mae(mae_dir: str | Path) -> tuple[types.ModuleType, types.ModuleType]:
    """``(models_mae, util.misc)`` of a facebookresearch/mae checkout, patched for current libraries.

    Raises:
        FileNotFoundError: ``mae_dir`` holds no ``models_mae.py``.
    """
    root = Path(mae_dir).resolve()
    if not (root / "models_mae.py").is_file():
        raise FileNotFoundError(f"{root} holds no models_mae.py: pass a checkout of facebookresearch/mae as --mae-dir")
    models_mae, misc = import_checkout(root, ("models_mae", "util.misc"))
    return models_mae, misc


def patch_for_current_libraries() -> None:
    """Restore what MAE-era code (MAE, ConvMAE, DMJD) takes from older libraries: ``np.float``,
    ``torch._six.inf`` and timm's ``Block(qk_scale=...)``. Idempotent."""
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]  # util/pos_embed.py uses the removed alias
    if "torch._six" not in sys.modules:
        sys.modules["torch._six"] = types.SimpleNamespace(inf=math.inf)  # type: ignore[assignment]
    import timm.models.vision_transformer as vit

    if not getattr(vit.Block, "_accepts_qk_scale", False):

        class Block(vit.Block):  # timm >= 0.9 dropped the qk_scale argument that models_mae passes
            _accepts_qk_scale = True

            def __init__(self, *args: Any, qk_scale: float | None = None, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)

        vit.Block = Block  # type: ignore[misc]


def import_checkout(root: Path, names: Sequence[str]) -> list[types.ModuleType]:
    """Import the modules ``names`` of a checkout at ``root``, after ``patch_for_current_libraries``.

    Modules of those top-level names (and any ``util``) imported before, from another checkout or an
    unrelated package, are dropped first, so each call imports from ``root``.
    """
    patch_for_current_libraries()
    tops = {name.split(".")[0] for name in names} | {"util"}
    for name in [m for m in sys.modules if m.split(".")[0] in tops]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(root))


def official_model(models_mae: types.ModuleType, setting: str, in_chans: int = 3) -> nn.Module:
    """The official ``MaskedAutoencoderViT`` of a setting, with norm-pix loss (MAE's recipe)."""
    kwargs = SETTINGS[setting][0]
    return models_mae.MaskedAutoencoderViT(
        **kwargs, in_chans=in_chans, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True
    )


def time_official(
    mae_dir: str | Path, setting: str, batch: int, steps: int, warmup: int, device: str, mask_ratio: float = 0.75
) -> dict[str, Any]:
    """Seconds per training step of the official code, run as its ``train_one_epoch`` runs it."""
    models_mae, misc = import_official_mae(mae_dir)
    from timm.optim import param_groups_weight_decay  # timm >= 1.0 name of MAE's add_weight_decay

    dev = torch.device(device)
    torch.manual_seed(0)
    model = official_model(models_mae, setting).to(dev)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = misc.NativeScalerWithGradNormCount()
    size = SETTINGS[setting][0]["img_size"]
    samples = torch.rand(batch, 3, size, size, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    autocast = partial(torch.autocast, dev.type, dtype=torch.float16, enabled=dev.type == "cuda")

    def step() -> float:
        with autocast():
            loss, _, _ = model(samples, mask_ratio=mask_ratio)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"official MAE loss is {loss_value}")
        scaler(loss, optimizer, parameters=model.parameters(), update_grad=True)
        optimizer.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss_value

    model.train()
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    seconds = (time.perf_counter() - start) / steps
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.cpu()
    release_device_memory()
    return {"step_ms": 1000 * seconds, "images_per_s": batch / seconds, "params_m": params, "last_loss": losses[-1]}


def dmjd_config(setting: str, batch: int, device: str, precision: str, compile_mode: str | None) -> Config:
    """dmjd's MAE mode (random 0.75, K = 1, norm-pix, no VDB) for a setting, 3 channels."""
    return load_config(
        "mae-vit-b",
        [
            *SETTINGS[setting][1], "model.in_chans=3", "data.name=embedded", "data.path=null", "data.num_workers=0",
            f"optim.batch_size={batch}", "optim.accum_iter=1", f"train.device={device}", f"train.precision={precision}",
            "train.tensorboard=false", "train.progress=false", *compile_overrides(compile_mode or "eager"),
        ],
    )  # fmt: skip


def compare(
    mae_dir: str | Path,
    setting: str,
    batch: int,
    steps: int,
    warmup: int,
    rounds: int,
    device: str,
    fast_mode: str | None,
) -> dict[str, Any]:
    """Alternating timings of the official step and dmjd's MAE mode (fp16 like MAE), plus dmjd's
    own fast path (bf16, ``torch.compile`` with ``fast_mode``) when ``fast_mode`` is given.
    """  # fmt: skip
    dev = torch.device(device)
    precision = "fp16" if dev.type == "cuda" else "fp32"
    runs: dict[str, list[dict[str, Any]]] = {"official MAE": [], f"dmjd MAE mode ({precision})": []}
    fast_label = f"dmjd MAE mode (bf16, compile {fast_mode})"
    if fast_mode is not None and dev.type == "cuda":
        runs[fast_label] = []
    for _ in range(rounds):
        runs["official MAE"].append(time_official(mae_dir, setting, batch, steps, warmup, device))
        cfg = dmjd_config(setting, batch, device, precision, None)
        runs[f"dmjd MAE mode ({precision})"].append(measure(cfg, steps, warmup, count_flops=False))
        if fast_label in runs:
            cfg = dmjd_config(setting, batch, device, "bf16", fast_mode)
            runs[fast_label].append(measure(cfg, steps, warmup, count_flops=False))
    base = float(np.mean([r["images_per_s"] for r in runs["official MAE"]]))
    summary = {}
    for label, rs in runs.items():
        ips = [r["images_per_s"] for r in rs]
        summary[label] = {
            "images_per_s": ips, "mean_images_per_s": float(np.mean(ips)),
            "speedup_over_official": float(np.mean(ips)) / base,
            "step_ms": [r["step_ms"] for r in rs], "params_m": rs[0]["params_m"],
        }  # fmt: skip
    return {
        "benchmark": "official MAE vs dmjd MAE mode", "setting": setting, "batch_size": batch, "steps": steps,
        "warmup": warmup, "rounds": rounds, "device": device_name(dev), "date": now_utc(), "commit": git_commit(),
        "machine": machine_info(dev), "mae_dir": str(mae_dir), "results": summary,
    }  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: images/s per round, mean, speed-up over the official code."""
    lines = [
        f"Setting {result['setting']}, batch {result['batch_size']}, {result['steps']} timed steps after "
        f"{result['warmup']} warm-up, {result['rounds']} alternating rounds, on {result['device']}",
        "",
        "| code | params (M) | images/s per round | mean images/s | speed-up over official |",
        "|---|---|---|---|---|",
    ]
    for label, r in result["results"].items():
        per_round = ", ".join(f"{v:.0f}" for v in r["images_per_s"])
        lines.append(
            f"| {label} | {r['params_m']:.1f} | {per_round} | {r['mean_images_per_s']:.0f} | {r['speedup_over_official']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/official_mae.py --mae-dir PATH [--setting vit-b16] [--device cuda]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpu = torch.cuda.is_available()
    parser.add_argument("--mae-dir", required=True, help="a checkout of facebookresearch/mae")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="vit-b16" if gpu else "vit-ti4-32")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per step (default 256 for vit-b16, 512 for vit-ti4-32; 64 on CPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 30 GPU, 10 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU, 3 CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each code")
    parser.add_argument(
        "--fast-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="also time dmjd's bf16 + torch.compile path in this mode (GPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    batch = args.batch or ((256 if args.setting == "vit-b16" else 512) if on_gpu else 64)
    with thread_limit(args.threads):
        result = compare(
            args.mae_dir, args.setting, batch, args.steps or (30 if on_gpu else 10),
            args.warmup if args.warmup is not None else (10 if on_gpu else 3), args.rounds, args.device, args.fast_mode,
        )  # fmt: skip
    result["command"] = shlex.join(sys.argv if argv is None else ["official_mae", *argv])
    publish(result, format_table(result), args.output)
    return 0
