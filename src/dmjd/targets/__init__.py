"""Per-patch learning targets: raw pixels (norm-pix), HOG (MaskFeat and DMJD variants), a frozen
tokenizer's visual tokens (BEiT) and a frozen teacher's features (CLIP, timm).

Build one by name with :func:`create_target`; every target maps images ``[B, C, H, W]`` in
[0, 1] to ``[B, L, T]`` on the patch grid.
"""

from dmjd.targets.base import (
    Target,
    available_targets,
    create_target,
    patchify,
    register_target,
    unpatchify,
)
from dmjd.targets.hog import HOGTarget
from dmjd.targets.pixels import PixelTarget
from dmjd.targets.teacher import FrozenNetworkTarget, TeacherTarget, TeacherWeightsError
from dmjd.targets.tokenizer import DALLEEncoder, TokenizerTarget

__all__ = [
    "DALLEEncoder",
    "FrozenNetworkTarget",
    "HOGTarget",
    "PixelTarget",
    "Target",
    "TeacherTarget",
    "TeacherWeightsError",
    "TokenizerTarget",
    "available_targets",
    "create_target",
    "patchify",
    "register_target",
    "unpatchify",
]
