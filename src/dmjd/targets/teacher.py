"""Targets from frozen pre-trained networks ("parametric tokenizers"): CLIP and any timm model.

A frozen teacher maps each image once (for all K masked views) to the features of one of its
layers; the features are resized to the student's token grid and normalised per token by a
LayerNorm without affine parameters (paper Sec. III-C and Table IV: "CLIP + LayerNorm").

:class:`FrozenNetworkTarget` holds what every such target shares (also the BEiT tokenizer of
:mod:`dmjd.targets.tokenizer`): the network is frozen and stays in eval mode, runs in bf16 on
CUDA (float32 elsewhere), and its cost is accumulated (seconds, images, FLOPs) so a trainer can
log it apart from the student's, as the paper counts tokenizer cost in its efficiency tables.
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dmjd.targets.base import Target, register_target

__all__ = [
    "CostMeter",
    "FrozenNetworkTarget",
    "IntermediateFeatures",
    "TeacherSource",
    "TeacherTarget",
    "TeacherWeightsError",
    "load_open_clip_teacher",
    "load_timm_teacher",
]

TeacherSource = Literal["open_clip", "timm"]
_FEATURE_NORM_EPS = 1e-6


class TeacherWeightsError(FileNotFoundError):
    """The weights of a teacher or tokenizer are not on disk and cannot be fetched."""


class CostMeter:
    """Accumulated cost of a frozen target network: wall seconds, images and FLOPs.

    FLOPs per image are counted once per input shape with ``torch.utils.flop_counter`` (on the
    first real batch, no extra forward pass). On CUDA the time is measured with events that are
    only read back when complete or when :meth:`totals` is called, so metering adds no host
    synchronisation to a training step.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self.flops = 0.0
        self._flops_per_image: dict[tuple[int, ...], float] = {}
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def run(self, network: nn.Module, inputs: Tensor) -> Any:
        """``network(inputs)`` with its cost added; ``inputs`` is a batch ``[B, ...]``."""
        shape, batch = tuple(inputs.shape[1:]), inputs.shape[0]
        start: torch.cuda.Event | float = time.perf_counter()
        if inputs.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        if shape in self._flops_per_image:
            out = network(inputs)
        else:
            with FlopCounterMode(display=False) as counter:
                out = network(inputs)
            self._flops_per_image[shape] = counter.get_total_flops() / batch
        if isinstance(start, float):
            self.seconds += time.perf_counter() - start
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((start, end))
            self._collect(wait=False)
        self.images += batch
        self.flops += self._flops_per_image[shape] * batch
        return out

    def _collect(self, wait: bool) -> None:
        """Add the elapsed time of finished CUDA event pairs (all of them if ``wait``)."""
        while self._pending:
            start, end = self._pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                return
            self.seconds += start.elapsed_time(end) / 1000.0
            self._pending.pop(0)

    def totals(self) -> dict[str, float]:
        """``{"tokenizer_s", "tokenizer_images", "tokenizer_tflops"}`` accumulated so far."""
        self._collect(wait=True)
        return {
            "tokenizer_s": self.seconds,
            "tokenizer_images": float(self.images),
            "tokenizer_tflops": self.flops / 1e12,
        }


