"""Factories that turn a validated Config into the run's parts: target, masking, model, loss.

Kept apart from the trainer so evaluation, benchmarks and new methods build the same parts.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar

from torch import Tensor

from dmjd.config import Config, ConfigError
from dmjd.data import default_mean_std
from dmjd.errors import InputError
from dmjd.losses import method_loss
from dmjd.masking import DisjointMasking, MaskedViews
from dmjd.models import DMJDModel, build_model, build_simmim_model
from dmjd.targets import Target, create_target

LossFn = Callable[[object, Tensor, MaskedViews], dict[str, Tensor]]
Factory = TypeVar("Factory", bound=Callable[..., Any])


def _settings_of(section: str) -> Callable[[Factory], Factory]:
    """A factory's ``ValueError`` on the values of ``cfg.<section>`` becomes a ``ConfigError`` naming
    the section: the schema cannot check everything a part checks when it is built."""

    def wrap(factory: Factory) -> Factory:
        @wraps(factory)
        def build(*args: Any, **kwargs: Any) -> Any:
            try:
                return factory(*args, **kwargs)
            except InputError:
                raise
            except ValueError as err:
                raise ConfigError(f"{section}: {err}") from err

        return build  # type: ignore[return-value]

    return wrap


@_settings_of("target")
def build_target(cfg: Config) -> Target:
    """The target tokenizer named by ``cfg.target`` for the model's patch size and channels.

    Every target receives the raw ``[0, 1]`` images; ``pixels`` with ``target.pixel_space=normalised``
    gets the model's mean/std and takes its pixels from the normalised image, as MAE does.
    ``tokens`` and ``teacher`` load weights from disk (see docs/methods.md).
    """
    t, m = cfg.target, cfg.model
    grid = {"patch_size": m.patch_size, "in_chans": m.in_chans}
    if t.name == "pixels":
        mean, std = mean_std(cfg) if t.pixel_space == "normalised" else (None, None)
        return create_target("pixels", **grid, norm_pix=t.norm_pix, mean=mean, std=std)
    if t.name == "hog":
        return create_target(
            "hog", **grid, variant=t.hog_variant, cell_size=t.cell_size, nbins=t.nbins,
            gaussian_window=t.gaussian_window,
        )  # fmt: skip
    if t.name == "tokens":
        return create_target(
            "tokens", **grid, path=t.tokenizer_path, arch=t.tokenizer_arch,
            img_size=t.tokenizer_img_size or m.img_size, vocab_size=t.vocab_size,
        )  # fmt: skip
    return create_target(
        "teacher", **grid, model=t.teacher_model, source=t.teacher_source, pretrained=t.teacher_pretrained,
        layer=t.teacher_layer, img_size=t.teacher_img_size,
    )  # fmt: skip


def build_masking(cfg: Config) -> DisjointMasking:
    """Disjoint masking on the model's patch grid."""
    return cfg.masking.build(cfg.model.img_size // cfg.model.patch_size)


@_settings_of("model")
def build_dmjd_model(cfg: Config, target_dim: int) -> DMJDModel:
    """Encoder + masked prediction branch + (optional) visible distillation branch.

    ``model.style=simmim`` gives the full-sequence encoder with a linear head (no decoder).
    """
    m = cfg.model
    if m.style == "simmim":
        unused = {"style", "init", "decoder_dim", "decoder_depth", "decoder_heads", "decoder_mlp_ratio"}
        return build_simmim_model(**m.model_dump(exclude=unused), target_dim=target_dim)
    return build_model(**m.model_dump(exclude={"style", "init"}), target_dim=target_dim)


def mean_std(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics: the config's, else defaults for the channel count."""
    mean, std = default_mean_std(cfg.model.in_chans)
    return tuple(cfg.data.mean or mean), tuple(cfg.data.std or std)


def build_loss(cfg: Config) -> LossFn:
    """``loss_fn(out, targets, views) -> {"loss", "loss_mim", "loss_vis"}`` (Eq. 6, the method's L_mim)."""
    lc = cfg.loss
    return partial(
        method_loss, mim_loss=lc.mim_loss, mim_weight=lc.mim_weight, vis_weight=lc.vis_weight, vis_beta=lc.vis_beta,
        vis_layernorm=lc.vis_layernorm, vis_pairing=lc.vis_pairing,
    )  # fmt: skip
