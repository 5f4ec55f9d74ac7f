"""End-to-end fine-tuning of a pre-trained encoder: the MAE recipe, built from timm's pieces.

The classifier of a ViT encoder is timm's ``VisionTransformer`` of the encoder's architecture
with global average pooling (``fc_norm`` after pooling, as MAE) and a new head; that of a ConViT
encoder is ConvMAE's fine-tuning classifier (``ConViTClassifier``). Training: AdamW with
layer-wise learning-rate decay (timm's ``param_groups_layer_decay`` over the model's
``group_matcher``), drop path, RandAugment and random erasing (timm's ``create_transform``),
Mixup/CutMix with label smoothing (timm's ``Mixup`` and ``SoftTargetCrossEntropy``),
per-iteration warmup + half-cycle cosine; top-1 on the validation split after every epoch;
``checkpoint-last.pth`` after every epoch, resumable.

Under torchrun the run is data-parallel (DistributedDataParallel, gloo on CPU, NCCL on GPU):
``batch_size`` is per process, the learning rate follows the global batch, each process draws
its own augmentation, the validation split is sharded and top-1 summed over processes, and
only rank 0 writes metrics and checkpoints.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms
from torchvision.transforms import v2
from tqdm import tqdm

import dmjd
from dmjd.data import eval_transform
from dmjd.data.transforms import ToChannels
from dmjd.engine.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from dmjd.engine.faults import NonFiniteLossError
from dmjd.engine.metrics import MetricsLogger, bars_shown, progress_line
from dmjd.engine.optim import lr_at, set_lr
from dmjd.engine.run_dir import prepare_output_dir
from dmjd.engine.runtime import autocast_dtype, seed_everything
from dmjd.errors import InputError
from dmjd.eval.loading import InputSpec
from dmjd.eval.settings import FinetuneSettings
from dmjd.io import checkpoint as ckpt
from dmjd.models.convit import ConViT
from dmjd.models.encoder import TimmDescribed


class ConViTClassifier(nn.Module):
    """ConvMAE's fine-tuning classifier: a ConViT's stages on every token, mean pool, ``fc_norm``, head.

    As ConvMAE fine-tunes, the pre-training-only multi-scale fusion convolutions
    (``stage1_output_decode``, ``stage2_output_decode``) and the final ``norm`` are dropped: the
    stage-3 tokens are averaged and normalised by ``fc_norm``. Parameter names are the encoder's
    (``patch_embed1..4``, ``blocks1..3``, ``pos_embed``) plus ``fc_norm`` and ``head``, those of
    ConvMAE's fine-tuned checkpoints; layer-wise learning-rate decay uses the encoder's stages.
    """

    num_prefix_tokens = 0
    global_pool = "avg"
    # Encoder entries the classifier does not use (prefixes of state-dict keys).
    PRETRAINING_ONLY = ("stage1_output_decode.", "stage2_output_decode.", "norm.")

    def __init__(self, arch: dict[str, Any], num_classes: int, drop_path_rate: float = 0.0) -> None:
        """Build the classifier.

        Args:
            arch: ``ConViT.arch_kwargs()`` of the pre-trained encoder.
            num_classes: outputs of the new head.
            drop_path_rate: stochastic depth, rising linearly over all blocks.
        """
        super().__init__()
        encoder = ConViT(**arch, drop_path_rate=drop_path_rate)
        self.patch_embed1, self.blocks1 = encoder.patch_embed1, encoder.blocks1
        self.patch_embed2, self.blocks2 = encoder.patch_embed2, encoder.blocks2
        self.patch_embed3, self.patch_embed4 = encoder.patch_embed3, encoder.patch_embed4
        self.pos_embed, self.blocks3 = encoder.pos_embed, encoder.blocks3
        self._group_matcher, self._no_weight_decay = encoder.group_matcher(), encoder.no_weight_decay()
        self.num_features = encoder.embed_dim
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The encoder's layer grouping (embeddings and convolution stages, then each transformer
        block); ``fc_norm`` and ``head`` match nothing and form the top layer."""
        return self._group_matcher

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-d ones."""
        return set(self._no_weight_decay)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` normalised images -> ``[B, L, D]`` stage-3 tokens (no fusion, no norm)."""
        x = self.patch_embed1(x)
        for block in self.blocks1:
            x = block(x)
        x = self.patch_embed2(x)
        for block in self.blocks2:
            x = block(x)
        tokens = self.patch_embed4(self.patch_embed3(x).flatten(2).transpose(1, 2)) + self.pos_embed
        return self.blocks3(tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``[B, L, D]`` tokens -> ``[B, num_classes]`` logits (``[B, D]`` pooled features if ``pre_logits``)."""
        x = self.fc_norm(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, num_classes]`` logits."""
        return self.forward_head(self.forward_features(x))


Classifier = VisionTransformer | ConViTClassifier


def classifier_kwargs(encoder: nn.Module, num_classes: int, settings: FinetuneSettings) -> dict[str, Any]:
    """Keyword arguments of the classifier (``build_classifier``) for the encoder's architecture.

    A ViT gives ``VisionTransformer`` arguments; a ConViT gives ``{"arch": "convit", "arch_kwargs":
    ..., ...}`` (average pooling only: it has no class token).

    Raises:
        ValueError: an encoder that is neither a dmjd ViT (``timm_kwargs``) nor a ConViT.
        InputError: ``global_pool="token"`` for a ConViT.
    """
    if isinstance(encoder, ConViT):
        if settings.global_pool != "avg":
            raise InputError("a ConViT has no class token: fine-tune it with global_pool='avg'")
        return {"arch": "convit", "arch_kwargs": encoder.arch_kwargs(), "num_classes": num_classes,
                "drop_path_rate": settings.drop_path}  # fmt: skip
    if not hasattr(encoder, "timm_kwargs"):
        raise ValueError(
            f"fine-tuning needs a ViT (model.arch=vit) or ConViT (model.arch=convit) encoder, got {type(encoder).__name__}"
        )
    return {
        **cast(TimmDescribed, encoder).timm_kwargs(),
        "num_classes": num_classes,
        "global_pool": settings.global_pool,
        "drop_path_rate": settings.drop_path,
    }


def load_encoder_weights(model: Classifier, weights: dict[str, Tensor]) -> None:
    """Load pre-trained encoder weights into a classifier with an explicit allow-list.

    The new head (and ``fc_norm`` with average pooling) may be missing; the encoder's final
    ``norm`` is unused with average pooling (timm replaces it by ``fc_norm``), and a ConViT's
    multi-scale fusion convolutions are unused too (pre-training only). Anything else missing or
    unexpected is an error, unlike a bare ``strict=False``.

    Raises:
        CheckpointError: shapes differ, or keys outside the allow-list are missing/unexpected.
    """
    avg = model.global_pool == "avg"
    may_miss = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if avg else set())
    unused = ConViTClassifier.PRETRAINING_ONLY if isinstance(model, ConViTClassifier) else ("norm.",) if avg else ()
    may_extra = {key for key in weights if key.startswith(unused)}
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"encoder weights do not fit the classifier: {err}") from None
    missing, extra = set(result.missing_keys) - may_miss, set(result.unexpected_keys) - may_extra
    if missing or extra:
        raise ckpt.CheckpointError(
            f"encoder weights do not fit the classifier: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def build_classifier(kwargs: dict[str, Any], encoder_weights: dict[str, Tensor] | None = None) -> Classifier:
    """The fine-tuning model from ``classifier_kwargs``; the head starts near zero (std 2e-5, as MAE)."""
    model: Classifier
    if kwargs.get("arch") == "convit":
        model = ConViTClassifier(kwargs["arch_kwargs"], kwargs["num_classes"], kwargs["drop_path_rate"])
    else:
        model = VisionTransformer(**kwargs)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    head = cast(nn.Linear, model.head)  # num_classes > 0: a Linear head
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)
    return model


