"""Hyper-parameters of the trained evaluation protocols (linear probe, fine-tuning).

Plain dataclasses without torch, so the command line builds its options from them quickly. Each
field's ``metadata`` holds its ``help`` (and ``type`` / ``choices`` where the default does not say).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from dmjd.errors import InputError

GlobalPool = Literal["avg", "token"]


@dataclass(frozen=True)
class ProbeSettings:
    """Hyper-parameters of the MAE linear-probe protocol (MAE's values unless noted).

    Raises:
        InputError: epochs or batch size below 1, negative warmup, unknown optimizer.
    """

    epochs: int = field(default=90, metadata={"help": "training epochs"})
    warmup_epochs: float = field(default=10.0, metadata={"help": "linear warmup epochs"})
    batch_size: int = field(default=256, metadata={"help": "probe batch (MAE: 16384 on ImageNet)"})
    blr: float = field(default=0.1, metadata={"help": "base learning rate; lr = blr * batch / 256"})
    lr: float | None = field(default=None, metadata={"help": "absolute learning rate (overrides blr)", "type": float})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the head's weight"})
    optimizer: Literal["sgd", "lars"] = field(
        default="sgd", metadata={"help": "optimizer (MAE: lars with batch 16384)", "choices": ("sgd", "lars")}
    )
    momentum: float = field(default=0.9, metadata={"help": "momentum"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialisation and the batch order"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise InputError("linear probe needs epochs >= 1, batch_size >= 1 and warmup_epochs >= 0")
        if self.optimizer not in ("lars", "sgd"):
            raise InputError(f"unknown probe optimizer {self.optimizer!r}; choose 'lars' or 'sgd'")

    def peak_lr(self, batch_size: int) -> float:
        """``lr`` when given, else ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * batch_size / 256


@dataclass(frozen=True)
class FinetuneSettings:
    """Hyper-parameters of the MAE fine-tuning recipe (MAE's ViT-B defaults).

    Raises:
        InputError: epochs, batch size or log interval below 1, negative warmup, an odd batch
            with Mixup/CutMix, layer decay outside (0, 1].
    """

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
            raise InputError("fine-tuning needs epochs >= 1, batch_size >= 1, warmup_epochs >= 0, log_interval >= 1")
        if self.mixing and self.batch_size % 2:
            raise InputError(f"Mixup/CutMix need an even batch size, got {self.batch_size}")
        if not 0 < self.layer_decay <= 1:
            raise InputError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    @property
    def mixing(self) -> bool:
        """Whether Mixup or CutMix is on."""
        return self.mixup > 0 or self.cutmix > 0

    def peak_lr(self, world_size: int = 1) -> float:
        """``lr`` when given, else ``blr * global batch / 256`` (global batch = ``batch_size * world_size``)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size * world_size / 256


@dataclass(frozen=True)
class SmallFinetuneSettings:
    """Hyper-parameters of the small-data fine-tuning recipe (``dmjd.eval.quick_finetune``).

    Swept on 2,000 Fashion-MNIST labels (the sweep is in ``dmjd.eval.quick_finetune``'s docstring).

    Raises:
        InputError: epochs or batch size below 1, negative warmup, layer decay outside (0, 1].
    """

    epochs: int = field(default=10, metadata={"help": "training epochs"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warmup epochs"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    blr: float = field(default=1.6e-2, metadata={"help": "base learning rate; lr = blr * batch / 256"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/norms)"})
    layer_decay: float = field(default=0.75, metadata={"help": "layer-wise lr decay"})
    smoothing: float = field(default=0.0, metadata={"help": "label smoothing"})
    seed: int = field(default=0, metadata={"help": "seed of the head, the order and the augmentation"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise InputError("fine-tuning needs epochs >= 1, batch_size >= 1 and warmup_epochs >= 0")
        if not 0 < self.layer_decay <= 1:
            raise InputError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    def peak_lr(self) -> float:
        """``blr * batch_size / 256``."""
        return self.blr * self.batch_size / 256


RECIPES: dict[str, type[FinetuneSettings] | type[SmallFinetuneSettings]] = {
    "mae": FinetuneSettings,
    "small": SmallFinetuneSettings,
}
IMAGENET_IMG_SIZE = 224  # the paper's presets' input: the scale MAE's recipe was made for


def choose_recipe(recipe: str, img_size: int, resuming: bool = False) -> tuple[str, str]:
    """The fine-tuning recipe to run and why: ``auto`` is ``mae`` for ImageNet-scale encoders
    (input of 224 px or more, as the paper's presets) or when ``resuming`` (continuing or replacing
    a fine-tuning run: only ``mae`` keeps one), and ``small`` otherwise, where MAE's regularisers
    and 100 epochs leave a few thousand images at chance.

    Raises:
        InputError: an unknown recipe.
    """
    if recipe in RECIPES:
        return recipe, f"--recipe {recipe}"
    if recipe != "auto":
        raise InputError(f"unknown fine-tuning recipe {recipe!r}; choose auto, {', '.join(RECIPES)}")
    if resuming:
        return "mae", "auto: --resume / --overwrite continue or replace a fine-tuning run, which only mae keeps"
    if img_size >= IMAGENET_IMG_SIZE:
        return "mae", f"auto: the encoder's input is {img_size} px, ImageNet scale (>= {IMAGENET_IMG_SIZE} px)"
    return "small", (f"auto: the encoder's input is {img_size} px, below ImageNet scale ({IMAGENET_IMG_SIZE} px); "
                     "--recipe mae runs MAE's recipe")  # fmt: skip


def recipe_settings(recipe: str, given: dict[str, Any]) -> FinetuneSettings | SmallFinetuneSettings:
    """The settings of ``recipe`` with the options ``given`` (field name -> value); the rest keep
    the recipe's defaults.

    Raises:
        InputError: an option the recipe does not have (e.g. ``mixup`` for ``small``), or a value
            the recipe refuses.
    """
    cls = RECIPES[recipe]
    foreign = [name for name in given if name not in {f.name for f in fields(cls)}]
    if foreign:
        options = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise InputError(f"{options}: not an option of --recipe {recipe} (only of "
                         f"{', '.join(r for r in RECIPES if r != recipe)})")  # fmt: skip
    return cls(**given)
