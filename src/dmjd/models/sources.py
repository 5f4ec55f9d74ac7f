"""Published weights as a start or an encoder to evaluate: one reader for every format dmjd takes.

``load_source(SOURCE)`` reads the encoder (and the MAE decoder where there is one) of

- an official MAE pre-training checkpoint (``{'model': state_dict}``, timm encoder keys, decoder
  ``decoder_*`` and ``mask_token``), official ConvMAE / DMJD ConViT checkpoints (``convert.py``);
- timm ViT weights in a ``.safetensors``, ``.pth`` or ``.bin`` file, ``timm:MODEL_NAME`` (timm's
  own ``pretrained=True`` path) and timm hub folders (``config.json`` with ``architecture``, as
  ``dmjd export`` writes them);
- a Hugging Face ViTMAE folder (``config.json`` with ``model_type: vit_mae`` + ``model.safetensors``
  or ``pytorch_model.bin``, the key names of the published ``facebook/vit-mae-*``);
- a dmjd pre-training checkpoint or run folder.

The encoder comes back in timm's ViT keys (ConViT: ConvMAE's), the decoder in the keys of dmjd's
``MaskedPredictionBranch``. MAE's decoder was trained with MAE's sin-cos position embedding, whose
channels are dmjd's (timm's) in another order; the reader permutes the decoder's residual channels
so that it computes the same function with dmjd's embedding (``_permute_decoder``).
``fit_encoder_weights`` then adapts the encoder to another image size (timm's
``resample_abs_pos_embed``) or to grey images (timm's ``adapt_input_conv``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors import SafetensorError, safe_open
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from dmjd.config import ConfigError, config_from_dict
from dmjd.data import default_mean_std
from dmjd.io.checkpoint import CheckpointError, load_torch_file, resolve_checkpoint
from dmjd.models.convert import infer_convit_arch, official_encoder_weights
from dmjd.models.convit import CONVIT_SIZES, ConViT
from dmjd.models.encoder import VIT_SIZES, MaskedViT

EXPECTED = (
    "an encoder to start from: an official MAE / ConvMAE / DMJD checkpoint, timm ViT weights (.safetensors, "
    ".pth, .bin), timm:MODEL_NAME, a Hugging Face ViTMAE folder, or a dmjd checkpoint, run folder or export"
)
TIMM_PREFIX = "timm:"
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_WRAPPERS = ("module.", "_orig_mod.")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_LAYER = re.compile(r"^(?:vit\.)?encoder\.layer\.(\d+)\.(.+)$")
_HF_DECODER_LAYER = re.compile(r"^decoder\.decoder_(?:layers|encoder\.layer)\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# HF's layer names -> timm's Block names (query/key/value are joined into qkv separately).
_HF_BLOCK_NAMES = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
# Keys of an official MAE decoder -> dmjd's MaskedPredictionBranch.
_MAE_DECODER_NAMES = {"decoder_embed.": "decoder_embed.", "decoder_blocks.": "blocks.", "decoder_norm.": "norm.",
                      "decoder_pred.": "pred."}  # fmt: skip
# Decoder tensors whose rows (first dim) / columns (last dim) run over the residual channels.
_ROW_PERMUTED = re.compile(r"^(decoder_embed\.|norm\.|blocks\.\d+\.(norm1|norm2|attn\.proj|mlp\.fc2)\.)")
_COLUMN_PERMUTED = re.compile(r"^(pred\.weight|blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight)$")


@dataclass(frozen=True)
class DecoderArch:
    """An MAE decoder: width, blocks, heads, MLP ratio and the prediction's width per patch."""

    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    target_dim: int


@dataclass(frozen=True)
class SourceArch:
    """The architecture a source was trained with.

    ``arch`` is ``"vit"`` (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``) or ``"convit"``
    (``convit_size``: the ``CONVIT_SIZES`` preset, ``mlp_ratios``); ``img_size`` is the side its
    position embedding was made for; ``mean`` / ``std`` its input normalisation; ``norm_eps`` its
    LayerNorms' epsilon (Hugging Face: 1e-12; timm and dmjd: 1e-6).
    """

    arch: str
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    convit_size: str | None = None
    mlp_ratios: tuple[float, float, float] | None = None
    decoder: DecoderArch | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN_STD[0]
    std: tuple[float, ...] = IMAGENET_MEAN_STD[1]
    norm_eps: float = 1e-6

    def describe(self) -> str:
        """One phrase: ``ViT 192 wide, 12 blocks, 3 heads, patch 16 (224 px, 3 channels)``."""
        name = "ViT" if self.arch == "vit" else f"ConViT-{self.convit_size}"
        text = (f"{name} {self.embed_dim} wide, {self.depth} blocks, {self.num_heads} heads, patch {self.patch_size} "
                f"({self.img_size} px, {self.in_chans} channels)")  # fmt: skip
        if self.decoder is not None:
            d = self.decoder
            text += f" with a decoder {d.dim} wide, {d.depth} block{'s' if d.depth != 1 else ''}"
        return text