class FrozenNetworkTarget(Target):
    """Base of targets computed by a frozen network from resized, normalised images.

    The network gets no gradients and is never switched to training mode: :meth:`train` only
    sets this wrapper's flag, so the network keeps the eval mode its loader put it in (exported
    programs cannot switch modes at all). On CUDA it runs under bf16 autocast.

    Args:
        patch_size: student patch side ``p`` in pixels.
        in_chans: channels ``C`` of the student's images.
        dim: target width ``T``.
        network: the frozen network, already in eval mode.
        input_size: ``(H, W)`` the images are resized to before the network.
        network_chans: channels the network expects; grey images are repeated to 3 channels.
        mean, std: per-channel normalisation of ``[0, 1]`` images for the network, or None.

    Raises:
        ValueError: if the channel counts cannot be matched.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        dim: int,
        network: nn.Module,
        input_size: tuple[int, int],
        network_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(patch_size, in_chans, dim)
        if in_chans != network_chans and not (in_chans == 1 and network_chans == 3):
            raise ValueError(f"the network takes {network_chans}-channel images, the data has {in_chans}")
        for param in network.parameters():  # not requires_grad_(): TorchScript modules lack it
            param.requires_grad_(False)
        self.network = network
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.network_chans = network_chans
        self.mean: Tensor | None
        self.std: Tensor | None
        for name, values in (("mean", mean), ("std", std)):
            buffer = None if values is None else torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, buffer, persistent=False)
        self.meter = CostMeter()

    def train(self, mode: bool = True) -> Self:
        """Set this wrapper's training flag only; the frozen network stays in eval mode."""
        self.training = mode
        return self

    def prepare(self, images: Tensor) -> Tensor:
        """``float32[B, C, H, W]`` in [0, 1] -> the network's input ``[B, C', h, w]``.

        Bilinear, antialiased resizing to ``input_size``, grey -> RGB repetition, then
        ``(x - mean) / std``.
        """
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", antialias=True)
        if images.shape[1] != self.network_chans:
            images = images.expand(-1, self.network_chans, -1, -1)
        if self.mean is not None and self.std is not None:
            images = (images - self.mean) / self.std
        return images

    def run_network(self, inputs: Tensor) -> Any:
        """The metered network on prepared inputs, in bf16 on CUDA, float32 elsewhere."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=inputs.is_cuda):
            return self.meter.run(self.network, inputs)

    def cost_metrics(self) -> dict[str, float]:
        """Accumulated cost of the network since construction (or ``reset_cost``), ready to log (see CostMeter)."""
        return self.meter.totals()

    def reset_cost(self) -> None:
        """Forget the cost so far (e.g. of a memory probe before training)."""
        self.meter = CostMeter()


class IntermediateFeatures(nn.Module):
    """One intermediate feature map of a timm model or an open_clip image tower.

    Both implement ``forward_intermediates``; timm returns a list of maps, open_clip a dict
    holding them under ``"image_intermediates"``.
    """

    def __init__(self, model: nn.Module, index: int) -> None:
        """Wrap ``model``; ``index`` is an absolute block / stage index."""
        super().__init__()
        # Any: forward_intermediates is not declared by nn.Module (timm and open_clip add it).
        self.model: Any = model
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` normalised images -> ``[B, D, h, w]`` features of block ``index``."""
        out = self.model.forward_intermediates(
            x, indices=[self.index], stop_early=True, intermediates_only=True, output_fmt="NCHW"
        )
        return (out["image_intermediates"] if isinstance(out, dict) else out)[0]


def _select_layer(model: Any, layer: int, name: str) -> IntermediateFeatures:
    """Prune ``model`` after block ``layer`` (negative: from the end) and wrap it, in eval mode.

    Raises:
        ValueError: if the model cannot return intermediate features or ``layer`` is out of range.
    """
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"teacher {name!r} cannot return intermediate features (no forward_intermediates)")
    try:
        kept = model.prune_intermediate_layers([layer], prune_norm=True, prune_head=True)
    except (IndexError, AssertionError):
        raise ValueError(f"target.teacher_layer={layer} is out of range for teacher {name!r}") from None
    return IntermediateFeatures(model, kept[0]).eval()


def _missing_file(kind: str, path: Path, what: str) -> TeacherWeightsError:
    return TeacherWeightsError(f"{kind} weights file {path} does not exist. {what}")


