"""Optimizer set-up: parameter groups, learning-rate rules (Eq. 4) and the warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def effective_lr(
    blr: float,
    unique_batch: int,
    num_views: int,
    mask_ratio: float,
    pred_ratio: float,
    rule: str = "dmjd",
) -> float:
    """The learning rate from the base rate and the global batch.

    ``rule="dmjd"`` is the paper's adaptive scale (Eq. 4): ``blr * (b_u * m_pred / m_corr) / 256``
    with ``b_u`` unique images per optimizer step. ``rule="linear"`` is the standard rule
    ``blr * b / 256`` on the ``b = b_u * K`` views of a step (Goyal et al.; MAE's rule for K = 1).

    Raises:
        ValueError: unknown rule.
    """
    if rule == "dmjd":
        return blr * unique_batch * (pred_ratio / mask_ratio) / 256
    if rule == "linear":
        return blr * unique_batch * num_views / 256
    raise ValueError(f"unknown lr rule {rule!r}; choose 'dmjd' or 'linear'")


def lr_at(step: float, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """Per-iteration linear warmup to ``peak_lr``, then half-cycle cosine down to ``min_lr``."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_decay: set[str] | None = None
) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Biases, norm weights and every other parameter with fewer than two dimensions, plus the names
    in ``no_decay`` (position embeddings, cls and mask tokens), get no weight decay.
    """
    no_decay = no_decay or set()
    decay, plain = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or name in no_decay or name.split(".")[-1] in no_decay
        (plain if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def build_adamw(
    groups: list[dict], lr: float, betas: tuple[float, float], fused: bool | None, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; fused (one kernel, skips steps on device via ``found_inf``) where the device has it."""
    use_fused = device.type in ("cuda", "cpu") if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=use_fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (scaled by a group's ``lr_scale`` when present)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