@dataclass
class LoadedSource:
    """What ``load_source`` read: where from, its kind and architecture, the encoder in timm's keys
    (ConViT: ConvMAE's), the decoder in ``MaskedPredictionBranch`` keys or None, and notes for the
    start-up lines. ``config`` is the run's config for a dmjd checkpoint."""

    source: str
    kind: str
    arch: SourceArch
    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None


def load_source(source: str | Path, timm_overlay: Mapping[str, Any] | None = None) -> LoadedSource:
    """Read the encoder (and decoder) of any source dmjd starts from or evaluates (module docstring).

    Args:
        source: a path, or ``timm:MODEL_NAME``.
        timm_overlay: ``pretrained_cfg_overlay`` for ``timm:`` (e.g. ``dict(file=...)`` offline).

    Raises:
        CheckpointError: one line naming the source and why it cannot be used: missing, not a
            checkpoint, a pickle that would run code, another architecture (a ResNet), a folder
            without ``config.json``, a Hugging Face folder of another model type.
    """
    text = str(source)
    if text.startswith(TIMM_PREFIX):
        name = text.removeprefix(TIMM_PREFIX)
        return _from_timm_model(text, _create_timm(name, timm_overlay), f"timm model {name}")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; expected {EXPECTED}")
    if path.is_dir():
        return _from_folder(path)
    if path.suffix == ".safetensors":
        return _from_state(text, _read_safetensors(path), "safetensors weights")
    with torch.serialization.safe_globals([argparse.Namespace]):  # official MAE / ConvMAE / DMJD keep their args
        state = load_torch_file(path, expected=EXPECTED)
    if isinstance(state, dict) and isinstance(state.get("config"), dict) and isinstance(state.get("model"), Mapping):
        return _from_dmjd(text, state)
    return _from_state(text, _state_dict_of(state, path), "checkpoint")


def is_dmjd_run(source: str | Path) -> bool:
    """Whether ``source`` names a dmjd run folder or pre-training checkpoint (``checkpoint-*.pth``; a
    missing path too, so that its error names what dmjd's commands expect first), which evaluations
    read with the run's config and position; anything else is read by ``load_source``."""
    path = Path(source)
    if str(source).startswith(TIMM_PREFIX):
        return False
    if not path.exists():
        return True
    if path.is_dir():
        return not (path / "config.json").is_file()
    return path.suffix == ".pth" and path.name.startswith("checkpoint")


def _create_timm(name: str, overlay: Mapping[str, Any] | None) -> nn.Module:
    """timm's model with its pre-trained weights, without classifier."""
    if not name.startswith("local-dir:") and not timm.is_model(name):
        raise CheckpointError(f"{TIMM_PREFIX}{name}: timm has no such model; list them with timm.list_models('vit_*')")
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(overlay) if overlay else None
        )
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{name}: timm cannot load its pre-trained weights ({reason})") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); expected {EXPECTED}") from None


