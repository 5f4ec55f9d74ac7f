"""Discrete visual tokens as targets (BEiT): a frozen tokenizer's codebook id for every patch.

The tokenizer is loaded from a file the user brings, in one of two forms
(``target.tokenizer_arch``):

``"dalle"``
    A state dict of the DALL-E dVAE encoder (Ramesh et al. 2021), the tokenizer of BEiT, for
    :class:`DALLEEncoder` below. OpenAI's release names parameters ``.w`` / ``.b``; both those
    and ``.weight`` / ``.bias`` load. Width, depth, input channels and codebook size are read
    from the weights. Images are mapped to ``[0.1, 0.9]`` (DALL-E's ``map_pixels``).
``"program"``
    A self-contained network: a ``torch.export`` archive (``.pt2``, exported in eval mode) or a
    TorchScript file (any other suffix). It receives images in ``[0, 1]`` (it normalises them
    itself) and returns either logits ``float[B, V, h, w]`` or ids ``int[B, h, w]``. Use it for
    VQ tokenizers (VQGAN, BEiT v2's VQ-KD, ...): export the encoder + nearest-code lookup.

Its token grid ``(h, w)`` must equal the student's patch grid; choose the tokenizer's input
side accordingly (DALL-E has stride 8: 112 px for a 14 x 14 grid, as BEiT does).
"""

from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from dmjd.targets.base import register_target
from dmjd.targets.teacher import FrozenNetworkTarget, TeacherWeightsError

__all__ = [
    "DALLE_ENCODER_URL",
    "DALLEEncoder",
    "TokenizerArch",
    "TokenizerTarget",
    "convert_dalle_state_dict",
    "load_tokenizer",
]

TokenizerArch = Literal["dalle", "program"]
DALLE_ENCODER_URL = "https://cdn.openai.com/dall-e/encoder.pkl"
# DALL-E's map_pixels x -> 0.8 x + 0.1 written as (x - mean) / std.
_DALLE_MEAN, _DALLE_STD = -0.125, 1.25
_DALLE_GROUPS = 4


