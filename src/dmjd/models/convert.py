"""Load the official ConvMAE / DMJD pre-trained ConViT checkpoints into dmjd's ``ConViT``.

The official pre-training checkpoints (``torch.save({"model": state_dict, "args": Namespace,
...})`` of ``MaskedAutoencoderConvViT`` / ``DMJDConViT``) hold the encoder under the same names as
``ConViT`` (``patch_embed1..4``, ``blocks1..3``, ``stage1_output_decode``,
``stage2_output_decode``, ``pos_embed``, ``norm``) next to the pre-training branches
(``decoder_*``, ``mask_token``; DMJD adds ``proj_embed.*`` and ``predictor.*``). The mapping keeps
the encoder entries, drops the branches and reads the architecture from the tensor shapes. The
branches are not converted: dmjd's masked prediction branch uses a fixed position embedding of
another channel order, so the official decoder weights would not fit it.

The reverse direction needs no mapping: ``dmjd.models.encoder_state_dict`` of a ConViT run gives
weights under the official names, which ConvMAE's fine-tuning, detection and segmentation code
load as its pre-trained weights.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dmjd.io.checkpoint import CheckpointError, load_checkpoint
from dmjd.models.convit import CONVIT_SIZES, ConViT, stage_strides

# Pre-training branches of the official models (ConvMAE: decoder; DMJD: + projector, predictor).
BRANCH_PREFIXES = ("decoder_", "mask_token", "proj_embed.", "predictor.")
# Present only in the official fine-tuned classifiers (``models_convvit.ConvViT``).
CLASSIFIER_PREFIXES = ("head.", "fc_norm.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BLOCK = re.compile(r"^blocks([123])\.(\d+)\.")


def official_encoder_weights(source: Mapping[str, Any]) -> dict[str, Tensor]:
    """The encoder entries of an official ConvMAE / DMJD pre-training checkpoint.

    Args:
        source: the loaded checkpoint (weights under ``"model"``) or its state dict;
            ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed.

    Returns:
        ``ConViT`` state-dict entries (official names), branches dropped.

    Raises:
        CheckpointError: a fine-tuned classifier checkpoint (``head.*``, ``fc_norm.*``; it has no
            multi-scale fusion convolutions), or no ConViT encoder entries at all.
    """
    state = source["model"] if isinstance(source.get("model"), Mapping) else source
    weights: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(CLASSIFIER_PREFIXES):
            raise CheckpointError(
                f"found {key!r}: this is a fine-tuned ConvMAE classifier, not a pre-training "
                "checkpoint; load the pre-trained weights instead"
            )
        if not key.startswith(BRANCH_PREFIXES):
            weights[key] = value
    if "patch_embed1.proj.weight" not in weights:
        raise CheckpointError("no 'patch_embed1.proj.weight': not a ConvMAE / DMJD ConViT checkpoint")
    return weights


def infer_convit_arch(weights: Mapping[str, Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """``ConViT`` keyword arguments read from the shapes of official encoder weights.

    Widths and strides come from ``patch_embed1..3``, depths from the block indices, MLP ratios
    from each stage's first MLP, the (square) token grid from ``pos_embed``. The number of heads
    is not stored in the weights: ``num_heads``, else the ``CONVIT_SIZES`` preset of the same
    stage-3 width, else width / 64.

    Raises:
        CheckpointError: missing entries, a non-square grid, or stage strides other than
            ``stage_strides(patch_size)``.
    """
    try:
        projections = [weights[f"patch_embed{i}.proj.weight"] for i in (1, 2, 3)]
        dims = tuple(int(w.shape[0]) for w in projections)
        strides = tuple(int(w.shape[-1]) for w in projections)
        depths = tuple(
            len({m.group(2) for key in weights if (m := _BLOCK.match(key)) and m.group(1) == str(stage)}) for stage in (1, 2, 3)
        )
        mlp_ratios = tuple(weights[f"blocks{stage}.0.mlp.fc1.weight"].shape[0] / dims[stage - 1] for stage in (1, 2, 3))
        num_tokens = int(weights["pos_embed"].shape[1])
    except KeyError as err:
        raise CheckpointError(f"ConViT weights lack {err.args[0]!r}") from None
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise CheckpointError(f"pos_embed has {num_tokens} tokens, not a square grid")
    patch_size = math.prod(strides)
    if strides != stage_strides(patch_size):
        raise CheckpointError(
            f"stage strides {strides} differ from ConViT's {stage_strides(patch_size)} for patch {patch_size}"
        )
    if num_heads is None:
        presets = [p["num_heads"] for p in CONVIT_SIZES.values() if p["embed_dims"][2] == dims[2]]
        num_heads = presets[0] if presets else max(dims[2] // 64, 1)
    return {
        "img_size": side * patch_size,
        "patch_size": patch_size,
        "in_chans": int(projections[0].shape[1]),
        "embed_dims": dims,
        "depths": depths,
        "num_heads": num_heads,
        "mlp_ratios": mlp_ratios,
    }


def load_official_convit(source: str | Path | Mapping[str, Any], num_heads: int | None = None) -> ConViT:
    """A ``ConViT`` holding the encoder of an official ConvMAE / DMJD pre-training checkpoint.

    Args:
        source: path of the ``.pth`` file (loaded without running code; its ``args`` Namespace
            is allowed), the loaded checkpoint, or its state dict.
        num_heads: stage-3 attention heads when the width does not identify them (see
            ``infer_convit_arch``).

    Returns:
        The encoder in eval mode, every weight loaded (strict keys and shapes).

    Raises:
        CheckpointError: unreadable file, not a ConViT pre-training checkpoint, or weights that do
            not fit the inferred architecture.
    """
    if isinstance(source, (str, Path)):
        with torch.serialization.safe_globals([argparse.Namespace]):
            source = load_checkpoint(source)
    weights = official_encoder_weights(source)
    encoder = ConViT(**infer_convit_arch(weights, num_heads))
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"official ConViT weights do not fit the inferred architecture: {err}") from None
    return encoder.eval()
