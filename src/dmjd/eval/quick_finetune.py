"""Fine-tuning on labelled images held in memory: the small-data recipe, seconds to minutes long.

It is ``dmjd finetune --recipe small`` (the default for encoders below 224 px) and the benchmarks'
end-of-run fine-tuning. ``dmjd finetune --recipe mae`` is MAE's ImageNet recipe (mixup, cutmix,
RandAugment, random erasing, 100 epochs): on a few thousand small images and a few epochs its
regularisers dominate and it scored 15-26 % where a linear probe of the same encoder scored 75 %.
This small-data recipe keeps what pays at that scale and drops what needs long schedules:

* a copy of the encoder (the pre-training model is untouched) + average-pooled patch tokens
  (``pool``) + a LayerNorm and a linear head;
* AdamW (0.9, 0.999), lr = ``blr`` x batch / 256 (batch 64: hundreds of steps on a few thousand
  images), timm's layer-wise lr decay (``layer_decay``), weight decay 0.05 off biases and norms,
  linear warmup (``warmup_epochs``) then cosine to 0;
* horizontal flips made on the device (``dmjd.data.resample``) and nothing else by default: no label
  smoothing, no crop (``crop_scale`` (1, 1) keeps the whole image), no mixup, cutmix, RandAugment or
  erasing. On 2,000 labels each regulariser cost accuracy.

The defaults come from a CPU sweep (2026-11-28, seed 0; raw log in
docs/results/cpu-2026-11-28-late/finetune-sweep/) on the ``cpu`` benchmark's labelled splits (2,000 +
2,000 Fashion-MNIST images), 10 epochs at batch 64 unless said. The recipe was step-starved, not
overfitting: its previous defaults (batch 256, blr 4e-3, label smoothing 0.1, crop 0.8-1), run for 3
epochs (21 steps) as the benchmark did, gave 35.1 % on a DMJD encoder pre-trained for 2 epochs of
20,000 images (linear probe 71.1 %); at batch 64 they gave 45.3 % at blr 1e-3, 64.9 % at 4e-3, 70.4 % at
8e-3, 71.7 % at 1.6e-2, and 74.1 % at 4e-3 over 20 epochs. On a better DMJD encoder (3 epochs of 20,000
images: kNN 71.6 %, linear probe 78.8 %): blr 1.6e-2 75.2 %, 3.2e-2 75.8 %, 20 epochs 79.6 %; without
the crop 78.8 %, and also without label smoothing 80.0 % (the defaults). The untrained encoder with the
defaults: 76.6 %. An earlier sweep on the embedded sample had set blr 4e-3 and crop 0.8-1 from an
untrained encoder; on the H200 that setting gave 31-45 % after pre-training (docs/results/h200-2026-11-28/NOTES.md).

Everything runs on the images' device with a seeded generator, so the result is reproducible.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import Tensor, nn
from torch.nn import functional as F

from dmjd.data.resample import random_resized_crop_params, resized_crop
from dmjd.errors import InputError
from dmjd.eval.chance import warn_if_at_chance
from dmjd.eval.features import Pool, default_pool, encoder_tokens, pool_tokens
from dmjd.eval.settings import SmallFinetuneSettings


class PooledClassifier(nn.Module):
    """``encoder`` -> pooled tokens -> LayerNorm -> linear head."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int, pool: Pool) -> None:
        super().__init__()
        self.encoder, self.pool = encoder, pool
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        tokens = encoder_tokens(self.encoder, x, self.pool)
        return self.head(self.norm(pool_tokens(self.encoder, tokens, self.pool)))


