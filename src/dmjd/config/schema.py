"""The configuration schema: every key, its type, its default and its allowed values.

Configs are data: defaults here < a YAML preset < dotted command-line overrides. Unknown keys and
invalid values are rejected before anything heavy starts (pydantic, ``extra="forbid"``), and the
cross-key rules (image size vs patch size, masking combinations, HOG cells vs patches) are checked
by building the lightweight objects they describe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dmjd.config.duration import parse_duration

if TYPE_CHECKING:
    from dmjd.masking import DisjointMasking

ModelSize = Literal["tiny", "small", "base", "large", "huge"]


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Encoder backbone and the two branches (masked prediction, visible distillation)."""

    arch: Literal["vit", "convit"] = "vit"
    init: str | None = Field(
        None,
        description="start from these weights: an official MAE / ConvMAE / DMJD checkpoint, timm ViT weights "
        "(.safetensors, .pth, .bin), timm:MODEL_NAME, a Hugging Face ViTMAE folder, a dmjd checkpoint, run folder "
        "or export; the architecture comes from it (docs/evaluation.md)",
    )
    style: Literal["mae", "simmim"] = Field(
        "mae",
        description="mae: encoder sees visible tokens, decoder_* branch predicts; simmim: encoder "
        "sees all tokens with a mask token, a linear head predicts (SimMIM, MaskFeat, BEiT)",
    )
    size: ModelSize = "base"
    img_size: int = Field(224, ge=8)
    patch_size: int = Field(16, ge=1)
    in_chans: Literal[1, 3] = 3
    embed_dim: int | None = Field(None, ge=8, description="override the size preset's width")
    depth: int | None = Field(None, ge=1, description="override the size preset's depth")
    num_heads: int | None = Field(None, ge=1, description="override the size preset's heads")
    mlp_ratios: tuple[float, float, float] | None = Field(
        None,
        description="ConViT: MLP ratios of stages 1-3; null = the size preset's (base/large: the "
        "official DMJD 8, 8, 4; ConvMAE-B: 4, 4, 4)",
    )
    decoder_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(8, ge=0)
    decoder_heads: int = Field(16, ge=1)
    decoder_mlp_ratio: float = Field(4.0, gt=0, description="decoder MLP ratio (official ConViT decoder: 8)")
    vdb: bool = Field(True, description="visible distillation branch on/off (joint distillation)")
    vdb_hidden: int = Field(512, ge=8)
    projector: Literal["nonlinear", "linear"] = "nonlinear"
    grad_checkpointing: bool = False


class MaskingConfig(_Section):
    """Disjoint masking: K views per image, each masking m_corr, their union m_pred."""

    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="corruption rate m_corr per view")
    num_views: int = Field(1, ge=1, description="K masked views per image")
    pred_ratio: float | None = Field(None, gt=0.0, le=1.0, description="prediction rate m_pred; null = min(1, K * m_corr)")
    pattern: Literal["random", "block", "rectangle"] = "random"
    block_size: int = Field(2, ge=1, description="cell side in tokens for pattern=block")

    def build(self, grid: int) -> DisjointMasking:
        """The disjoint masking these settings describe on a ``grid x grid`` patch grid.

        Raises:
            ValueError: settings the masking rejects (e.g. K views that cannot be disjoint).
        """
        from dmjd.masking import DisjointMasking  # local: keep schema import light

        return DisjointMasking(
            grid_size=(grid, grid),
            mask_ratio=self.mask_ratio,
            num_views=self.num_views,
            pred_ratio=self.pred_ratio,
            pattern=self.pattern,
            block_size=self.block_size if self.pattern == "block" else 1,
        )