def _posterize_keeping_a_bit(img: Any, bits_to_keep: int, **kwargs: Any) -> Any:
    """timm's posterize, keeping at least one bit per channel."""
    return auto_augment.posterize(img, max(int(bits_to_keep), 1), **kwargs)


def keep_a_posterize_bit(transform: transforms.Compose) -> None:
    """Make the posterize ops of timm's RandAugment, AutoAugment or AugMix in ``transform`` keep
    at least one bit: timm maps the top magnitude of ``PosterizeIncreasing`` (reached by
    ``rand-m9-mstd0.5-inc1``'s noisy magnitudes) to 0 bits, a black image that current Pillow
    refuses ("bits must be between or equal to 1 and 8")."""
    for t in transform.transforms:
        ops = getattr(t, "ops", None) or [op for sub in getattr(t, "policy", []) for op in sub]
        for op in ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize_keeping_a_bit


def finetune_transforms(
    spec: InputSpec, settings: FinetuneSettings, background: str = "white"
) -> tuple[transforms.Compose, v2.Compose]:
    """Train (random-resized crop, flip, RandAugment, normalise, random erasing) and validation
    (resize + centre crop, normalise) transforms of images decoded on ``background`` (``to_mode``);
    both output normalised ``[C, H, W]`` tensors. Posterize keeps at least one bit (``keep_a_posterize_bit``)."""
    aa = None if settings.rand_augment.lower() == "none" else settings.rand_augment
    train = create_transform(
        input_size=(spec.in_chans, spec.img_size, spec.img_size),
        is_training=True,
        color_jitter=None,  # type: ignore[arg-type]  # timm's annotation omits None, which it reads as off
        auto_augment=aa,
        interpolation="bicubic",
        re_prob=settings.reprob,
        re_mode="pixel",
        re_count=1,
        mean=spec.mean,
        std=spec.std,
    )
    keep_a_posterize_bit(train)
    val = v2.Compose([eval_transform(spec.img_size, spec.in_chans, background=background), v2.Normalize(spec.mean, spec.std)])
    return transforms.Compose([ToChannels(spec.in_chans, background), train]), val