class _DALLEBlock(nn.Module):
    """Residual block ``id_path(x) + post_gain * res_path(x)``; the residual path is a
    bottleneck (ReLU-conv 3x3 to ``n_out / 4``, two ReLU-conv 3x3, ReLU-conv 1x1 to ``n_out``)."""

    def __init__(self, n_in: int, n_out: int, post_gain: float) -> None:
        super().__init__()
        hidden = n_out // 4
        self.post_gain = post_gain
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        layers: list[tuple[str, nn.Module]] = []
        convs = [(n_in, hidden, 3), (hidden, hidden, 3), (hidden, hidden, 3), (hidden, n_out, 1)]
        for i, (a, b, k) in enumerate(convs):
            layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", nn.Conv2d(a, b, k, padding=k // 2))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DALLEEncoder(nn.Module):
    """The DALL-E dVAE encoder: images -> logits over ``vocab_size`` tokens at stride 8.

    ``blocks.input`` (7x7 conv to ``n_hid``), four groups ``blocks.group_1..4`` of
    ``n_blk_per_group`` residual blocks of widths ``n_hid * (1, 2, 4, 8)``, the first three
    followed by a 2x2 max-pool, then ``blocks.output`` (ReLU, 1x1 conv to ``vocab_size``). The
    residual gain is ``1 / (4 * n_blk_per_group)^2``. The released model: ``n_hid=256``,
    ``n_blk_per_group=2``, ``vocab_size=8192``.

    Args:
        n_hid: width of the first group.
        n_blk_per_group: residual blocks per group.
        in_chans: image channels.
        vocab_size: codebook size ``V``.
    """

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, in_chans: int = 3, vocab_size: int = 8192) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.vocab_size = vocab_size
        gain = 1.0 / (_DALLE_GROUPS * n_blk_per_group) ** 2
        stages: list[tuple[str, nn.Module]] = [("input", nn.Conv2d(in_chans, n_hid, 7, padding=3))]
        width = n_hid
        for g in range(_DALLE_GROUPS):
            out = n_hid * 2**g
            group: list[tuple[str, nn.Module]] = [
                (f"block_{i + 1}", _DALLEBlock(width if i == 0 else out, out, gain)) for i in range(n_blk_per_group)
            ]
            if g < _DALLE_GROUPS - 1:
                group.append(("pool", nn.MaxPool2d(2)))
            stages.append((f"group_{g + 1}", nn.Sequential(OrderedDict(group))))
            width = out
        head = OrderedDict([("relu", nn.ReLU()), ("conv", nn.Conv2d(width, vocab_size, 1))])
        stages.append(("output", nn.Sequential(head)))
        self.blocks = nn.Sequential(OrderedDict(stages))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` images mapped to [0.1, 0.9] -> logits ``[B, V, H/8, W/8]``."""
        return self.blocks(x)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "DALLEEncoder":
        """Build the encoder the weights describe and load them (strict).

        Raises:
            ValueError: if the weights are not a DALL-E encoder's.
        """
        state = convert_dalle_state_dict(state)
        try:
            n_hid, in_chans = state["blocks.input.weight"].shape[:2]
            vocab_size = state["blocks.output.conv.weight"].shape[0]
        except KeyError:
            raise ValueError("not a DALL-E encoder state dict (no blocks.input / blocks.output.conv)") from None
        n_blk = len({key.split(".")[2] for key in state if key.startswith("blocks.group_1.block_")})
        encoder = cls(n_hid, n_blk, in_chans, vocab_size)
        try:
            encoder.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"DALL-E encoder weights do not match its architecture: {err}") from None
        return encoder


def convert_dalle_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI's parameter names (``conv_1.w``, ``conv_1.b``) -> ``conv_1.weight`` / ``conv_1.bias``."""
    renames = {".w": ".weight", ".b": ".bias"}
    converted = {}
    for key, value in state.items():
        suffix = key[key.rfind(".") :]
        converted[key.removesuffix(suffix) + renames[suffix] if suffix in renames else key] = value
    return converted


def _missing_tokenizer(path: Path, arch: TokenizerArch) -> TeacherWeightsError:
    if arch == "dalle":
        how = (
            f"Download BEiT's DALL-E tokenizer {DALLE_ENCODER_URL}, convert it to a state dict "
            "(pip install DALL-E; python -c \"import torch; torch.save(torch.load('encoder.pkl', "
            f"weights_only=False).state_dict(), '{path}')\") and keep target.tokenizer_path={path}."
        )
    else:
        how = (
            "Export your tokenizer (images in [0, 1] -> logits [B, V, h, w] or ids [B, h, w]) with "
            f"torch.export.save(..., '{path}') (.pt2) or as TorchScript, and keep target.tokenizer_path={path}."
        )
    return TeacherWeightsError(f"tokenizer file {path} does not exist. {how}")


def load_tokenizer(path: str | Path, arch: TokenizerArch = "dalle") -> nn.Module:
    """Load a tokenizer file in eval mode (exported programs are frozen in the mode they were exported in).

    Raises:
        TeacherWeightsError: if the file does not exist (the message says how to make it).
        ValueError: unknown ``arch`` or weights that do not fit it.
    """
    path = Path(path).expanduser()
    if arch not in ("dalle", "program"):
        raise ValueError(f"tokenizer arch must be 'dalle' or 'program', got {arch!r}")
    if not path.is_file():
        raise _missing_tokenizer(path, arch)
    if arch == "dalle":
        return DALLEEncoder.from_state_dict(torch.load(path, map_location="cpu", weights_only=True)).eval()
    if path.suffix == ".pt2":
        return torch.export.load(path).module()
    return torch.jit.load(path, map_location="cpu").eval()


@register_target("tokens")
class TokenizerTarget(FrozenNetworkTarget):
    """BEiT's target: the codebook id of every patch, from a frozen tokenizer.

    Unlike the continuous targets, :meth:`forward` returns ``long[B, L]`` ids and ``dim`` is
    the codebook size ``V`` (the width of the logits the model predicts). A logit output is
    reduced by argmax.

    Args:
        patch_size: student patch side ``p``.
        in_chans: student image channels (grey images are repeated for RGB tokenizers).
        path: tokenizer file.
        arch: ``"dalle"`` or ``"program"``, see the module docstring.
        img_size: side the images are resized to for the tokenizer (112 for BEiT with DALL-E).
        vocab_size: codebook size; read from the weights or logits when None, checked otherwise.
            Required for programs that return ids.

    Raises:
        TeacherWeightsError: missing file.
        ValueError: a tokenizer whose output is not ``[B, V, h, w]`` logits or ``[B, h, w]`` ids,
            or contradicts ``vocab_size``.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        path: str | Path,
        arch: TokenizerArch = "dalle",
        img_size: int = 224,
        vocab_size: int | None = None,
    ) -> None:
        network = load_tokenizer(path, arch)
        chans = network.in_chans if isinstance(network, DALLEEncoder) else in_chans
        size = (img_size, img_size)
        dalle = arch == "dalle"
        with torch.no_grad():
            probe = network(torch.full((1, chans, *size), 0.5))
        if probe.is_floating_point() and probe.ndim == 4:
            found = probe.shape[1]
        elif not probe.is_floating_point() and probe.ndim == 3:
            if vocab_size is None:
                raise ValueError(f"tokenizer {path} returns token ids; set target.vocab_size to its codebook size")
            found = vocab_size
        else:
            raise ValueError(
                f"tokenizer {path} returned {probe.dtype} {tuple(probe.shape)}; expected logits "
                "[B, V, h, w] or integer ids [B, h, w]"
            )
        if vocab_size is not None and found != vocab_size:
            raise ValueError(f"tokenizer {path} has a codebook of {found} tokens, target.vocab_size={vocab_size}")
        super().__init__(
            patch_size, in_chans, found, network, size, chans,
            mean=(_DALLE_MEAN,) * chans if dalle else None, std=(_DALLE_STD,) * chans if dalle else None,
        )  # fmt: skip
        self.arch = arch
        self.token_grid = tuple(probe.shape[-2:])

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> ``long[B, (H/p)*(W/p)]`` codebook ids.

        Raises:
            ValueError: if the tokenizer's grid differs from the student's patch grid.
        """
        out = self.run_network(self.prepare(images))
        ids = out.argmax(dim=1) if out.is_floating_point() else out.long()
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if tuple(ids.shape[-2:]) != grid:
            stride = self.input_size[0] // ids.shape[-2]
            raise ValueError(
                f"the tokenizer's {tuple(ids.shape[-2:])} token grid differs from the student's {grid} "
                f"patch grid; set target.tokenizer_img_size={grid[0] * stride}"
            )
        return ids.flatten(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, arch={self.arch!r}, input_size={self.input_size}, token_grid={self.token_grid}"
