"""A recipe for the user's data: the config ``--config auto`` picks from the data, the device and the budget.

The paper's recipes (ViT-B/16 at 224 px, base lr 1.5e-4, 400 epochs) are meant for ImageNet on 8
GPUs; on a folder of a few thousand 64-px images and a budget of minutes they train a fraction of an
epoch. ``auto_config`` looks at the data (``dmjd.data.profile``), the device (its measured matrix
throughput) and the time budget, and chooses, each with its reason:

* the image size (the images' typical shorter side, on a ladder 32 / 64 / 96 / 128 / 224) and a patch
  size giving a grid of 8 x 8 to 14 x 14 tokens;
* the largest ViT of a ladder (width 64 ... 768) that the budget trains for at least ``MIN_EPOCHS``
  epochs at the estimated step rate (``step_flops`` / the device's sustained FLOP/s);
* the method's masking and target: DMJD = block masking 0.6 on 2 x 2-token cells, K = 2, m_pred 1.0,
  HOG on cells of half a patch, visible distillation branch; MAE = random 0.75, K = 1, norm-pix;
* the batch, a base lr for this scale and the warmup (a fraction of the budget, ``train.budget_warmup``).

Every choice is a dotted config key; a key the user gives wins over the recipe's. docs/recipes.md
says what was measured to pick these rules and what is extrapolated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

from dmjd.config import Config, ConfigError, load_config
from dmjd.config.duration import format_duration, parse_duration
from dmjd.config.loading import parse_override
from dmjd.data.profile import DataProfile, profile_data
from dmjd.models.sources import SourceArch, load_source

METHODS = ("dmjd", "mae")
DEFAULT_BUDGET = "20m"
MIN_BATCH = 8
MIN_EPOCHS = 5.0  # the budget must train the chosen model for at least this many epochs (per view)
IMAGE_SIDES = (32, 64, 96, 128, 224)
# Sustained fraction of the measured matmul FLOP/s that a pre-training step reaches (small
# transformers: many small kernels). CPU: measured on the 2-core VM (2026-12-01, width-64 ViT at 32 px,
# batch 128, 2 threads): 0.289 (DMJD, 328 images/s) and 0.287 (MAE) of a 512^3 fp32 matmul's rate.
# CUDA: a guess, not measured (no GPU was lent): small models reach a small fraction of bf16 peak.
STEP_EFFICIENCY = {"cpu": 0.29, "cuda": 0.15}
# Continued pre-training from model.init (docs/recipes.md, "Continued pre-training", says what was measured).
CONTINUED_BLR = 3e-4
CONTINUED_BLR_REASON = (
    "continued pre-training from model.init: a base lr below a fresh start's, not to wash out what it learned"
)
CONTINUED_WARMUP = 0.05


@dataclass(frozen=True)
class VitSize:
    """One rung of the model ladder: encoder width, depth and heads, and the base lr that suits it."""

    width: int
    depth: int
    heads: int
    blr: float

    @property
    def decoder(self) -> tuple[int, int, int]:
        """The masked prediction branch: ``(width, depth, heads)``, MAE's 512 x 8 capped by the encoder's size."""
        width = min(self.width, 512)
        return width, min(8, max(1, self.depth // 2)), max(1, width // 32)


# blr: 4e-3 was measured best for width 64 on Fashion-MNIST (docs/recipes.md); the wider rungs are
# extrapolated towards MAE's 1.5e-4 for ViT-B at ImageNet scale.
VIT_LADDER = (
    VitSize(64, 4, 4, 4e-3),
    VitSize(128, 6, 4, 3e-3),
    VitSize(192, 12, 3, 1.5e-3),  # ViT-Ti
    VitSize(384, 12, 6, 1e-3),  # ViT-S
    VitSize(768, 12, 12, 5e-4),  # ViT-B
)


@dataclass(frozen=True)
class Choice:
    """One key the recipe sets, its value and why."""

    key: str
    value: object
    reason: str

    @property
    def override(self) -> str:
        """The choice as a ``key=value`` override."""
        value = "null" if self.value is None else str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.key}={value}"


def image_side(profile: DataProfile) -> int:
    """The ladder's side nearest (in log scale) to the images' typical shorter side."""
    side = min(profile.typical_size)
    return min(IMAGE_SIDES, key=lambda s: abs(math.log(s / max(side, 1))))


def patch_size(img_size: int) -> int:
    """The largest patch that divides the side and gives at least 8 tokens per side, up to 14 x 14 tokens."""
    candidates = [p for p in (4, 8, 14, 16, 32) if img_size % p == 0 and 8 <= img_size // p <= 14]
    return max(candidates) if candidates else max(1, img_size // 8)


def block_mask_ratio(grid: int, cell: int = 2, target: float = 0.6) -> float:
    """The paper's block m_corr 0.6 rounded to whole cells of the grid, so nominal and realised rates agree."""
    cells = (grid // cell) ** 2
    return round(target * cells) / cells


def step_flops(size: VitSize, img_size: int, patch: int, in_chans: int, method: str, batch: int) -> float:
    """Training FLOPs of one optimizer step (forward x 3) of ``batch`` images: the encoder on each view's
    visible tokens, the masked prediction branch on all tokens, the visible distillation branch for DMJD."""
    grid = img_size // patch
    tokens = grid * grid
    views, masked = (2, block_mask_ratio(grid)) if method == "dmjd" else (1, 0.75)
    n_vis = tokens - round(masked * tokens) + 1
    d = size.width
    dd, depth_d, _ = size.decoder
    target_dim = 4 * 9 * in_chans if method == "dmjd" else patch * patch * in_chans

    def blocks(n: int, width: int, depth: int) -> float:
        return depth * (24 * n * width**2 + 4 * n * n * width)

    per_view = blocks(n_vis, d, size.depth) + 2 * n_vis * d * dd + blocks(tokens, dd, depth_d)
    per_view += 2 * tokens * dd * target_dim
    if method == "dmjd":
        per_view += 2 * n_vis * (d * dd + 2 * dd * dd + dd * target_dim)
    embed = 2 * tokens * patch * patch * in_chans * d
    return 3.0 * batch * (embed + views * per_view)


def device_flops(device: str, seconds: float = 0.05, repeats: int = 6) -> float:
    """Matmul FLOP/s of ``device`` (fp32 on CPU, bf16 on CUDA): the best of ``repeats`` bursts of
    ``seconds``, so that a moment of other load on the machine does not shrink the estimate."""
    import torch

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = 2048 if dev.type == "cuda" else 512
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def choose_recipe(
    profile: DataProfile,
    budget_s: float,
    method: str,
    flops_per_s: float,
    device_type: str = "cpu",
    start: SourceArch | None = None,
) -> list[Choice]:
    """The recipe's choices for this data, budget, method and device speed (sustained FLOP/s of a step).

    With ``start`` (the architecture ``model.init`` names) the encoder and its patch come from it
    (``dmjd.engine.start_weights.config_for_source``): no size is chosen, the image side is rounded
    to its patch, and the learning rate and warmup are those of continued training.

    Raises:
        ConfigError: an unknown method, or a data set smaller than the smallest batch.
    """
    if start is not None:
        return _continued_recipe(profile, budget_s, method, flops_per_s, device_type, start)
    if method not in METHODS:
        raise ConfigError(f"recipe.method={method!r}; choose from {', '.join(METHODS)}")
    n = profile.num_images
    if n < 2 * MIN_BATCH:
        raise ConfigError(f"the data set has {n} images, fewer than a batch ({MIN_BATCH}) per step for two steps; "
                          f"give at least {2 * MIN_BATCH} images")  # fmt: skip
    batch = _batch(n, device_type)
    side = image_side(profile)
    patch = patch_size(side)
    grid = side // patch
    chans = profile.channels
    size, epochs = _model_size(profile, budget_s, method, flops_per_s, side, patch, batch)
    dd, depth_d, heads_d = size.decoder
    rung = f"{size.width} wide, {size.depth} blocks"
    choices = [
        Choice("model.img_size", side, f"typical image {profile.typical_size[0]}x{profile.typical_size[1]} px"),
        Choice("model.patch_size", patch, f"a {grid}x{grid} token grid"),
        Choice("model.in_chans", chans, "grey images" if chans == 1 else "colour images"),
        Choice("model.size", "tiny", "a starting point only: the width and depth below replace it"),
        Choice("model.embed_dim", size.width, _size_reason(size, rung, epochs)),
        Choice("model.depth", size.depth, rung),
        Choice("model.num_heads", size.heads, rung),
        Choice("model.decoder_dim", dd, "masked prediction branch as wide as the encoder (at most 512)"),
        Choice("model.decoder_depth", depth_d, "half the encoder's depth (at most MAE's 8)"),
        Choice("model.decoder_heads", heads_d, "32-wide heads"),
        Choice("optim.batch_size", batch, f"{n:,} images: at least 8 steps per epoch"),
        Choice(
            "optim.blr",
            size.blr,
            f"base lr for a {size.width}-wide ViT at this scale (ImageNet's 1.5e-4 is meant for 800 epochs)",
        ),
        Choice("optim.lr_rule", "dmjd", "Eq. 4 (equals the linear rule for K = 1)"),
        Choice("train.budget_warmup", 0.1, "warmup: 10 % of the budgeted steps"),
        Choice("data.name", profile.name, "what the folder holds"),
    ]
    if profile.path is not None:  # a named set at its default location has no folder to name
        choices.append(Choice("data.path", profile.path, "the data set's folder"))
    if profile.labelled:
        choices.append(_monitor_choice(epochs, "the untrained encoder"))
    return choices + method_choices(method, grid, patch, size.width)


def _continued_recipe(
    profile: DataProfile, budget_s: float, method: str, flops_per_s: float, device_type: str, start: SourceArch
) -> list[Choice]:
    """``choose_recipe`` when pre-training continues from ``start``: its architecture, a lower base lr,
    a short warmup, and on labelled data the monitor's interval from the epochs the budget trains it."""
    patch = start.patch_size
    side = max(4 * patch, -(-image_side(profile) // patch) * patch)
    grid = side // patch
    batch = _batch(profile.num_images, device_type)
    choices = [
        Choice("model.img_size", side, f"typical image {profile.typical_size[0]}x{profile.typical_size[1]} px, "
               f"a multiple of the starting encoder's patch {patch}"),
        Choice("model.patch_size", patch, f"the starting encoder's (model.init): a {grid}x{grid} token grid"),
        Choice("model.in_chans", profile.channels, "grey images" if profile.channels == 1 else "colour images"),
        Choice("optim.batch_size", batch, f"{profile.num_images:,} images: at least 8 steps per epoch"),
        Choice("optim.blr", CONTINUED_BLR, CONTINUED_BLR_REASON),
        Choice("optim.lr_rule", "dmjd", "Eq. 4 (equals the linear rule for K = 1)"),
        Choice("train.budget_warmup", CONTINUED_WARMUP, "a short warmup: the encoder is trained already"),
        Choice("data.name", profile.name, "what the folder holds"),
    ]  # fmt: skip
    if profile.path is not None:
        choices.append(Choice("data.path", profile.path, "the data set's folder"))
    if profile.labelled:
        size = VitSize(start.embed_dim, start.depth, start.num_heads, CONTINUED_BLR)
        epochs = _epochs(profile, budget_s, method, flops_per_s, size, side, patch, batch)
        choices.append(_monitor_choice(epochs, "the starting encoder"))
    return choices + method_choices(method, grid, patch, start.embed_dim)


def _monitor_choice(epochs: float, baseline: str) -> Choice:
    """Labelled data: evaluate about 5 times over the ``epochs`` the budget is expected to train."""
    every = max(1, round(epochs / 5))
    return Choice("monitor.interval", every, f"labelled data: kNN + linear probe every {every} epochs "
                  f"(about 5 evaluations), against {baseline} and raw pixels")  # fmt: skip


def _size_reason(size: VitSize, rung: str, epochs: float) -> str:
    """Why this ViT: the largest the budget trains for ``MIN_EPOCHS``, or the smallest when none does."""
    if epochs >= MIN_EPOCHS:
        return f"the largest ViT ({rung}) this budget trains for at least {MIN_EPOCHS:g} epochs here (~{epochs:.0f})"
    return (f"the smallest ViT ({rung}); this budget trains it for only ~{epochs:.1f} epochs here, a longer "
            "train.budget trains it more")  # fmt: skip


def _batch(num_images: int, device_type: str) -> int:
    """The largest power of two up to 128 (CPU) or 256 (GPU) giving at least 8 steps per epoch, and
    at least ``MIN_BATCH``."""
    cap = 256 if device_type == "cuda" else 128
    return max(MIN_BATCH, min(cap, 2 ** int(math.log2(max(num_images // 8, 1)))))


def _model_size(
    profile: DataProfile, budget_s: float, method: str, flops_per_s: float, side: int, patch: int, batch: int
) -> tuple[VitSize, float]:
    """The largest ladder rung the budget trains for ``MIN_EPOCHS`` (else the smallest), with its epochs."""
    chosen = VIT_LADDER[0], 0.0
    for size in VIT_LADDER:
        epochs = _epochs(profile, budget_s, method, flops_per_s, size, side, patch, batch)
        if size is VIT_LADDER[0] or epochs >= MIN_EPOCHS:
            chosen = size, epochs
    return chosen


def _epochs(
    profile: DataProfile,
    budget_s: float,
    method: str,
    flops_per_s: float,
    size: VitSize,
    side: int,
    patch: int,
    batch: int,
) -> float:
    """The epochs ``budget_s`` trains ``size`` on this data, at the step rate ``step_flops`` estimates."""
    step_s = step_flops(size, side, patch, profile.channels, method, batch) / flops_per_s
    return budget_s / step_s / max(profile.num_images // batch, 1)


def method_choices(method: str, grid: int, patch: int, width: int) -> list[Choice]:
    """Masking, target and branches of DMJD (the paper's recipe) or MAE."""
    if method == "mae":
        return [
            Choice("masking.pattern", "random", "MAE: random masking"),
            Choice("masking.mask_ratio", 0.75, "MAE's corruption rate"),
            Choice("masking.num_views", 1, "MAE: one view"),
            Choice("masking.pred_ratio", None, "one view predicts its masked tokens"),
            Choice("target.name", "pixels", "MAE: normalised pixels"),
            Choice("target.norm_pix", True, "norm-pix loss"),
            Choice("model.vdb", False, "MAE has no visible distillation branch"),
        ]
    ratio = block_mask_ratio(grid)
    return [
        Choice("masking.pattern", "block", "DMJD: block-wise masking"),
        Choice("masking.block_size", 2, "2x2-token cells (SimMIM, the official code)"),
        Choice("masking.mask_ratio", ratio, f"the paper's 0.6 in whole cells of the {grid}x{grid} grid"),
        Choice("masking.num_views", 2, "disjoint masking, K = 2"),
        Choice("masking.pred_ratio", 1.0, "the views' union covers every token"),
        Choice("target.name", "hog", "DMJD's HOG target"),
        Choice("target.hog_variant", "dmjd", "the official code's HOG"),
        Choice("target.cell_size", max(1, patch // 2), "2x2 HOG cells per patch (the official 8-px cells in 16-px patches)"),
        Choice("model.vdb", True, "joint distillation: the visible distillation branch"),
        Choice("model.vdb_hidden", min(width, 512), "projector as wide as the decoder"),
    ]


def user_keys(overrides: list[str]) -> set[str]:
    """The dotted keys a list of ``key=value`` overrides sets."""
    return {".".join(parse_override(item)[0]) for item in overrides}


class Recipe(NamedTuple):
    """What ``auto_config`` made: the config, the choices it kept (with reasons) and the data's profile."""

    config: Config
    choices: list[Choice]
    profile: DataProfile


def auto_config(overrides: list[str], device: str | None = None, flops_per_s: float | None = None) -> Recipe:
    """The auto recipe's config for ``overrides`` (which name the data, the budget, ``recipe.method``
    and any key to fix), the choices it made (those the user overrode left out) and the data's profile.

    Args:
        overrides: the user's ``key=value`` overrides; they win over every choice.
        device: where it will train (default: ``train.device`` of the overrides, else auto).
        flops_per_s: the device's sustained step FLOP/s (default: measured, times ``STEP_EFFICIENCY``).

    Raises:
        ConfigError, DataError: invalid overrides or unreadable data.
    """
    base = load_config(None, overrides)  # validates the user's keys, resolves data.path
    given = user_keys(overrides)
    from dmjd.engine.runtime import resolve_device  # local: loads torch

    dev = resolve_device(device or base.train.device)
    budget = base.train.budget if base.train.budget is not None else DEFAULT_BUDGET
    if flops_per_s is None:
        flops_per_s = device_flops(str(dev)) * STEP_EFFICIENCY.get(dev.type, 0.15)
    profile = profile_data(base.data.name, base.data.path)
    method = base.recipe.method or "dmjd"
    start = load_source(base.model.init).arch if base.model.init else None
    choices = choose_recipe(profile, parse_duration(budget), method, flops_per_s, dev.type, start)
    if "train.budget" not in given:
        choices.append(Choice("train.budget", budget, "no train.budget given: the default budget"))
    kept = [c for c in choices if c.key not in given]
    cfg = load_config(None, [c.override for c in kept] + [f"recipe.method={method}", *overrides])
    cfg.recipe.reasons = {c.key: f"{c.value}: {c.reason}" for c in kept}
    return Recipe(cfg, kept, profile)


def recipe_lines(choices: list[Choice], budget: str | float | None) -> list[str]:
    """The start-up lines of an auto recipe: one per choice, with its reason."""
    span = f"a budget of {format_duration(parse_duration(budget))}" if budget is not None else "no time budget"
    lines = [f"dmjd: recipe auto for {span}:"]
    lines += [f"dmjd:   {c.override}  ({c.reason})" for c in choices]
    return lines
