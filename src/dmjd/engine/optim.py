"""Optimizer set-up: parameter groups, learning-rate rules (Eq. 4), the warmup + cosine schedule, and
the step (clipping; a non-finite gradient skips it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dmjd.config import OptimConfig
    from dmjd.masking import DisjointMasking

RateSource = Literal["nominal", "realised"]


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


def lr_rates(masking: DisjointMasking, source: RateSource = "nominal") -> tuple[float, float]:
    """``(m_corr, m_pred)`` for Eq. 4.

    ``"nominal"``: the configured rates, as the official code scales with its ``--mask_ratio`` and
    ``--pred_ratio`` arguments (``m_pred`` defaults to ``min(1, K * m_corr)``); ``"realised"``: the
    token fractions after rounding (block 0.6 on 14 x 14 masks 30 of 49 cells = 0.612).
    """
    if source == "nominal":
        return masking.mask_ratio, masking.nominal_pred_ratio
    if source == "realised":
        return masking.realised_mask_ratio, masking.realised_pred_ratio
    raise ValueError(f"unknown rate source {source!r}; choose 'nominal' or 'realised'")


def rates_summary(masking: DisjointMasking, source: RateSource) -> str:
    """One start-up line naming the nominal and the realised ``m_corr`` and ``m_pred`` and which
    of them Eq. 4 uses."""
    return (
        f"m_corr {masking.mask_ratio:g} (realised {masking.realised_mask_ratio:.4g}), m_pred "
        f"{masking.nominal_pred_ratio:g} (realised {masking.realised_pred_ratio:.4g}); the lr rule uses the "
        f"{source} rates"
    )


def peak_lr(optim: OptimConfig, masking: DisjointMasking, unique_batch: int) -> float:
    """The run's peak learning rate: ``optim.lr`` if set, else ``optim.blr`` scaled by ``optim.lr_rule``
    with the global unique batch ``b_u`` (images per optimizer step over all processes)."""
    if optim.lr is not None:
        return optim.lr
    m_corr, m_pred = lr_rates(masking, optim.lr_rates)
    return effective_lr(optim.blr, unique_batch, masking.num_views, m_corr, m_pred, optim.lr_rule)


def lr_at(
    step: float,
    total_steps: int,
    warmup_steps: int,
    peak_lr: float,
    min_lr: float = 0.0,
    cosine_start: tuple[int, float] | None = None,
) -> float:
    """Per-iteration linear warmup to ``peak_lr``, then half-cycle cosine down to ``min_lr`` at ``total_steps``.

    ``cosine_start = (step, lr)`` starts the cosine there instead of at the warmup's end from the
    peak: a schedule re-planned mid-run (a time budget) continues from its current lr.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    start, top = cosine_start or (warmup_steps, peak_lr)
    span = max(total_steps - start, 1)
    progress = min(max(step - start, 0) / span, 1.0)
    return min_lr + (top - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_decay: set[str] | None = None
) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Biases, norm weights and every other parameter with fewer than two dimensions, plus the names
    in ``no_decay`` (position embeddings, cls and mask tokens), get no weight decay.
    """
    no_decay = no_decay or set()
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or name in no_decay or name.split(".")[-1] in no_decay
        (plain if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def pretrain_param_groups(model: nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """Pre-training parameter groups.

    ``decay_tokens=True`` (MAE's and the official DMJD code's ``add_weight_decay`` without a skip
    list): only 1-d parameters and biases are exempt, so ``cls_token`` and ``mask_token`` are
    decayed; ``False`` also exempts ``model.no_weight_decay()`` (cls/mask tokens, position
    embeddings), timm's and BEiT's convention.
    """
    exempt = cast("Callable[[], Iterable[str]]", model.no_weight_decay)  # timm-style models define it
    no_decay = set() if decay_tokens else set(exempt())
    return param_groups(model.named_parameters(), weight_decay, no_decay)


def build_adamw(
    groups: list[dict], lr: float, betas: tuple[float, float], fused: bool | None, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; fused (one kernel, skips steps on device via ``found_inf``) where the device has it."""
    use_fused = device.type in ("cuda", "cpu") if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=use_fused)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    decay_tokens: bool = True,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """The pre-training optimizer of ``dmjd pretrain`` for any model: AdamW over
    ``pretrain_param_groups`` (the ``optim`` section's defaults), on the device of the model's weights.

    Args:
        lr: the peak learning rate, e.g. ``effective_lr(blr, b_u, K, m_corr, m_pred)`` (Eq. 4).
        weight_decay, betas, decay_tokens, fused: ``optim.weight_decay``, ``optim.betas``,
            ``optim.decay_tokens``, ``optim.fused`` (None: fused where the device has it).
    """
    device = next(model.parameters()).device
    return build_adamw(pretrain_param_groups(model, weight_decay, decay_tokens), lr, betas, fused, device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (scaled by a group's ``lr_scale`` when present)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, clip_grad: float | None, scaler: torch.amp.GradScaler | None
) -> Tensor:
    """Clip, then step unless the gradient is non-finite; returns the skip flag (0./1.) on the device.

    A fused AdamW gets the flag as ``found_inf`` and skips the update on the device, without a host
    sync; other optimizers sync once to decide. The gradients are zeroed either way.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    found_inf = (~torch.isfinite(norm)).float()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        optimizer.step()
    elif not bool(found_inf):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return found_inf