class Finetuner:
    """Fine-tune a pre-trained encoder: ``Finetuner(encoder, train, val, num_classes, settings, out).fit()``.

    Under torchrun (``WORLD_SIZE > 1``) every process builds the same ``Finetuner`` and the run is
    data-parallel; see the module docstring.

    Args:
        encoder: a dmjd ViT (``timm_kwargs()``) or ConViT encoder with pre-trained weights.
        train_set, val_set: items ``(normalised image, label, ...)`` (see ``finetune_transforms``).
        num_classes: classifier outputs.
        output_dir: ``metrics.jsonl`` and ``checkpoint-last.pth`` go here.
        device: the device; under torchrun on GPUs, each process takes ``cuda:LOCAL_RANK``.
        resume: a fine-tuning checkpoint or run folder (its newest), ``"auto"`` (this folder's,
            if any) or None.
        overwrite: replace a fine-tuning run already in ``output_dir``.
        progress: show a progress bar per epoch.
        tensorboard: also write TensorBoard logs (``output_dir/tensorboard``), when installed.

    Raises:
        OutputDirError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: the resumed checkpoint is not a fine-tuning checkpoint of this model.
        InputError: the training split is smaller than one global batch.
        ValueError: the encoder is neither a ViT nor a ConViT.
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
        tensorboard: bool = True,
    ) -> None:
        self.settings, self.device = settings, torch.device(device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress, self.tensorboard = progress and self.dist.is_main, tensorboard
        self.output_dir, self.num_workers = Path(output_dir), num_workers
        self.train_set, self.val_set = train_set, val_set
        n_train, world = len(train_set), self.dist.world_size  # type: ignore[arg-type]
        self.global_batch = settings.batch_size * world
        self.steps_per_epoch = n_train // self.global_batch
        if self.steps_per_epoch < 1:
            raise InputError(
                f"{n_train} training images are fewer than one global batch of {self.global_batch} "
                f"(batch_size {settings.batch_size} x {world} processes)"
            )
        self.peak_lr = settings.peak_lr(world)
        self.model_kwargs = classifier_kwargs(encoder, num_classes, settings)
        if str(resume) == "auto":
            resume_path = ckpt.latest_checkpoint(self.output_dir)
        else:
            resume_path = None if resume is None else ckpt.resolve_checkpoint(resume)
        if str(resume) == "auto" and resume_path is None and self.dist.is_main:
            print(f"dmjd: no checkpoint in {self.output_dir}, starting fresh")
        prepare_output_dir(self.output_dir, resume is not None, overwrite, self.dist.is_main)
        barrier(self.dist)
        seed_everything(settings.seed)
        self.model = build_classifier(self.model_kwargs, encoder.state_dict()).to(self.device)
        groups = param_groups_layer_decay(
            self.model, settings.weight_decay, self.model.no_weight_decay(), layer_decay=settings.layer_decay
        )
        self.optimizer = torch.optim.AdamW(groups, lr=self.peak_lr)
        self.mixup = (
            Mixup(settings.mixup, settings.cutmix, label_smoothing=settings.smoothing, num_classes=num_classes)
            if settings.mixing
            else None
        )
        self.criterion: nn.Module = (
            SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=settings.smoothing)
        )
        self.amp = autocast_dtype("auto", self.device)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            train_set, num_replicas=world, rank=self.dist.rank, shuffle=True, seed=settings.seed, drop_last=True
        )
        self.epoch, self.step, self.best_top1 = 0, 0, 0.0
        if resume_path is not None:
            self._restore(resume_path)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            index = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=index)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def _lr(self) -> float:
        s = self.settings
        total = self.steps_per_epoch * s.epochs
        warmup = int(round(s.warmup_epochs * self.steps_per_epoch))
        return lr_at(self.step, total, warmup, self.peak_lr, s.min_lr)

    def train_epoch(self, logger: MetricsLogger | None, run_start: float) -> float:
        """One epoch; returns its mean training loss over every process.

        Data order is seeded by ``(seed, epoch)`` and shared by the processes (each takes its
        shard); augmentation, mixing and drop path by ``(seed, epoch, rank)``. So a resumed run
        repeats exactly what an uninterrupted one does.

        Args:
            logger: where rank 0 writes; None on the other ranks.
            run_start: ``time.perf_counter()`` at the start of the run.

        Raises:
            NonFiniteLossError: the loss over a logging window is not finite.
        """
        s, epoch = self.settings, self.epoch
        seed_everything((s.seed * 100_003 + epoch) * self.dist.world_size + self.dist.rank)
        self.sampler.set_epoch(epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=s.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.model.train()
        window, epoch_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for i, (images, labels, *_) in enumerate(
            tqdm(loader, desc=f"finetune epoch {epoch + 1}/{s.epochs}", leave=False, disable=not bars_shown(self.progress))
        ):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            targets: Tensor = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            set_lr(self.optimizer, self._lr())
            with self._autocast():
                logits = self.train_model(images)
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
                mean = (all_reduce_mean(window, self.dist) / count).item()
                if not math.isfinite(mean):
                    raise NonFiniteLossError(
                        f"non-finite fine-tuning loss at step {self.step}; lower --blr or set --clip-grad, "
                        "then resume from the last checkpoint"
                    )
                if logger is not None:
                    logger.log({"kind": "train", "epoch": epoch + 1, "step": self.step, "loss": mean,
                                "lr": self._lr(), "time": round(time.perf_counter() - run_start, 3)})  # fmt: skip
                window.zero_()
        return (all_reduce_mean(epoch_sum, self.dist) / self.steps_per_epoch).item()

    @torch.no_grad()
    def evaluate(self, batch_size: int = 256) -> dict[str, float]:
        """Top-1 (fraction) and cross-entropy of the classifier on the validation split.

        Each process evaluates every ``world_size``-th image (each image exactly once) and the
        counts are summed over processes, so every rank returns the top-1 of the whole split.
        """
        n_val = len(self.val_set)  # type: ignore[arg-type]
        shard = Subset(self.val_set, range(self.dist.rank, n_val, self.dist.world_size))
        loader = DataLoader(shard, batch_size=batch_size, num_workers=self.num_workers)
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, loss sum, images
        for images, labels, *_ in loader:
            images, labels = images.to(self.device), labels.to(self.device)
            with self._autocast():
                logits = self.model(images).float()
            totals[0] += (logits.argmax(1) == labels).sum()
            totals[1] += F.cross_entropy(logits, labels, reduction="sum")
            totals[2] += labels.shape[0]
        if self.dist.enabled:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        correct, loss_sum, n = totals.tolist()
        return {"top1": correct / n, "val_loss": loss_sum / n}

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluating and saving after each; returns the summary
        (the same on every process; rank 0 logs and saves)."""
        s, main = self.settings, self.dist.is_main
        logger = MetricsLogger(self.output_dir, tensorboard=self.tensorboard) if main else None
        start = time.perf_counter()
        try:
            result = self.evaluate() if self.epoch >= s.epochs else {}
            while self.epoch < s.epochs:
                loss = self.train_epoch(logger, start)
                epoch_record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step, "loss": loss, "lr": self._lr()}
                self.epoch += 1
                result = self.evaluate()
                self.best_top1 = max(self.best_top1, result["top1"])
                if logger is not None:
                    eval_record = {"kind": "eval", "epoch": self.epoch, "step": self.step, **result,
                                   "time": round(time.perf_counter() - start, 3)}  # fmt: skip
                    for record in (epoch_record, eval_record):
                        logger.log(record)
                        logger.print(progress_line(record, s.epochs))
                self.save()
        finally:
            if logger is not None:
                logger.close()
        return {
            "kind": "finetune",
            "finetune_top1": result["top1"],
            "finetune_best_top1": max(self.best_top1, result["top1"]),
            "val_loss": result["val_loss"],
            "epochs": self.epoch,
            "steps": self.step,
            "lr": self.peak_lr,
            "batch_size": self.global_batch,
            "world_size": self.dist.world_size,
            "train_images": len(self.train_set),  # type: ignore[arg-type]
            "val_images": len(self.val_set),  # type: ignore[arg-type]
            "time_s": round(time.perf_counter() - start, 2),
            "checkpoint": str(self.output_dir / ckpt.LAST),
        }

    def save(self) -> None:
        """Write ``checkpoint-last.pth`` from rank 0, every process waiting before and after."""
        barrier(self.dist)
        if self.dist.is_main:
            ckpt.save_checkpoint(self.state_dict(), self.output_dir / ckpt.LAST)
        barrier(self.dist)

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
            "world_size": self.dist.world_size,
            "dmjd_version": dmjd.__version__,
        }

    def _restore(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path, expected="a dmjd fine-tuning checkpoint (<output-dir>/checkpoint-last.pth)")
        if state.get("kind") != "finetune":
            raise ckpt.CheckpointError(f"{path} is not a dmjd fine-tuning checkpoint")
        if state.get("model_kwargs") != self.model_kwargs:
            raise ckpt.CheckpointError(
                f"{path} fine-tuned another model ({state.get('model_kwargs')}), not {self.model_kwargs}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best_top1 = state["epoch"], state["best_top1"]
        # Saved at epoch ends: recount the steps for this run's global batch (any process count).
        self.step = self.epoch * self.steps_per_epoch
