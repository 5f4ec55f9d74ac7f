"""End-to-end fine-tuning of a pre-trained encoder: the MAE recipe, built from timm's pieces.

The classifier is timm's ``VisionTransformer`` of the encoder's architecture with global average
pooling (``fc_norm`` after pooling, as MAE) and a new head. Training: AdamW with layer-wise
learning-rate decay (timm's ``param_groups_layer_decay``), drop path, RandAugment and random
erasing (timm's ``create_transform``), Mixup/CutMix with label smoothing (timm's ``Mixup`` and
``SoftTargetCrossEntropy``), per-iteration warmup + half-cycle cosine; top-1 on the validation
split after every epoch; ``checkpoint-last.pth`` after every epoch, resumable.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import v2
from tqdm import tqdm

import dmjd
from dmjd.data import eval_transform
from dmjd.data.transforms import ToChannels
from dmjd.engine import checkpoint as ckpt
from dmjd.engine.metrics import MetricsLogger
from dmjd.engine.optim import lr_at, set_lr
from dmjd.engine.trainer import NonFiniteLossError, autocast_dtype, prepare_output_dir, seed_everything
from dmjd.eval.loading import InputSpec

GlobalPool = Literal["avg", "token"]


@dataclass(frozen=True)
class FinetuneSettings:
    """Hyper-parameters of the MAE fine-tuning recipe (MAE's ViT-B defaults)."""

    epochs: int = field(default=100, metadata={"help": "training epochs"})
    warmup_epochs: float = field(default=5.0, metadata={"help": "linear warmup epochs"})
    batch_size: int = field(default=64, metadata={"help": "images per step (even when mixing)"})
    blr: float = field(default=5e-4, metadata={"help": "base learning rate; lr = blr * batch / 256"})
    lr: float | None = field(default=None, metadata={"help": "absolute learning rate (overrides blr)", "type": float})
    min_lr: float = field(default=1e-6, metadata={"help": "final learning rate of the cosine"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/norms/tokens)"})
    layer_decay: float = field(default=0.65, metadata={"help": "layer-wise lr decay (MAE: 0.65 B, 0.75 L/H)"})
    drop_path: float = field(default=0.1, metadata={"help": "stochastic depth rate"})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha (0 = off)"})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 = off)"})
    smoothing: float = field(default=0.1, metadata={"help": "label smoothing"})
    rand_augment: str = field(default="rand-m9-mstd0.5-inc1", metadata={"help": "timm RandAugment spec ('none' = off)"})
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability"})
    global_pool: GlobalPool = field(default="avg", metadata={"help": "classifier pooling", "choices": ("avg", "token")})
    clip_grad: float | None = field(default=None, metadata={"help": "gradient norm clip", "type": float})
    seed: int = field(default=0, metadata={"help": "seed of data order, augmentation and the head"})
    log_interval: int = field(default=20, metadata={"help": "steps between metric lines"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0 or self.log_interval < 1:
            raise ValueError("fine-tuning needs epochs >= 1, batch_size >= 1, warmup_epochs >= 0, log_interval >= 1")
        if self.mixing and self.batch_size % 2:
            raise ValueError(f"Mixup/CutMix need an even batch size, got {self.batch_size}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    @property
    def mixing(self) -> bool:
        """Whether Mixup or CutMix is on."""
        return self.mixup > 0 or self.cutmix > 0

    def peak_lr(self) -> float:
        """``lr`` when given, else ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256


def classifier_kwargs(encoder: nn.Module, num_classes: int, settings: FinetuneSettings) -> dict[str, Any]:
    """``VisionTransformer`` keyword arguments: the encoder's architecture with a classifier.

    Raises:
        ValueError: the encoder cannot describe itself to timm (no ``timm_kwargs``).
    """
    if not hasattr(encoder, "timm_kwargs"):
        raise ValueError(
            f"fine-tuning builds timm's VisionTransformer and needs a ViT encoder (model.arch=vit), "
            f"got {type(encoder).__name__}"
        )
    return {
        **encoder.timm_kwargs(),
        "num_classes": num_classes,
        "global_pool": settings.global_pool,
        "drop_path_rate": settings.drop_path,
    }


def load_encoder_weights(model: VisionTransformer, weights: dict[str, Tensor]) -> None:
    """Load pre-trained encoder weights into a classifier with an explicit allow-list.

    The new head (and ``fc_norm`` with average pooling) may be missing; the encoder's final
    ``norm`` is unused with average pooling (timm replaces it by ``fc_norm``). Anything else
    missing or unexpected is an error, unlike a bare ``strict=False``.

    Raises:
        CheckpointError: shapes differ, or keys outside the allow-list are missing/unexpected.
    """
    avg = model.global_pool == "avg"
    may_miss = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if avg else set())
    may_extra = {"norm.weight", "norm.bias"} if avg else set()
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"encoder weights do not fit the classifier: {err}") from None
    missing, extra = set(result.missing_keys) - may_miss, set(result.unexpected_keys) - may_extra
    if missing or extra:
        raise ckpt.CheckpointError(
            f"encoder weights do not fit the classifier: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def build_classifier(kwargs: dict[str, Any], encoder_weights: dict[str, Tensor] | None = None) -> VisionTransformer:
    """The fine-tuning model; the head starts near zero (std 2e-5, as MAE)."""
    model = VisionTransformer(**kwargs)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    return model


def finetune_transforms(spec: InputSpec, settings: FinetuneSettings) -> tuple[transforms.Compose, v2.Compose]:
    """Train (random-resized crop, flip, RandAugment, normalise, random erasing) and validation
    (resize + centre crop, normalise) transforms; both output normalised ``[C, H, W]`` tensors."""
    aa = None if settings.rand_augment.lower() == "none" else settings.rand_augment
    train = create_transform(
        input_size=(spec.in_chans, spec.img_size, spec.img_size),
        is_training=True,
        color_jitter=None,
        auto_augment=aa,
        interpolation="bicubic",
        re_prob=settings.reprob,
        re_mode="pixel",
        re_count=1,
        mean=spec.mean,
        std=spec.std,
    )
    val = v2.Compose([eval_transform(spec.img_size, spec.in_chans), v2.Normalize(spec.mean, spec.std)])
    return transforms.Compose([ToChannels(spec.in_chans), train]), val


class Finetuner:
    """Fine-tune a pre-trained encoder: ``Finetuner(encoder, train, val, num_classes, settings, out).fit()``.

    Args:
        encoder: a dmjd encoder (``timm_kwargs()``) with pre-trained weights.
        train_set, val_set: items ``(normalised image, label, ...)`` (see ``finetune_transforms``).
        num_classes: classifier outputs.
        output_dir: ``metrics.jsonl`` and ``checkpoint-last.pth`` go here.
        resume: a fine-tuning checkpoint, ``"auto"`` (this folder's, if any) or None.
        overwrite: replace a fine-tuning run already in ``output_dir``.

    Raises:
        OutputDirError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: the resumed checkpoint is not a fine-tuning checkpoint of this model.
        ValueError: the training split is smaller than one batch, or the encoder is not a ViT.
    """

    def __init__(
        self,
        encoder: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        num_classes: int,
        settings: FinetuneSettings,
        output_dir: str | Path,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        resume: str | Path | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.settings, self.device, self.progress = settings, torch.device(device), progress
        self.output_dir, self.num_workers = Path(output_dir), num_workers
        self.train_set, self.val_set = train_set, val_set
        n_train = len(train_set)  # type: ignore[arg-type]
        self.steps_per_epoch = n_train // settings.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n_train} training images are fewer than one batch of {settings.batch_size}")
        self.model_kwargs = classifier_kwargs(encoder, num_classes, settings)
        resume_path = ckpt.latest_checkpoint(self.output_dir) if str(resume) == "auto" else resume
        prepare_output_dir(self.output_dir, resume is not None, overwrite, is_main=True)
        seed_everything(settings.seed)
        self.model = build_classifier(self.model_kwargs, encoder.state_dict()).to(self.device)
        groups = param_groups_layer_decay(
            self.model, settings.weight_decay, self.model.no_weight_decay(), layer_decay=settings.layer_decay
        )
        self.optimizer = torch.optim.AdamW(groups, lr=settings.peak_lr())
        self.mixup = (
            Mixup(settings.mixup, settings.cutmix, label_smoothing=settings.smoothing, num_classes=num_classes)
            if settings.mixing
            else None
        )
        self.criterion: nn.Module = (
            SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=settings.smoothing)
        )
        self.amp = autocast_dtype("auto", self.device)
        self.epoch, self.step, self.best_top1 = 0, 0, 0.0
        if resume_path is not None:
            self._restore(resume_path)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def _lr(self) -> float:
        s = self.settings
        total = self.steps_per_epoch * s.epochs
        warmup = int(round(s.warmup_epochs * self.steps_per_epoch))
        return lr_at(self.step, total, warmup, s.peak_lr(), s.min_lr)

    def train_epoch(self, logger: MetricsLogger, run_start: float) -> float:
        """One epoch; returns its mean training loss.

        Data order, augmentation, mixing and drop path are seeded by ``(seed, epoch)``, so a
        resumed run repeats exactly what an uninterrupted one does.

        Raises:
            NonFiniteLossError: the loss over a logging window is not finite.
        """
        s, epoch = self.settings, self.epoch
        seed_everything(s.seed * 100_003 + epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=s.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch),
            pin_memory=self.device.type == "cuda",
        )
        self.model.train()
        window, epoch_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for i, (images, labels, *_) in enumerate(
            tqdm(loader, desc=f"finetune epoch {epoch}", leave=False, disable=not self.progress)
        ):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            targets: Tensor = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            set_lr(self.optimizer, self._lr())
            with self._autocast():
                logits = self.model(images)
            loss = self.criterion(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
            self.optimizer.step()
            self.step += 1
            window += loss.detach()
            epoch_sum += loss.detach()
            if (i + 1) % s.log_interval == 0 or i + 1 == self.steps_per_epoch:
                count = (i % s.log_interval) + 1
                mean = (window / count).item()
                if not math.isfinite(mean):
                    raise NonFiniteLossError(
                        f"non-finite fine-tuning loss at step {self.step}; lower --blr or set --clip-grad, "
                        "then resume from the last checkpoint"
                    )
                logger.log({"kind": "train", "epoch": epoch, "step": self.step, "loss": mean,
                            "lr": self._lr(), "time": round(time.perf_counter() - run_start, 3)})  # fmt: skip
                window.zero_()
        return (epoch_sum / self.steps_per_epoch).item()

    @torch.no_grad()
    def evaluate(self, batch_size: int = 256) -> dict[str, float]:
        """Top-1 (fraction) and cross-entropy of the classifier on the validation split."""
        loader = DataLoader(self.val_set, batch_size=batch_size, num_workers=self.num_workers)
        self.model.eval()
        correct, loss_sum, n = 0, 0.0, 0
        for images, labels, *_ in loader:
            images, labels = images.to(self.device), labels.to(self.device)
            with self._autocast():
                logits = self.model(images).float()
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            n += labels.shape[0]
        return {"top1": correct / n, "val_loss": loss_sum / n}

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluating and saving after each; returns the summary."""
        s = self.settings
        logger = MetricsLogger(self.output_dir, tensorboard=False)
        start = time.perf_counter()
        try:
            result = self.evaluate() if self.epoch >= s.epochs else {}
            while self.epoch < s.epochs:
                loss = self.train_epoch(logger, start)
                logger.log({"kind": "epoch", "epoch": self.epoch, "step": self.step, "loss": loss})
                self.epoch += 1
                result = self.evaluate()
                self.best_top1 = max(self.best_top1, result["top1"])
                logger.log({"kind": "eval", "epoch": self.epoch, "step": self.step, **result})
                ckpt.save_checkpoint(self.state_dict(), self.output_dir / ckpt.LAST)
        finally:
            logger.close()
        return {
            "kind": "finetune",
            "finetune_top1": result["top1"],
            "finetune_best_top1": max(self.best_top1, result["top1"]),
            "val_loss": result["val_loss"],
            "epochs": self.epoch,
            "steps": self.step,
            "lr": s.peak_lr(),
            "train_images": len(self.train_set),  # type: ignore[arg-type]
            "val_images": len(self.val_set),  # type: ignore[arg-type]
            "time_s": round(time.perf_counter() - start, 2),
            "checkpoint": str(self.output_dir / ckpt.LAST),
        }

    def state_dict(self) -> dict[str, Any]:
        """A fine-tuning checkpoint: classifier, optimizer, position, settings, architecture."""
        return {
            "kind": "finetune",
            "model": self.model.state_dict(),
            "model_kwargs": self.model_kwargs,
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_top1": self.best_top1,
            "settings": asdict(self.settings),
            "dmjd_version": dmjd.__version__,
        }

    def _restore(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path)
        if state.get("kind") != "finetune":
            raise ckpt.CheckpointError(f"{path} is not a dmjd fine-tuning checkpoint")
        if state.get("model_kwargs") != self.model_kwargs:
            raise ckpt.CheckpointError(
                f"{path} fine-tuned another model ({state.get('model_kwargs')}), not {self.model_kwargs}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best_top1 = state["epoch"], state["step"], state["best_top1"]
