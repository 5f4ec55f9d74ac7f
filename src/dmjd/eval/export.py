"""Export a pre-trained encoder as a safetensors file that timm loads with strict keys.

The snippet printed for the user names the registered timm architecture when one matches
(``vit_base_patch16_224``) and otherwise rebuilds a custom size from ``vit_base_patch16_224`` with
keyword arguments. ``num_classes=0`` is also set in ``pretrained_cfg_overlay``: when it differs
from the named model's 1000 classes, timm silently loads with ``strict=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from dmjd.eval.loading import InputSpec

GENERIC_VIT = "vit_base_patch16_224"
_ARCH_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


@dataclass(frozen=True)
class ExportedEncoder:
    """Where an encoder was written and how timm rebuilds it."""

    file: Path
    model_name: str
    kwargs: dict[str, Any]
    overlay: dict[str, Any]

    @property
    def snippet(self) -> str:
        """One line of Python (``import timm`` assumed) that loads the file with strict keys."""
        overlay = ", ".join(f"{k}={_literal(v)}" for k, v in self.overlay.items())
        kwargs = "".join(f", {k}={_literal(v)}" for k, v in self.kwargs.items())
        return (
            f"timm.create_model({_literal(self.model_name)}, pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay=dict({overlay}){kwargs})"
        )


def _literal(value: Any) -> str:
    """A Python literal: double-quoted strings (JSON escapes are valid Python), tuples, numbers."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def timm_architecture(encoder: nn.Module) -> tuple[str, dict[str, Any]]:
    """The timm model name and the keyword arguments that rebuild ``encoder``'s architecture.

    Raises:
        ValueError: the encoder cannot describe itself to timm (no ``timm_kwargs``).
    """
    if not hasattr(encoder, "timm_kwargs"):
        raise ValueError(
            f"export writes timm ViT weights and needs a ViT encoder (model.arch=vit), got {type(encoder).__name__}"
        )
    arch = encoder.timm_kwargs()
    name = encoder.timm_model_name()
    if name is None:
        return GENERIC_VIT, {key: arch[key] for key in _ARCH_KEYS}
    return name, ({"in_chans": arch["in_chans"]} if arch["in_chans"] != 3 else {})


def export_encoder(encoder: nn.Module, path: str | Path, spec: InputSpec) -> ExportedEncoder:
    """Write the encoder's weights (timm keys) to a safetensors file.

    Args:
        encoder: a dmjd encoder (``timm_kwargs()``, ``timm_model_name()``).
        path: the ``.safetensors`` file to write (folders are created).
        spec: the encoder's input; recorded in the snippet's ``pretrained_cfg_overlay`` so that
            ``timm.data.resolve_data_config(model=...)`` gives the right size and normalisation.

    Raises:
        ValueError: ``path`` does not end in ``.safetensors``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export writes a .safetensors file, got {path}")
    name, kwargs = timm_architecture(encoder)
    weights = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "timm_model": name, "timm_kwargs": json.dumps(kwargs)}
    save_file(weights, str(path), metadata=metadata)
    overlay = {
        "file": str(path.resolve()),
        "num_classes": 0,
        "input_size": (spec.in_chans, spec.img_size, spec.img_size),
        "mean": spec.mean,
        "std": spec.std,
        "crop_pct": 1.0,
    }
    return ExportedEncoder(path.resolve(), name, kwargs, overlay)