class TargetConfig(_Section):
    """What the branches regress: pixels, HOG, a tokenizer's visual tokens or a teacher's features."""

    name: Literal["pixels", "hog", "tokens", "teacher"] = "pixels"
    norm_pix: bool = True
    pixel_space: Literal["normalised", "raw"] = Field(
        "normalised",
        description="pixels: taken from the mean/std-normalised image (MAE, ConvMAE, SimMIM) or from the "
        "raw [0, 1] image (dmjd before the fidelity review)",
    )
    hog_variant: Literal["dmjd", "maskfeat"] = "dmjd"
    cell_size: int = Field(8, ge=1)
    nbins: int = Field(9, ge=2)
    gaussian_window: int = Field(
        0,
        ge=0,
        description="HOG maskfeat variant: Gaussian window side, 0 = off (SlowFast's MaskFeat); 16 = mmpretrain's HOGGenerator",
    )
    tokenizer_path: str | None = Field(None, description="tokens: tokenizer file (see docs/methods.md)")
    tokenizer_arch: Literal["dalle", "program"] = Field(
        "dalle", description="tokens: DALL-E encoder state dict, or a torch.export (.pt2) / TorchScript program"
    )
    tokenizer_img_size: int | None = Field(None, ge=8, description="tokens: tokenizer input side; null = model.img_size")
    vocab_size: int | None = Field(None, ge=2, description="tokens: codebook size; null = read from the tokenizer")
    teacher_source: Literal["open_clip", "timm"] = "open_clip"
    teacher_model: str | None = Field(None, description="teacher: open_clip or timm model name")
    teacher_pretrained: str | None = Field(
        None, description="teacher: open_clip tag or weights file; timm weights file (null: timm download)"
    )
    teacher_layer: int = Field(-1, description="teacher: block whose output is the target, negative from the end")
    teacher_img_size: int | None = Field(None, ge=8, description="teacher: input side; null = the teacher's own")


class LossConfig(_Section):
    """L = vis_weight * L_vis + mim_weight * L_mim (Eq. 6, lambda = mim_weight)."""

    mim_loss: Literal["mse", "l1", "ce"] = Field(
        "mse", description="masked prediction loss: mse (MAE, MaskFeat, DMJD), l1 (SimMIM), ce (BEiT tokens)"
    )
    mim_weight: float = Field(1.0, ge=0.0)
    vis_weight: float = Field(1.0, ge=0.0)
    vis_beta: float = Field(2.0, gt=0.0)
    vis_layernorm: bool = Field(
        False,
        description="extra LayerNorm over each visible token's whole target vector before L_vis; off = the "
        "official code (both branches regress the same target)",
    )
    vis_pairing: Literal["token", "official"] = Field(
        "token",
        description="L_vis pairs each visible prediction with its own token's target (token, Eq. 5) or, as the "
        "official code, the predictions in masking draw order with the targets in token order (official)",
    )