def _param_groups(model: PooledClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """Layer-decayed groups of the encoder (when it has timm's ``group_matcher``) + the head's."""
    enc = model.encoder
    if hasattr(enc, "group_matcher"):
        groups = param_groups_layer_decay(enc, weight_decay, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(enc, weight_decay)
    head = param_groups_weight_decay(nn.ModuleList([model.norm, model.head]), weight_decay)
    return [{"lr_scale": 1.0, **g} for g in groups + head]


@dataclass(frozen=True)
class QuickFinetuneResult:
    """What ``quick_finetune`` measured: the test top-1, the epochs and steps it ran, and the
    seconds of its first epoch and of the whole run (evaluation included)."""

    top1: float
    epochs: int
    steps: int
    first_epoch_s: float
    time_s: float


def epochs_within_budget(budget_s: float, first_epoch_s: float) -> int:
    """How many epochs (the first one included) fit in ``budget_s`` seconds when each takes
    ``first_epoch_s``: ``floor(budget_s / first_epoch_s)``, at least 1.

    The first epoch is the slowest (kernels and caches warm up during it), so the count errs on the
    short side; the final evaluation is not counted.

    Raises:
        ValueError: a budget that is not positive or a negative epoch time.
    """
    if not budget_s > 0 or first_epoch_s < 0:
        raise ValueError(f"need budget_s > 0 and first_epoch_s >= 0, got {budget_s} and {first_epoch_s}")
    return max(1, math.floor(budget_s / max(first_epoch_s, 1e-9) + 1e-9))


def _lr(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``peak`` to 0 at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start`` once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def quick_finetune(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    normalize: nn.Module,
    settings: SmallFinetuneSettings = SmallFinetuneSettings(),
    crop_scale: tuple[float, float] = (1.0, 1.0),
    pool: Pool | None = None,
    amp_dtype: torch.dtype | None = None,
    budget_s: float | None = None,
) -> QuickFinetuneResult:
    """Fine-tune a copy of ``encoder`` on ``train`` and measure its top-1 accuracy on ``test``.

    Args:
        encoder: a dmjd / timm encoder (``forward_features``); it is copied, not changed.
        train, test: ``(uint8 images [N, C, H, W], int64 labels [N])`` on the training device,
            images at the encoder's input size (``images_in_memory`` makes them from data sets).
        normalize: the encoder's mean/std normalisation (a module on that device).
        settings: the recipe (see the module docstring); ``settings.seed`` seeds the head, the
            order and the augmentation.
        crop_scale: random-resized-crop area range; (1, 1) keeps the whole image.
        pool: ``avg`` / ``cls`` / ``avg_fc_norm``; None = ``default_pool(encoder)``.
        amp_dtype: autocast dtype (bf16 on a GPU) or None.
        budget_s: a time budget in seconds instead of ``settings.epochs``: the first epoch (all
            warmup, so no schedule depends on the count yet) is timed and ``epochs_within_budget``
            sets the count.

    Returns:
        The result; a ``ChanceLevelWarning`` says when its top-1 is no better than always
        answering the test split's most frequent class: the fine-tuning learned nothing (too few
        labels or steps for this encoder, or an lr that diverged), so the figure says nothing about
        the encoder.

    Raises:
        InputError: ``budget_s`` with ``settings.warmup_epochs`` below 1.
    """
    s = settings
    if budget_s is not None and s.warmup_epochs < 1:
        raise InputError(f"a time budget needs warmup_epochs >= 1 (the epoch count is set after the first "
                         f"epoch, during warmup), got {s.warmup_epochs}")  # fmt: skip
    images, labels = train
    device = images.device
    torch.manual_seed(s.seed)
    dim = getattr(encoder, "num_features", None) or cast(int, encoder.embed_dim)
    model = PooledClassifier(copy.deepcopy(encoder), dim, int(labels.max()) + 1, pool or default_pool(encoder))
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(model, s.weight_decay, s.layer_decay), lr=0.0, betas=(0.9, 0.999))
    steps_per_epoch = max(len(images) // s.batch_size, 1)
    warmup = int(s.warmup_epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    size = images.shape[-1]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    epochs = s.epochs if budget_s is None else 1  # under a budget: 1 until the first epoch is timed
    step, epoch, first_epoch_s, start = 0, 0, 0.0, time.perf_counter()
    while epoch < epochs:
        order = torch.randperm(len(images), generator=gen, device=device)
        for ids in order[: steps_per_epoch * s.batch_size].view(steps_per_epoch, -1):
            for g in optimizer.param_groups:
                g["lr"] = _lr(step, s.peak_lr(), warmup, epochs * steps_per_epoch) * g["lr_scale"]
            boxes = random_resized_crop_params(len(ids), size, size, crop_scale, generator=gen)
            flip = torch.rand(len(ids), generator=gen, device=device) < 0.5
            x = normalize(resized_crop(images[ids], boxes, size, "bicubic", flip))
            with autocast:
                loss = F.cross_entropy(model(x).float(), labels[ids], label_smoothing=s.smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        epoch += 1
        if epoch == 1:
            first_epoch_s = _elapsed(start, device)
            epochs = s.epochs if budget_s is None else epochs_within_budget(budget_s, first_epoch_s)
    top1 = evaluate_top1(model, test, normalize, s.batch_size, amp_dtype)
    warn_if_at_chance(top1, test[1], "quick fine-tuning", "too few labels or steps for this encoder, or the lr "
                      "diverged: try more epochs or a lower blr, and compare with a linear probe")  # fmt: skip
    return QuickFinetuneResult(top1, epochs, step, first_epoch_s, _elapsed(start, device))


def quick_finetune_top1(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    normalize: nn.Module,
    crop_scale: tuple[float, float] = (1.0, 1.0),
    pool: Pool | None = None,
    amp_dtype: torch.dtype | None = None,
    **recipe: Any,
) -> float:
    """``quick_finetune``'s top-1, with the recipe as keywords (``SmallFinetuneSettings``'s fields:
    ``epochs``, ``batch_size``, ``blr``, ``seed``, ...; the rest keep their defaults)."""
    settings = SmallFinetuneSettings(**recipe)
    return quick_finetune(encoder, train, test, normalize, settings, crop_scale, pool, amp_dtype).top1


@torch.no_grad()
def evaluate_top1(
    model: nn.Module, test: tuple[Tensor, Tensor], normalize: nn.Module, batch_size: int, amp_dtype: torch.dtype | None
) -> float:
    """Top-1 accuracy of ``model`` on uint8 test images (no augmentation)."""
    model.eval()
    images, labels = test
    autocast = torch.autocast(images.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    correct = torch.zeros((), device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        with autocast:
            correct += (model(normalize(x.float() / 255)).argmax(-1) == y).sum()
    return float(correct) / len(images)
