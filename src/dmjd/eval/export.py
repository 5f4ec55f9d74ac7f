"""Export a pre-trained encoder as a safetensors file that loads with strict keys.

A ViT is written with timm's key names; the snippet printed for the user names the registered
timm architecture when one matches (``vit_base_patch16_224``) and otherwise rebuilds a custom size
from ``vit_base_patch16_224`` with keyword arguments. ``num_classes=0`` is also set in
``pretrained_cfg_overlay``: when it differs from the named model's 1000 classes, timm silently
loads with ``strict=False``.

A ConViT is written with ConvMAE's key names (those its detection / segmentation / fine-tuning code
loads) and the metadata ``{"arch": "convit", "arch_kwargs": JSON}``; its snippet rebuilds
``dmjd.models.convit.ConViT`` and loads the file with ``strict=True``; like a timm model without
classifier, that ``model(x)`` gives the pooled features ``[B, embed_dim]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from safetensors.torch import save_file
from torch import nn

from dmjd.eval.loading import InputSpec
from dmjd.io.checkpoint import file_mode
from dmjd.models.convit import ConViT
from dmjd.models.encoder import TimmDescribed

GENERIC_VIT = "vit_base_patch16_224"
CONVIT_CLASS = "dmjd.models.convit.ConViT"
_ARCH_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


@dataclass(frozen=True)
class ExportedEncoder:
    """Where an encoder was written and how it is rebuilt.

    ``arch`` is ``"vit"`` (``model_name``: the timm model, ``kwargs``: its extra arguments,
    ``overlay``: its ``pretrained_cfg_overlay``) or ``"convit"`` (``model_name``: the dmjd class,
    ``kwargs``: ``ConViT`` arguments, no overlay).
    """

    file: Path
    model_name: str
    kwargs: dict[str, Any]
    overlay: dict[str, Any]
    arch: str = "vit"

    @property
    def snippet(self) -> str:
        """One line of Python that rebuilds the encoder and loads the file with strict keys.

        ViT: an expression (``import timm`` assumed). ConViT: statements that import what they
        need and leave the encoder, in eval mode, in ``model``.
        """
        kwargs = ", ".join(f"{k}={_literal(v)}" for k, v in self.kwargs.items())
        if self.arch == "convit":
            return (
                f"import dmjd.models.convit, safetensors.torch; model = {self.model_name}({kwargs}).eval(); "
                f"model.load_state_dict(safetensors.torch.load_file({_literal(str(self.file))}), strict=True)"
            )
        overlay = ", ".join(f"{k}={_literal(v)}" for k, v in self.overlay.items())
        return (
            f"timm.create_model({_literal(self.model_name)}, pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay=dict({overlay}){', ' + kwargs if kwargs else ''})"
        )

    def describe(self) -> dict[str, Any]:
        """The architecture entries of the export command's JSON."""
        if self.arch == "convit":
            return {"arch": self.arch, "arch_kwargs": self.kwargs}
        return {"timm_model": self.model_name, "timm_kwargs": self.kwargs}


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
            f"export writes timm ViT or dmjd ConViT weights and needs a ViT or ConViT encoder, got {type(encoder).__name__}"
        )
    described = cast(TimmDescribed, encoder)
    arch = described.timm_kwargs()
    name = described.timm_model_name()
    if name is None:
        return GENERIC_VIT, {key: arch[key] for key in _ARCH_KEYS}
    return name, ({"in_chans": arch["in_chans"]} if arch["in_chans"] != 3 else {})


def export_encoder(encoder: nn.Module, path: str | Path, spec: InputSpec) -> ExportedEncoder:
    """Write the encoder's weights (timm keys for a ViT, ConvMAE keys for a ConViT) to a safetensors file.

    Args:
        encoder: a dmjd ViT (``timm_kwargs()``, ``timm_model_name()``) or ConViT encoder.
        path: the ``.safetensors`` file to write (folders are created).
        spec: the encoder's input; for a ViT recorded in the snippet's ``pretrained_cfg_overlay``
            so that ``timm.data.resolve_data_config(model=...)`` gives the right size and
            normalisation, for a ConViT in the file's ``input_spec`` metadata.

    The file gets the mode of any new file (0644 under the usual umask).

    Raises:
        ValueError: ``path`` does not end in ``.safetensors``, or the encoder is neither a ViT nor a ConViT.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export writes a .safetensors file, got {path}")
    if isinstance(encoder, ConViT):
        name, kwargs, arch = CONVIT_CLASS, encoder.arch_kwargs(), "convit"
        metadata = {"format": "pt", "arch": arch, "arch_kwargs": json.dumps(kwargs),
                    "input_spec": json.dumps(asdict(spec))}  # fmt: skip
    else:
        (name, kwargs), arch = timm_architecture(encoder), "vit"
        metadata = {"format": "pt", "timm_model": name, "timm_kwargs": json.dumps(kwargs)}
    weights = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata=metadata)
    os.chmod(path, file_mode())  # safetensors creates it 0600; exports are to be shared
    if arch == "convit":
        return ExportedEncoder(path.resolve(), name, kwargs, {}, arch)
    overlay = {
        "file": str(path.resolve()),
        "num_classes": 0,
        "input_size": (spec.in_chans, spec.img_size, spec.img_size),
        "mean": spec.mean,
        "std": spec.std,
        "crop_pct": 1.0,
    }
    return ExportedEncoder(path.resolve(), name, kwargs, overlay)
