"""Per-patch learning targets: raw pixels (norm-pix) and HOG (MaskFeat and DMJD variants).

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

__all__ = [
    "HOGTarget",
    "PixelTarget",
    "Target",
    "available_targets",
    "create_target",
    "patchify",
    "register_target",
    "unpatchify",
]
