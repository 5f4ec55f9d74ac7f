"""Encoders to evaluate: a dmjd pre-training checkpoint, or any timm ViT by name for comparison.

Every evaluation needs the encoder and what its inputs look like (``InputSpec``: image side,
channels, normalisation); a dmjd checkpoint also names the data set it was trained on, which is
where the evaluations look for labelled train/test splits unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from dmjd.config import Config, ConfigError, config_from_dict
from dmjd.config.loading import apply_override, parse_override
from dmjd.engine.builders import build_dmjd_model, build_target, mean_std
from dmjd.engine.start_weights import config_for_source, load_start_weights
from dmjd.errors import InputError
from dmjd.io.checkpoint import PRETRAINING, CheckpointError, load_checkpoint
from dmjd.models import DMJDModel, create_encoder, encoder_state_dict
from dmjd.models.sources import LoadedSource, load_source, source_encoder, weight_mismatch


@dataclass(frozen=True)
class InputSpec:
    """What an encoder expects: square images of ``img_size`` with ``in_chans`` channels,
    normalised with ``mean``/``std`` (one value per channel)."""

    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> InputSpec:
        """The input of a dmjd run: its model geometry and data statistics."""
        mean, std = mean_std(cfg)
        return cls(cfg.model.img_size, cfg.model.in_chans, mean, std)

    @classmethod
    def from_timm(cls, model: nn.Module) -> InputSpec:
        """The input a timm model was pre-trained with (its ``pretrained_cfg``)."""
        data = timm.data.resolve_data_config({}, model=model)
        chans, height, _width = data["input_size"]
        return cls(height, chans, tuple(data["mean"]), tuple(data["std"]))


def checkpoint_config(state: dict[str, Any], path: str | Path) -> Config:
    """The validated pre-training config stored in a checkpoint.

    Raises:
        CheckpointError: no config (not a dmjd pre-training checkpoint), a fine-tuning checkpoint,
            or a config this dmjd version cannot build (another architecture or version).
    """
    if state.get("kind") == "finetune":
        raise CheckpointError(f"{path} is a dmjd fine-tuning checkpoint; evaluations need {PRETRAINING}")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} has no 'config' entry: it is not a dmjd pre-training checkpoint; expected {PRETRAINING}")
    try:
        return config_from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(
            f"{path} describes a model this dmjd version cannot build (another architecture or version):\n{err}"
        ) from None


def _describe(cfg: Config) -> str:
    m = cfg.model
    return (
        f"{m.arch}-{m.size} img {m.img_size} patch {m.patch_size} chans {m.in_chans} "
        f"dim {m.embed_dim or 'preset'} depth {m.depth or 'preset'} heads {m.num_heads or 'preset'}"
    )


def _load_strict(module: nn.Module, weights: dict[str, torch.Tensor], path: str | Path, cfg: Config) -> None:
    """``load_state_dict(strict=True)``, or a CheckpointError that says which keys differ."""
    mismatch = weight_mismatch(module, weights)
    if mismatch:
        raise CheckpointError(f"{path}: the weights do not match the architecture in its config ({_describe(cfg)}): {mismatch}")
    module.load_state_dict(weights, strict=True)


def checkpoint_position(state: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Where in its run a pre-training checkpoint was saved: ``epoch``, ``step`` and ``ete``
    (K x epochs) -- what an evaluation of it is plotted against."""
    epoch = int(state.get("epoch", 0))
    return {"epoch": epoch, "step": int(state.get("step", 0)), "ete": cfg.masking.num_views * epoch}