def load_timm_teacher(
    name: str, weights: str | None, layer: int, img_size: int | None
) -> tuple[IntermediateFeatures, tuple[int, int], tuple[float, ...], tuple[float, ...], int]:
    """A pre-trained timm model cut after block ``layer``, with its input spec.

    Args:
        name: timm model name, optionally with a pretrained tag (``vit_base_patch16_clip_224.openai``).
        weights: a local weights file (``.safetensors``, ``.pth``, ``.bin``) loaded through timm's
            own loader (``pretrained_cfg_overlay=dict(file=...)``, which also adapts position
            embeddings and drops the classifier); None downloads timm's default weights.
        layer: block / stage index whose output is the target (negative: from the end).
        img_size: input side; None uses the model's default. Fixed-size models (ViTs) are
            built for it.

    Returns:
        ``(network, (H, W) input size, mean, std, input channels)``.

    Raises:
        ValueError: unknown model name or bad layer.
        TeacherWeightsError: the weights file is missing, or the download failed; the message
            says what to download and how to point ``target.teacher_pretrained`` at it.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; list them with timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(name)
    default_size = (cfg.input_size[1], cfg.input_size[2]) if cfg is not None else (224, 224)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if img_size is not None and cfg is not None and cfg.fixed_input_size and img_size != default_size[0]:
        kwargs["img_size"] = img_size
    hub = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg and cfg.hf_hub_id else None
    source = hub or (cfg.url if cfg is not None else "") or "the model's released weights"
    fix = f"Download {source} and set target.teacher_pretrained=/path/to/that/file."
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing_file(f"timm teacher {name!r}", path, fix)
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        # Any: timm models carry pretrained_cfg and forward_intermediates, undeclared by nn.Module.
        model: Any = timm.create_model(name, pretrained=True, **kwargs)
    except OSError as err:
        raise TeacherWeightsError(f"cannot obtain the weights of timm teacher {name!r} ({err}). {fix}") from None
    data_cfg = model.pretrained_cfg
    size = (img_size, img_size) if img_size is not None else default_size
    chans = int(data_cfg.get("input_size", (3,))[0])
    return _select_layer(model, layer, name), size, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), chans


def _import_open_clip() -> Any:
    """Import open_clip lazily; it is an optional dependency."""
    try:
        import open_clip
    except ImportError:
        raise ImportError("CLIP teachers need open_clip: pip install 'dmjd[clip]' (or pip install open_clip_torch)") from None
    return open_clip


def _open_clip_file(tag_cfg: dict[str, Any]) -> str:
    """Where open_clip downloads a pretrained tag from (its Hugging Face file, else its URL)."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return tag_cfg.get("url", "the weights of this tag")
    repo, _, filename = hub.rpartition("/")
    return f"https://huggingface.co/{repo}/resolve/main/{filename or 'open_clip_pytorch_model.bin'}"