class OptimConfig(_Section):
    """AdamW, per-iteration warmup + half-cycle cosine, and the learning-rate rule."""

    batch_size: int = Field(64, ge=1, description="unique images per process per micro-step")
    accum_iter: int = Field(1, ge=1)
    epochs: int = Field(400, ge=1)
    max_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps of the whole run, when fewer than epochs x steps per epoch: the schedule "
        "(warmup + cosine) ends there and training stops, mid-epoch if need be (e.g. to fit a time budget)",
    )
    warmup_epochs: float = Field(20.0, ge=0.0)
    blr: float = Field(1.5e-4, gt=0.0, description="base learning rate eta_base")
    lr: float | None = Field(None, gt=0.0, description="absolute learning rate; overrides blr")
    lr_rule: Literal["dmjd", "linear"] = Field("dmjd", description="dmjd: Eq. 4 b_u*m_pred/m_corr/256; linear: b*K/256")
    lr_rates: Literal["nominal", "realised"] = Field(
        "nominal",
        description="m_corr, m_pred in Eq. 4: the configured ones (official code) or the realised token "
        "fractions after rounding",
    )
    min_lr: float = Field(0.0, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    decay_tokens: bool = Field(
        True,
        description="weight decay on cls/mask tokens (MAE, official DMJD: only 1-d parameters and biases are "
        "exempt); false = also exempt the model's no_weight_decay() names",
    )
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = Field(None, gt=0.0)
    fused: bool | None = Field(None, description="fused AdamW; null = when supported")


class DataConfig(_Section):
    """Pre-training data set and augmentation (RandomResizedCrop + flip, the paper's recipe)."""

    name: Literal["embedded", "imagefolder", "cifar10", "cifar100", "stl10", "fashion_mnist", "webdataset"] = "embedded"
    path: str | None = None
    download: bool = False
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    limit: int | None = Field(None, ge=1, description="use only the first N images")
    split_holdout: bool = Field(
        True,
        description="an image folder of class sub-folders without val/ or test/: pre-train on the training part "
        "of the seeded stratified split whose test part the probes (monitor, compare, knn, linprobe, finetune) "
        "use; false = pre-train on every image",
    )
    num_workers: int = Field(4, ge=0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pipeline: Literal["auto", "device", "loader"] = Field(
        "auto",
        description="device: the data set sits on the training device as uint8 and is augmented there in "
        "batches; loader: DataLoader workers; auto: device when the decoded set fits data.device_memory_gb",
    )
    device_memory_gb: float | None = Field(
        None, gt=0, description="memory the device pipeline may use; null = a quarter of the device's (GPU) or RAM (CPU)"
    )
    cache_size: int | None = Field(
        None, ge=8, description="device pipeline: side an ImageFolder is decoded to once; null = model.img_size * 8 / 7"
    )
    interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="RandomResizedCrop resampling")
    background: Literal["white", "gray", "black"] = Field(
        "white",
        description="uniform colour transparent pixels (alpha, transparent palettes) are composited on before "
        "anything else, in training and every evaluation; white, as cut-outs and clip-art are drawn and shown",
    )
    quantize_crops: bool = Field(
        True,
        description="device pipelines: round the resized crops to 8-bit levels before the targets and the "
        "normalisation, as the loader path's (PIL / torchvision uint8) and the official code's crops; false = "
        "the float resize output",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.name in ("imagefolder", "webdataset") and not self.path:
            raise ValueError(f"data.path is required for data.name={self.name}")
        if self.name == "webdataset" and self.limit is not None:
            raise ValueError("data.limit does not apply to data.name=webdataset; list fewer shards in data.path")
        return self


class BudgetPlan(_Section):
    """A budgeted run's schedule, from its measured step rate (``dmjd.engine.budget``)."""

    budget_s: float = Field(gt=0)
    steps_per_s: float = Field(gt=0, description="optimizer steps per second, as measured")
    measured_steps: int = Field(ge=1, description="steps the rate was measured over")
    planned_at: int = Field(ge=1, description="optimizer step at which the plan was made")
    planned_at_s: float = Field(ge=0, description="training seconds at that step")
    total_steps: int = Field(ge=1)
    warmup_steps: int = Field(ge=0)
    steps_per_epoch: int = Field(ge=1)
    checked: bool = Field(False, description="whether the rate has been checked against the plan")
    replanned_at: int | None = Field(None, description="step of the latest re-plan, if the rate drifted")
    replanned_lr: float | None = Field(None, description="lr at which the latest re-plan after the warmup starts its cosine")
    replans: int = Field(0, ge=0, description="re-plans made (the rate drifted past train.budget_tolerance)")

    @property
    def epochs(self) -> float:
        """Scheduled epochs (fractional: the last one may be partial)."""
        return self.total_steps / self.steps_per_epoch


class TrainConfig(_Section):
    """Run-level settings: device, precision, logging, checkpointing, fault handling."""

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    log_interval: int = Field(20, ge=1, description="optimizer steps between metric lines")
    checkpoint_interval: int = Field(20, ge=1, description="epochs between numbered checkpoints")
    checkpoint_steps: int | None = Field(
        None, ge=1, description="also refresh checkpoint-last every N optimizer steps (long epochs)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="numbered checkpoints kept on disk")
    max_nonfinite_steps: int = Field(20, ge=1, description="stop after this many skipped steps in a row")
    max_time_s: float | None = Field(None, gt=0, description="stop after this much training time (s)")
    rank_logs: bool = Field(
        False, description="under torchrun, also write each other process's warnings to <output-dir>/rank-N.log"
    )
    budget: str | float | None = Field(
        None,
        description="training time budget (90s, 20m, 2h): the run measures its step rate over its first steps "
        "and sets optim.epochs, optim.max_steps and optim.warmup_epochs so that warmup + cosine end at the budget",
    )
    budget_warmup: float = Field(0.1, ge=0.0, lt=1.0, description="budgeted runs: warmup as a fraction of the steps")
    budget_measure_steps: int = Field(20, ge=1, description="budgeted runs: steps the rate is measured over")
    budget_tolerance: float = Field(
        0.2, ge=0.0, description="budgeted runs: re-plan once, early on, when the rate drifts by more than this"
    )
    budget_plan: BudgetPlan | None = Field(
        None, description="written by a budgeted run once it has measured its rate; a run given one follows it"
    )
    compile: bool = Field(False, description="torch.compile target + model + loss as one region")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead adds CUDA graphs (static shapes)"
    )
    tensorboard: bool = True
    progress: bool = True

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value


class MonitorConfig(_Section):
    """Online evaluation during pre-training: kNN + fast linear probe on a labelled split."""

    interval: int = Field(0, ge=0, description="epochs between evaluations; 0 = off")
    max_images: int = Field(5000, ge=100, description="images per split used by the monitor")


class RecipeConfig(_Section):
    """What ``--config auto`` (``dmjd.recipe``) chose for the data, device and budget, and why."""

    method: Literal["dmjd", "mae"] | None = Field(
        None, description="the method the auto recipe sets up (null: not an auto recipe; dmjd when asked for one)"
    )
    reasons: dict[str, str] = Field(default_factory=dict, description="written by the recipe: key -> value: reason")


class Config(_Section):
    """A whole pre-training run."""

    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    target: TargetConfig = TargetConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    recipe: RecipeConfig = RecipeConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        """Check the rules that tie keys together, all of them: one line per broken rule.

        Raises:
            ValueError: every problem found, one per line (``loading`` makes each a line of its own).
        """
        problems = self._cross_key_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _cross_key_problems(self) -> list[str]:
        """The broken cross-key rules, in the order a reader meets the keys."""
        m, t = self.model, self.target
        problems = []
        if m.img_size % m.patch_size:
            problems.append(f"model.img_size={m.img_size} is not divisible by model.patch_size={m.patch_size}")
        if t.name == "hog" and m.patch_size % t.cell_size:
            problems.append(f"target.cell_size={t.cell_size} must divide model.patch_size={m.patch_size} for HOG")
        if (t.name == "tokens") != (self.loss.mim_loss == "ce"):
            problems.append(
                "target.name=tokens (discrete visual tokens) and loss.mim_loss=ce (cross-entropy over the "
                f"codebook) go together; got target.name={t.name}, loss.mim_loss={self.loss.mim_loss}"
            )
        if t.name == "tokens" and not t.tokenizer_path:
            problems.append("target.name=tokens needs target.tokenizer_path (see docs/methods.md)")
        if t.name == "teacher" and not t.teacher_model:
            problems.append("target.name=teacher needs target.teacher_model (e.g. ViT-B-16 for open_clip)")
        if m.mlp_ratios is not None and m.arch != "convit":
            problems.append(f"model.mlp_ratios (per-stage MLP ratios) needs model.arch=convit, got {m.arch}")
        if m.init is not None and m.style != "mae":
            problems.append(f"model.init starts an mae-style encoder, got model.style={m.style}")
        if m.style == "simmim" and m.arch != "vit":
            problems.append(f"model.style=simmim needs model.arch=vit, got {m.arch}")
        if not (m.vdb and self.loss.vis_weight > 0) and self.loss.mim_weight == 0:
            problems.append("loss.mim_weight=0 with the visible distillation branch off trains nothing")
        if not m.img_size % m.patch_size:  # the grid the masking lives on exists
            try:
                self.masking.build(m.img_size // m.patch_size)
            except ValueError as err:
                problems.append(f"masking: {err}")
        return problems