def _state_dict_of(state: Any, path: Path) -> dict[str, Tensor]:
    """The weights in a loaded ``torch.save`` file: under ``model`` / ``state_dict``, or itself."""
    if isinstance(state, Mapping):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not any(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds PyTorch data but no weights (no state dict of tensors); expected {EXPECTED}")
    weights = {}
    for key, value in state.items():
        for prefix in _WRAPPERS:
            key = key.removeprefix(prefix)
        if isinstance(value, Tensor):
            weights[key] = value
    return weights


def _from_folder(path: Path) -> LoadedSource:
    config_file = path / "config.json"
    if not config_file.is_file():
        try:
            return _from_dmjd(str(path), load_torch_file(resolve_checkpoint(path), expected=EXPECTED))
        except CheckpointError:
            raise CheckpointError(
                f"{path} is a folder without config.json and without a dmjd checkpoint; expected {EXPECTED}"
            ) from None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file} is not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} holds no JSON object; expected {EXPECTED}")
    if config.get("model_type") == "vit_mae":
        return _from_hf_vit_mae(path, config)
    if "architecture" in config:
        return _from_timm_model(str(path), _create_timm(f"local-dir:{path}", None), "timm folder")
    what = f"model type {config['model_type']!r}" if "model_type" in config else "no model_type or architecture"
    raise CheckpointError(f"{config_file}: a folder of {what}; dmjd reads Hugging Face ViTMAE (vit_mae) and timm folders")


def _from_dmjd(source: str, state: dict[str, Any]) -> LoadedSource:
    """A dmjd pre-training checkpoint: encoder and masked prediction branch as the run saved them."""
    if state.get("kind") == "finetune":
        raise CheckpointError(f"{source} is a dmjd fine-tuning checkpoint; start from a pre-training checkpoint")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{source} describes a model this dmjd version cannot build: {err}") from None
    weights = _state_dict_of(state, Path(source))
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    decoder = {k.removeprefix("mpb."): v for k, v in weights.items() if k.startswith("mpb.")}
    if not encoder:
        raise CheckpointError(f"{source} holds no encoder weights ('encoder.*' keys)")
    m = cfg.model
    if m.style != "mae":
        raise CheckpointError(f"{source} is a model.style={m.style} run; dmjd starts from mae-style encoders")
    if m.arch == "convit":
        kwargs = infer_convit_arch(encoder)
        arch = _convit_arch(kwargs, source)
    else:
        arch = _vit_arch_from_weights(encoder, m.num_heads)
    mean, std = default_mean_std(m.in_chans)
    decoder_arch = DecoderArch(m.decoder_dim, m.decoder_depth, m.decoder_heads, m.decoder_mlp_ratio,
                               int(decoder["pred.weight"].shape[0])) if "pred.weight" in decoder else None  # fmt: skip
    arch = replace(arch, decoder=decoder_arch, mean=tuple(cfg.data.mean or mean), std=tuple(cfg.data.std or std))
    return LoadedSource(source, "dmjd checkpoint", arch, encoder, decoder or None, config=state["config"])