def load_open_clip_teacher(
    name: str, pretrained: str | None, layer: int, img_size: int | None
) -> tuple[IntermediateFeatures, tuple[int, int], tuple[float, ...], tuple[float, ...], int]:
    """The image tower of an open_clip model cut after block ``layer``, with its input spec.

    Args:
        name: open_clip model name (``ViT-B-16``; ``open_clip.list_models()``), or an
            ``hf-hub:`` / ``local-dir:`` source, which brings its own weights.
        pretrained: a pretrained tag (``openai``; ``open_clip.list_pretrained_tags_by_model``),
            downloaded on first use into open_clip's cache, or a local weights file.
            OpenAI tags switch on QuickGELU as their weights need; with a local OpenAI file use
            the ``-quickgelu`` model name.
        layer: transformer block whose output is the target (negative: from the end).
        img_size: input side; None uses the model's.

    Returns:
        ``(network, (H, W) input size, mean, std, 3)``.

    Raises:
        ImportError: open_clip is not installed.
        ValueError: no weights named, or a bad layer.
        TeacherWeightsError: the weights file is missing or the tag cannot be downloaded; the
            message says what to download and where to point ``target.teacher_pretrained``.
    """
    open_clip = _import_open_clip()
    kwargs: dict[str, Any] = {} if img_size is None else {"force_image_size": img_size}
    has_source = name.startswith(("hf-hub:", "local-dir:"))
    if pretrained is None and not has_source:
        raise ValueError(
            f"target.teacher_pretrained is required for open_clip model {name!r}: a tag "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none known'}) or a local file"
        )
    checkpoint = pretrained
    tag_cfg = {} if pretrained is None else open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        fix = f"Download {_open_clip_file(tag_cfg)} and set target.teacher_pretrained=/path/to/that/file"
        if tag_cfg.get("quick_gelu", False):
            fix += f" and target.teacher_model={name}-quickgelu"
        try:
            checkpoint = open_clip.download_pretrained(tag_cfg)
        except (OSError, RuntimeError) as err:
            raise TeacherWeightsError(f"cannot download open_clip weights {name}/{pretrained} ({err}). {fix}") from None
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    elif pretrained is not None and not Path(pretrained).expanduser().is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise _missing_file(
            f"open_clip teacher {name!r}", Path(pretrained).expanduser(),
            f"target.teacher_pretrained must be a tag of this model ({tags}) or an existing file.",
        )  # fmt: skip
    checkpoint = None if checkpoint is None else str(Path(checkpoint).expanduser())
    model = open_clip.create_model(name, pretrained=checkpoint, **kwargs)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    visual = model.visual
    return _select_layer(visual, layer, name), tuple(visual.image_size), preprocess["mean"], preprocess["std"], 3


@register_target("teacher")
class TeacherTarget(FrozenNetworkTarget):
    """Features of a frozen teacher's layer on the student's token grid, LayerNorm-normalised.

    The image is resized to the teacher's input size, normalised with the teacher's
    statistics, encoded once (for all K views), the ``[B, D, h, w]`` feature map is resized
    (bilinear, antialiased) to the student's ``(H / p, W / p)`` grid and each token's ``D``
    values are normalised by a LayerNorm without affine (eps 1e-6).

    Args:
        patch_size: student patch side ``p``.
        in_chans: student image channels (grey images are repeated for RGB teachers).
        model: the teacher's name, see :func:`load_open_clip_teacher` / :func:`load_timm_teacher`.
        source: ``"open_clip"`` or ``"timm"``.
        pretrained: open_clip tag or file; timm weights file (None: timm's download).
        layer: block whose output is the target (negative: from the end; -1 = last block,
            before the final norm).
        img_size: teacher input side; None uses the teacher's own.

    Raises:
        ValueError, ImportError, TeacherWeightsError: from the loaders.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        model: str,
        source: TeacherSource = "open_clip",
        pretrained: str | None = None,
        layer: int = -1,
        img_size: int | None = None,
    ) -> None:
        loaders = {"open_clip": load_open_clip_teacher, "timm": load_timm_teacher}
        if source not in loaders:
            raise ValueError(f"teacher source must be one of {sorted(loaders)}, got {source!r}")
        network, size, mean, std, chans = loaders[source](model, pretrained, layer, img_size)
        with torch.no_grad():
            probe = network(torch.zeros(1, chans, *size))
        super().__init__(patch_size, in_chans, probe.shape[1], network, size, chans, mean, std)
        self.teacher_name = f"{source}:{model}"
        self.teacher_grid = tuple(probe.shape[-2:])
        self.layer = layer

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> ``float32[B, (H/p)*(W/p), D]``."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        features = self.run_network(self.prepare(images)).float()
        if tuple(features.shape[-2:]) != grid:
            features = F.interpolate(features, size=grid, mode="bilinear", antialias=True)
        tokens = features.flatten(2).transpose(1, 2)
        return F.layer_norm(tokens, tokens.shape[-1:], eps=_FEATURE_NORM_EPS)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, teacher={self.teacher_name!r}, layer={self.layer}, "
            f"input_size={self.input_size}, teacher_grid={self.teacher_grid}"
        )