def load_encoder(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """The pre-trained encoder of a dmjd checkpoint, in eval mode, and the run's config.

    Only the encoder is built and loaded (strict keys); the branches are not needed to evaluate.

    Raises:
        CheckpointError: missing or unreadable file, not a dmjd pre-training checkpoint, or weights
            of another architecture than its config describes.
    """
    return encoder_from_state(load_checkpoint(checkpoint, expected=PRETRAINING), checkpoint, device)


def encoder_from_state(
    state: dict[str, Any], checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """``load_encoder`` for a checkpoint already loaded (``checkpoint`` names it in messages)."""
    cfg = checkpoint_config(state, checkpoint)
    m = cfg.model
    encoder = create_encoder(
        m.arch, m.size, m.img_size, m.patch_size, m.in_chans, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads
    )
    try:
        weights = encoder_state_dict(state)
    except ValueError:
        raise CheckpointError(f"{checkpoint} holds no encoder weights ('encoder.*' keys)") from None
    _load_strict(encoder, weights, checkpoint, cfg)
    return encoder.to(device).eval(), cfg


def load_dmjd_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[DMJDModel, Config]:
    """The whole pre-training model (encoder and both branches), in eval mode, and its config.

    Raises:
        CheckpointError: as ``load_encoder``.
    """
    return dmjd_model_from_state(load_checkpoint(checkpoint, expected=PRETRAINING), checkpoint, device)


def dmjd_model_from_state(
    state: dict[str, Any], checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[DMJDModel, Config]:
    """``load_dmjd_model`` for a checkpoint already loaded (``checkpoint`` names it in messages)."""
    cfg = checkpoint_config(state, checkpoint)
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    _load_strict(model, state["model"], checkpoint, cfg)
    return model.to(device).eval(), cfg


def load_published_encoder(source: str, device: str | torch.device = "cpu") -> tuple[nn.Module, InputSpec, LoadedSource]:
    """The encoder of any source ``load_source`` reads (published weights, a dmjd export...), in eval
    mode at its own image size, with the input it was trained with.

    Raises:
        CheckpointError: a source that cannot be read (one line naming it and why).
    """
    loaded = load_source(source)
    a = loaded.arch
    return source_encoder(loaded).to(device), InputSpec(a.img_size, a.in_chans, a.mean, a.std), loaded


def published_mae_model(
    source: str, overrides: list[str] | None, device: str | torch.device = "cpu"
) -> tuple[DMJDModel, Config]:
    """An MAE model (encoder + decoder, no visible branch) holding published weights with a decoder,
    in eval mode, and its config: random masking 0.75, one view, norm-pix targets in the source's
    normalisation, the data of the ``data.*`` overrides.

    Raises:
        CheckpointError: a source without a decoder, or whose decoder predicts another width than pixels.
    """
    loaded = load_source(source)
    a = loaded.arch
    if loaded.decoder is None or a.decoder is None:
        why = next((note for note in loaded.notes if "decoder" in note), "it has none")
        raise CheckpointError(f"{source} has no decoder dmjd can use ({why}): visualize draws what a decoder reconstructs")
    base = {"model": {"img_size": a.img_size, "in_chans": a.in_chans, "vdb": False, "init": str(source)},
            "masking": {"mask_ratio": 0.75, "num_views": 1, "pattern": "random"},
            "target": {"name": "pixels", "norm_pix": True}, "data": {"mean": list(a.mean), "std": list(a.std)}}  # fmt: skip
    cfg = config_for_source(config_with_overrides(base, overrides), loaded)
    model = build_dmjd_model(cfg, build_target(cfg).dim)
    if a.decoder.target_dim != build_target(cfg).dim:
        raise CheckpointError(f"{source}: its decoder predicts {a.decoder.target_dim} values per patch, not the "
                              f"{build_target(cfg).dim} pixels of a {a.patch_size}-px patch")  # fmt: skip
    load_start_weights(model, loaded, cfg)
    return model.to(device).eval(), cfg


def load_timm_encoder(name: str, pretrained: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """A timm model without classifier (``num_classes=0``), in eval mode, to compare against.

    Raises:
        InputError: unknown model name.
        CheckpointError: its pre-trained weights cannot be obtained (e.g. offline).
    """
    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}; list them with timm.list_models('vit_*')")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"cannot load the pre-trained weights of timm model {name!r}: {err}") from None
    return model.to(device).eval()


def config_with_overrides(base: dict[str, Any], overrides: list[str] | None) -> Config:
    """A config with dotted ``data.*`` overrides on top of ``base`` (e.g. a checkpoint's config).

    A new ``data.name`` without a ``data.path`` drops the base's path (it belonged to the other
    data set); a ``data.path`` alone on the embedded sample is used (see ``config_from_dict``).

    Raises:
        ConfigError: an override outside the ``data`` section, or an invalid value.
        DataError: a ``data.path`` that holds nothing dmjd can read.
    """
    data = {section: dict(values) for section, values in base.items()}
    keys = set()
    for item in overrides or []:
        path, value = parse_override(item)
        if path[0] != "data" or len(path) != 2:
            raise ConfigError(f"evaluations take data.* overrides only (e.g. data.name=cifar10), got {item!r}")
        apply_override(data, path, value)
        keys.add(path[1])
    if "name" in keys and "path" not in keys:
        data.setdefault("data", {})["path"] = None
    return config_from_dict(data)