def _from_state(source: str, weights: dict[str, Tensor], kind: str) -> LoadedSource:
    """A state dict in official MAE / timm ViT keys, or an official ConvMAE / DMJD ConViT."""
    if "patch_embed1.proj.weight" in weights:
        encoder = official_encoder_weights(weights)
        arch = _convit_arch(infer_convit_arch(encoder), source)
        return LoadedSource(source, f"ConViT {kind}", arch, encoder,
                            notes=["its decoder is not converted (ConvMAE's decoder differs from dmjd's)"])  # fmt: skip
    if any(key.startswith("vit.embeddings.") for key in weights):
        raise CheckpointError(f"{source} holds Hugging Face ViTMAE weights: give the folder holding it and its config.json")
    if "patch_embed.proj.weight" not in weights or "blocks.0.attn.qkv.weight" not in weights:
        sample = ", ".join(sorted(weights)[:3])
        raise CheckpointError(f"{source} holds no ViT or ConViT encoder (keys {sample}, ...): another architecture; "
                              f"expected {EXPECTED}")  # fmt: skip
    encoder = {k: v for k, v in weights.items() if not k.startswith(("decoder_", "mask_token", "head."))}
    notes = []
    decoder = None
    if "decoder_embed.weight" in weights:
        decoder, decoder_note = _mae_decoder(weights)
        notes.append(decoder_note)
    arch = _vit_arch_from_weights(encoder, None)
    if decoder is not None:
        arch = replace(arch, decoder=_decoder_arch(decoder, max(1, int(decoder["decoder_embed.weight"].shape[0]) // 32)))
    return LoadedSource(source, f"ViT {kind}", arch, encoder, decoder, notes)


def _from_timm_model(source: str, model: nn.Module, kind: str) -> LoadedSource:
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    for unsupported in ("reg_token", "fc_norm.weight", "blocks.0.ls1.gamma", "norm_pre.weight", "blocks.0.attn.q_norm.weight"):
        if unsupported in weights:
            raise CheckpointError(f"{source}: a timm ViT with {unsupported!r}; dmjd's encoder is the plain ViT with "
                                  "a class token and a final norm")  # fmt: skip
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or "patch_embed.proj.weight" not in weights:
        raise CheckpointError(f"{source}: {type(model).__name__} is not a ViT; dmjd starts from ViT and ConViT encoders")
    heads = int(getattr(blocks[0].attn, "num_heads", 0)) or None
    arch = _vit_arch_from_weights(weights, heads)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if "mean" in cfg and "std" in cfg:
        arch = replace(arch, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return LoadedSource(source, kind, arch, weights)


def _from_hf_vit_mae(path: Path, config: dict[str, Any]) -> LoadedSource:
    """A Hugging Face ViTMAE folder: its encoder in timm's keys and its decoder in dmjd's."""
    found = next((path / name for name in _HF_WEIGHTS if (path / name).is_file()), None)
    if found is None:
        raise CheckpointError(f"{path} has a ViTMAE config.json but no {' or '.join(_HF_WEIGHTS)}")
    raw = _read_safetensors(found) if found.suffix == ".safetensors" else _state_dict_of(load_torch_file(found), found)
    encoder: dict[str, Tensor] = {}
    for key, value in raw.items():
        if (layer := _HF_LAYER.match(key)) is not None:
            encoder.update(_hf_block_entry(f"blocks.{layer.group(1)}.", layer.group(2), value))
            continue
        name = key.removeprefix("vit.")
        renamed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
                   "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                   "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                   "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}.get(name)  # fmt: skip
        if renamed is not None:
            encoder[renamed] = value
    _join_qkv(encoder)
    decoder_mae: dict[str, Tensor] = {}
    for key, value in raw.items():
        if (layer := _HF_DECODER_LAYER.match(key)) is not None:
            decoder_mae.update(_hf_block_entry(f"decoder_blocks.{layer.group(1)}.", layer.group(2), value))
        elif key.startswith("decoder."):
            decoder_mae[key.removeprefix("decoder.")] = value
    _join_qkv(decoder_mae)
    heads = int(config.get("num_attention_heads", 0)) or None
    try:
        arch = _vit_arch_from_weights(encoder, heads)
    except CheckpointError as err:
        raise CheckpointError(f"{found}: {err}") from None
    notes = []
    eps = float(config.get("layer_norm_eps", 1e-12))
    if eps != 1e-6:
        notes.append(f"its LayerNorms use eps {eps:g}; continued pre-training uses timm's 1e-6")
    decoder = None
    if "decoder_embed.weight" in decoder_mae:
        decoder, decoder_note = _mae_decoder(decoder_mae)
        notes.append(decoder_note)
    if decoder is not None:
        arch = replace(arch, decoder=_decoder_arch(decoder, int(config.get("decoder_num_attention_heads", 16))))
    mean, std = _hf_mean_std(path)
    arch = replace(arch, mean=mean, std=std, norm_eps=eps)
    return LoadedSource(str(path), "Hugging Face ViTMAE folder", arch, encoder, decoder, notes)


def _hf_block_entry(prefix: str, name: str, value: Tensor) -> dict[str, Tensor]:
    """One HF layer tensor under timm's Block name (query/key/value kept apart for ``_join_qkv``)."""
    stem, _, leaf = name.rpartition(".")
    if stem.startswith("attention.attention."):
        return {f"{prefix}attn.{stem.rpartition('.')[2]}.{leaf}": value}
    return {f"{prefix}{_HF_BLOCK_NAMES.get(stem, stem)}.{leaf}": value}


def _join_qkv(weights: dict[str, Tensor]) -> None:
    """Replace ``...attn.query/key/value.*`` by timm's ``...attn.qkv.*`` (in place; missing biases are zero)."""
    for key in [k for k in weights if k.endswith("attn.query.weight")]:
        stem = key.removesuffix("query.weight")
        parts = [weights.pop(f"{stem}{name}.weight") for name in ("query", "key", "value")]
        weights[f"{stem}qkv.weight"] = torch.cat(parts)
        biases = [weights.pop(f"{stem}{name}.bias", torch.zeros(p.shape[0])) for name, p in
                  zip(("query", "key", "value"), parts, strict=True)]  # fmt: skip
        weights[f"{stem}qkv.bias"] = torch.cat(biases)


def _hf_mean_std(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image processor's normalisation (``preprocessor_config.json``), else ImageNet's."""
    try:
        pre = json.loads((path / "preprocessor_config.json").read_text())
        return tuple(pre["image_mean"]), tuple(pre["image_std"])
    except (OSError, ValueError, KeyError, TypeError):
        return IMAGENET_MEAN_STD


def _vit_arch_from_weights(weights: Mapping[str, Tensor], num_heads: int | None) -> SourceArch:
    """ViT architecture read from the shapes of timm-keyed weights (heads: given, else the standard
    size of that width, else width / 64)."""
    try:
        proj = weights["patch_embed.proj.weight"]
        tokens = int(weights["pos_embed"].shape[1])
        fc1 = weights["blocks.0.mlp.fc1.weight"]
    except KeyError as err:
        raise CheckpointError(f"ViT weights lack {err.args[0]!r}") from None
    dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1 or "cls_token" not in weights:
        raise CheckpointError(f"pos_embed has {tokens} tokens: not a class token plus a square grid")
    depth = len({m.group(1) for key in weights if (m := _BLOCK.match(key))})
    if num_heads is None:
        num_heads = next((s["num_heads"] for s in VIT_SIZES.values() if s["embed_dim"] == dim), max(dim // 64, 1))
    return SourceArch("vit", side * patch, patch, in_chans, dim, depth, num_heads, fc1.shape[0] / dim)


def _convit_arch(kwargs: dict[str, Any], source: str) -> SourceArch:
    """A ConViT's architecture, which must be one of the ``CONVIT_SIZES`` presets' widths and depths."""
    dims, depths = tuple(kwargs["embed_dims"]), tuple(kwargs["depths"])
    size = next((name for name, s in CONVIT_SIZES.items() if s["embed_dims"] == dims and s["depths"] == depths), None)
    if size is None:
        raise CheckpointError(f"{source}: a ConViT with widths {dims} and depths {depths}, none of dmjd's sizes "
                              f"({', '.join(CONVIT_SIZES)})")  # fmt: skip
    return SourceArch("convit", kwargs["img_size"], kwargs["patch_size"], kwargs["in_chans"], dims[2], depths[2],
                      kwargs["num_heads"], convit_size=size, mlp_ratios=tuple(kwargs["mlp_ratios"]))  # fmt: skip


def _decoder_arch(decoder: Mapping[str, Tensor], num_heads: int) -> DecoderArch:
    dim = int(decoder["decoder_embed.weight"].shape[0])
    depth = len({m.group(1) for key in decoder if (m := _BLOCK.match(key))})
    ratio = decoder["blocks.0.mlp.fc1.weight"].shape[0] / dim if depth else 4.0
    return DecoderArch(dim, depth, num_heads, ratio, int(decoder["pred.weight"].shape[0]))


def mae_sincos_pos_embed(dim: int, side: int) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding of a ``side x side`` grid (``get_2d_sincos_pos_embed``),
    ``[side * side, dim]``: channels ``[sin(x w), cos(x w), sin(y w), cos(y w)]``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64), indexing="ij")
    x, y = np.outer(xs.reshape(-1), omega), np.outer(ys.reshape(-1), omega)
    return torch.from_numpy(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)).float()


def mae_to_dmjd_channels(dim: int) -> Tensor:
    """The permutation ``perm`` with ``mae_pos_embed[:, perm] == sincos_pos_embed_2d`` (dmjd's, timm's order)."""
    q = dim // 4
    return torch.cat([torch.arange(2 * q, 3 * q), torch.arange(q), torch.arange(3 * q, 4 * q), torch.arange(q, 2 * q)])


def _mae_decoder(weights: Mapping[str, Tensor]) -> tuple[dict[str, Tensor] | None, str]:
    """An official-MAE-keyed decoder in ``MaskedPredictionBranch`` keys, its channels permuted to
    dmjd's position embedding; None (with why) when its position embedding is not MAE's sin-cos."""
    pos = weights.get("decoder_pos_embed")
    if pos is None or "mask_token" not in weights:
        return None, "its decoder has no decoder_pos_embed or mask_token: a new decoder starts fresh"
    dim, tokens = int(pos.shape[-1]), int(pos.shape[1])
    side = math.isqrt(tokens - 1)
    perm = mae_to_dmjd_channels(dim)
    if (
        side * side != tokens - 1
        or dim % 4
        or not torch.allclose(pos[0, 1:].float(), mae_sincos_pos_embed(dim, side), atol=1e-4)
    ):
        return None, "its decoder's position embedding is not MAE's fixed sin-cos: a new decoder starts fresh"
    decoder = {"mask_token": weights["mask_token"]}
    for key, value in weights.items():
        new = next((key.replace(old, ours, 1) for old, ours in _MAE_DECODER_NAMES.items() if key.startswith(old)), None)
        if new is not None:
            decoder[new] = value
    permuted = {key: _permute(key, value, perm) for key, value in decoder.items()}
    return permuted, "its MAE decoder is read with its channels reordered to dmjd's position embedding"


def _permute(key: str, value: Tensor, perm: Tensor) -> Tensor:
    if key == "mask_token":
        return value[..., perm]
    if _ROW_PERMUTED.match(key):
        return value[perm]
    if _COLUMN_PERMUTED.match(key):
        return value[:, perm]
    return value


def fit_encoder_weights(weights: Mapping[str, Tensor], arch: SourceArch, img_size: int, in_chans: int) -> dict[str, Tensor]:
    """The encoder weights for another image side (position embedding resampled, bicubic, by
    timm's ``resample_abs_pos_embed``) and channel count (timm's ``adapt_input_conv``: 3 -> 1 sums
    the colour filters)."""
    fitted = dict(weights)
    first = "patch_embed.proj.weight" if arch.arch == "vit" else "patch_embed1.proj.weight"
    if in_chans != arch.in_chans:
        fitted[first] = adapt_input_conv(in_chans, fitted[first].float(), base_chans=arch.in_chans)
    old, new = arch.img_size // arch.patch_size, img_size // arch.patch_size
    if old != new:
        prefix = 1 if arch.arch == "vit" else 0
        fitted["pos_embed"] = resample_abs_pos_embed(
            fitted["pos_embed"].float(), [new, new], [old, old], num_prefix_tokens=prefix
        )
    return fitted


def source_encoder(source: LoadedSource, img_size: int | None = None, in_chans: int | None = None) -> nn.Module:
    """dmjd's encoder (``MaskedViT`` or ``ConViT``) holding the source's weights, in eval mode, its
    LayerNorms with the source's epsilon.

    Args:
        img_size, in_chans: the input to adapt to (default: the source's own).

    Raises:
        CheckpointError: weights that do not fit the architecture read from them (which keys differ).
    """
    a = source.arch
    img_size, in_chans = img_size or a.img_size, in_chans or a.in_chans
    encoder: nn.Module
    if a.arch == "vit":
        encoder = MaskedViT(img_size, a.patch_size, in_chans, a.embed_dim, a.depth, a.num_heads, a.mlp_ratio)
    else:
        preset = CONVIT_SIZES[a.convit_size or "base"]
        encoder = ConViT(img_size=img_size, patch_size=a.patch_size, in_chans=in_chans, embed_dims=preset["embed_dims"],
                         depths=preset["depths"], num_heads=a.num_heads, mlp_ratios=a.mlp_ratios or preset["mlp_ratios"])  # fmt: skip
    load_matching(encoder, fit_encoder_weights(source.encoder, a, img_size, in_chans), source.source)
    for module in encoder.modules() if a.arch == "vit" else ():
        if isinstance(module, nn.LayerNorm):
            module.eps = a.norm_eps
    return encoder.eval()


def weight_mismatch(module: nn.Module, weights: Mapping[str, Tensor]) -> str | None:
    """A one-line summary of how ``weights`` differ from ``module``'s state dict, None if they fit."""
    own = module.state_dict()
    problems = {
        "missing": sorted(own.keys() - weights.keys()),
        "unexpected": sorted(weights.keys() - own.keys()),
        "of another shape": sorted(k for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape),
    }
    parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
             for what, keys in problems.items() if keys]  # fmt: skip
    return "; ".join(parts) or None


def load_matching(module: nn.Module, weights: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(weights, strict=True)``, or a CheckpointError naming the keys that differ."""
    mismatch = weight_mismatch(module, weights)
    if mismatch:
        raise CheckpointError(f"{source}: its weights do not fit the architecture read from them: {mismatch}")
    module.load_state_dict(dict(weights), strict=True)
