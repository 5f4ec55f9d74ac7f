"""Export a pre-trained encoder as a hub folder: ``config.json``, ``model.safetensors`` and a model card.

A ViT is written by timm's own ``save_for_hf`` as a timm ``VisionTransformer``, so that
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (or ``hf-hub:USER/NAME`` once
``huggingface_hub.upload_folder`` has published the folder unchanged) loads it with strict keys.
``config.json`` names the registered timm model of the encoder's width, depth, heads and patch
(``vit_tiny_patch16_224``; else a member of the family, ``vit_base_patch16_224``, with the sizes in
``model_args``), ``num_classes: 0``, the pooling dmjd's evaluations used (``global_pool``:
``avg``, the mean of the normed patch tokens, as ``dmjd finetune``; or ``token``, the class token,
as ``knn`` / ``linprobe`` by default) and the input (size, mean, std, interpolation) in
``pretrained_cfg``; ``model(x)`` then gives the same ``[B, D]`` feature as dmjd.

A ConViT keeps its own loader: ``model.safetensors`` holds ConvMAE's key names (those its
detection / segmentation / fine-tuning code loads) and the metadata ``{"arch": "convit",
"arch_kwargs": JSON, "input_spec": JSON}``; its snippet rebuilds ``dmjd.models.convit.ConViT``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import timm
from safetensors.torch import save_file
from timm.models import save_for_hf
from torch import nn

from dmjd.eval.loading import InputSpec
from dmjd.io.atomic import atomic_files, atomic_write, file_mode
from dmjd.models.convit import ConViT
from dmjd.models.encoder import TimmDescribed, vit_size_name

GENERIC_VIT = "vit_base_patch16_224"
CONVIT_CLASS = "dmjd.models.convit.ConViT"
WEIGHTS = "model.safetensors"
CARD = "README.md"
ExportPool = Literal["avg", "token"]
POOL_WORDS = {
    "avg": "the mean of the normed patch tokens (`global_pool: avg`), as `dmjd finetune` pools",
    "token": "the class token (`global_pool: token`), as `dmjd knn` and `linprobe` pool by default",
}
_SIZE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")


@dataclass(frozen=True)
class ExportedEncoder:
    """Where an encoder was written and how it is rebuilt.

    ``arch`` is ``"vit"`` (``model_name``: the timm model ``config.json`` names, ``kwargs``: its
    ``model_args`` besides ``num_classes``/``global_pool``, ``pool``: timm's ``global_pool``) or
    ``"convit"`` (``model_name``: the dmjd class, ``kwargs``: ``ConViT`` arguments).
    """

    folder: Path
    model_name: str
    kwargs: dict[str, Any]
    pool: str
    arch: str = "vit"

    @property
    def file(self) -> Path:
        """The weights file."""
        return self.folder / WEIGHTS

    @property
    def files(self) -> list[Path]:
        """The files of the export (weights, and a ViT's ``config.json``), without the card."""
        return [self.file] + ([self.folder / "config.json"] if self.arch == "vit" else [])

    @property
    def snippet(self) -> str:
        """One line of Python that rebuilds the encoder and loads the weights with strict keys.

        ViT: an expression (``import timm`` assumed). ConViT: statements that import what they
        need and leave the encoder, in eval mode, in ``model``.
        """
        if self.arch == "convit":
            kwargs = ", ".join(f"{k}={_literal(v)}" for k, v in self.kwargs.items())
            return (
                f"import dmjd.models.convit, safetensors.torch; model = {self.model_name}({kwargs}).eval(); "
                f"model.load_state_dict(safetensors.torch.load_file({_literal(str(self.file))}), strict=True)"
            )
        return f"timm.create_model({_literal('local-dir:' + str(self.folder))}, pretrained=True)"

    def describe(self) -> dict[str, Any]:
        """The architecture entries of the export command's JSON."""
        if self.arch == "convit":
            return {"arch": self.arch, "arch_kwargs": self.kwargs}
        return {"timm_model": self.model_name, "timm_kwargs": self.kwargs, "global_pool": self.pool}


def _literal(value: Any) -> str:
    """A Python literal: double-quoted strings (JSON escapes are valid Python), tuples, numbers."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def timm_architecture(encoder: nn.Module) -> tuple[str, dict[str, Any]]:
    """The timm model name and the keyword arguments that rebuild ``encoder``'s architecture.

    The registered model of the encoder's width, depth, heads and patch when there is one (any
    image size and channels: ``img_size`` / ``in_chans`` when they differ from its 224 px, RGB);
    else ``vit_base_patch16_224`` (or the size's patch-16 model) with the differing sizes.

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
    kwargs: dict[str, Any] = {}
    if name is None:
        size = vit_size_name(arch)
        name = f"vit_{size}_patch16_224" if size is not None else GENERIC_VIT
        kwargs["patch_size"] = arch["patch_size"]
        if size is None:
            kwargs.update({key: arch[key] for key in _SIZE_KEYS})
    if arch["img_size"] != 224:
        kwargs["img_size"] = arch["img_size"]
    if arch["in_chans"] != 3:
        kwargs["in_chans"] = arch["in_chans"]
    return name, kwargs


def export_encoder(
    encoder: nn.Module,
    folder: str | Path,
    spec: InputSpec,
    pool: ExportPool = "avg",
    license: str = "other",
) -> ExportedEncoder:
    """Write the encoder as a hub folder (module docstring): ``config.json`` + ``model.safetensors``
    for a ViT, ``model.safetensors`` with metadata for a ConViT (the card: ``write_model_card``).

    Args:
        encoder: a dmjd ViT (``timm_kwargs()``, ``timm_model_name()``) or ConViT encoder.
        folder: where to write (created).
        spec: the encoder's input, written as the ``pretrained_cfg`` (ViT) or metadata (ConViT).
        pool: the ViT's ``global_pool``: ``avg`` (mean of the normed patch tokens) or ``token``.
        license: the weights' licence identifier, in ``pretrained_cfg``.

    The files get the mode of any new file (0644 under the usual umask).

    Raises:
        ValueError: the encoder is neither a ViT nor a ConViT.
    """
    folder = Path(folder).resolve()
    with atomic_files(folder) as tmp:  # an interrupted export leaves no half-written file
        if isinstance(encoder, ConViT):
            kwargs = encoder.arch_kwargs()
            weights = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
            metadata = {"format": "pt", "arch": "convit", "arch_kwargs": json.dumps(kwargs),
                        "input_spec": json.dumps(asdict(spec))}  # fmt: skip
            save_file(weights, str(tmp / WEIGHTS), metadata=metadata)
            exported = ExportedEncoder(folder, CONVIT_CLASS, kwargs, "avg", "convit")
        else:
            name, kwargs = timm_architecture(encoder)
            model = timm.create_model(name, pretrained=False, num_classes=0, global_pool=pool, fc_norm=False, **kwargs)
            model.load_state_dict(encoder.state_dict(), strict=True)
            data = {"input_size": (spec.in_chans, spec.img_size, spec.img_size), "mean": spec.mean, "std": spec.std,
                    "interpolation": "bicubic", "crop_pct": 1.0}  # fmt: skip
            save_for_hf(model.cpu(), str(tmp), model_config={"pretrained_cfg": {"tag": "dmjd", "license": license}},
                        safe_serialization=True, data_config=data)  # fmt: skip
            exported = ExportedEncoder(folder, name, kwargs, pool)
        for path in tmp.iterdir():
            os.chmod(path, file_mode())  # safetensors creates files 0600; exports are to be shared
    return exported


def write_model_card(exported: ExportedEncoder, text: str) -> Path:
    """Write ``text`` (``model_card``) as the export's ``README.md``."""
    return atomic_write(exported.folder / CARD, text)


def model_card(
    exported: ExportedEncoder,
    run: dict[str, Any],
    evaluations: Sequence[dict[str, Any]],
    commands: Sequence[str],
    license: str = "other",
) -> str:
    """A hub model card (``README.md``) for an export.

    Args:
        run: ``data`` (name, path, images), ``method`` (a phrase), ``recipe`` (key: value lines),
            ``ete``, ``device_hours``, ``device`` and ``init`` (the starting weights, or None).
        evaluations: the run's ``evals.jsonl`` records with a top-1 (kNN, linear probe, fine-tuning).
        commands: the commands that made the run and the export, in order.
        license: the weights' licence identifier (the hub's ``license:`` field).
    """
    tags = ["image-feature-extraction", "timm", "dmjd", "masked-image-modeling"]
    loading = exported.snippet if exported.arch == "vit" else exported.snippet.replace(str(exported.file), WEIGHTS)
    results = [f"| {r.get('kind')} | {r.get('protocol', '')} | {_top1(r):.2f} | {r.get('pool', '')} | {r.get('data', '')} |"
               for r in evaluations if _top1(r) is not None]  # fmt: skip
    lines = [
        "---", f"license: {license}", "library_name: timm" if exported.arch == "vit" else "library_name: dmjd",
        "tags:", *[f"- {tag}" for tag in tags], "---", "",
        f"# {_title(exported)}: an encoder pre-trained with dmjd", "",
        f"- **Method:** {run.get('method', 'unknown')}",
        f"- **Starting weights:** {run.get('init') or 'none (pre-trained from scratch)'}",
        f"- **Data:** {run.get('data', 'unknown')}",
        f"- **Effective training epochs (ETE):** {run.get('ete', 'unknown')}",
        f"- **Device-hours:** {run.get('device_hours', 'unknown')} on {run.get('device', 'unknown')}",
        f"- **Features:** `model(x)` gives {POOL_WORDS[exported.pool]}.", "",
        "## Load", "", "```python", "import timm" if exported.arch == "vit" else "", f"model = {loading}"
        if exported.arch == "vit" else loading, "```", "",
        *(["Once the folder is uploaded (`huggingface_hub.upload_folder`), `hf-hub:USER/NAME` loads it the same way.", ""]
          if exported.arch == "vit" else []),
        "## Recipe", "", *[f"- `{line}`" for line in run.get("recipe", [])], "",
        "## Evaluation results", "",
        *(["| evaluation | protocol | top-1 % | pool | data |", "|---|---|---|---|---|", *results] if results
          else ["None recorded for this checkpoint."]), "",
        "## Commands", "", "```", *commands, "```", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _title(exported: ExportedEncoder) -> str:
    """The card's name for the encoder: the timm model, or the ViT's own sizes when ``config.json``
    gives that model other sizes (a 64-wide ViT is no ``vit_base_patch16_224``)."""
    k = exported.kwargs
    if exported.arch != "vit" or "embed_dim" not in k:
        return exported.model_name
    return (f"ViT {k['embed_dim']} wide, {k['depth']} blocks, patch {k['patch_size']}, {k.get('img_size', 224)} px "
            f"(timm `{exported.model_name}` with these sizes)")  # fmt: skip


def _top1(record: dict[str, Any]) -> float | None:
    """An evaluation record's top-1 in per cent (records hold fractions), None without one."""
    value = next((record[key] for key in ("knn_top1", "linprobe_top1", "finetune_top1") if key in record), None)
    return None if value is None else 100 * float(value)
