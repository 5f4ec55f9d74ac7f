"""Masked ViT encoder: timm's VisionTransformer that encodes only the visible tokens of K views.

The state dict is exactly timm's ``VisionTransformer(num_classes=0, global_pool="token")``, so
pre-trained weights load into ``timm.create_model(...)`` for fine-tuning and linear probing.
"""

import re
from typing import Any, Protocol

import timm
import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from dmjd.masking import MaskedViews, gather_tokens
from dmjd.models.pos_embed import sincos_pos_embed_2d

# Standard ViT sizes (ViT paper / timm). Every size defaults to patch 16 here; pass
# patch_size=14 for the ViT-H/14 of MAE.
VIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "mlp_ratio": 4.0},
}


class TimmDescribed(Protocol):
    """An encoder that can describe its architecture to timm (``MaskedViT``)."""

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments rebuilding the architecture with timm."""
        ...

    def timm_model_name(self) -> str | None:
        """The registered timm name of the architecture, or None."""
        ...


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation of one module, for ``nn.Module.apply``.

    Linear layers get xavier-uniform weights and zero biases (timm's default is a truncated
    normal with std 0.02); LayerNorms are reset to ones / zeros.
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        module.reset_parameters()


class MaskedViT(VisionTransformer):
    """ViT encoder with cls token, fixed sin-cos position embedding and MAE initialisation.

    ``forward_masked`` runs the blocks on the visible tokens of every view only (MAE style);
    timm's ``forward_features`` still encodes all tokens of a full image for evaluation.
    """

    # timm declares both optional; this encoder always has a cls token and a position embedding.
    pos_embed: nn.Parameter
    cls_token: nn.Parameter

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        """Build the encoder; sizes as in timm's VisionTransformer.

        Raises:
            ValueError: if an image side is not divisible by ``patch_size``, or ``embed_dim``
                is not divisible by 4 (sin-cos embedding).
        """
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        if height % patch_size or width % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}")
        arch: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
        }
        super().__init__(**arch, num_classes=0, global_pool="token")
        self._arch = arch

    @torch.no_grad()
    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """MAE initialisation; overrides timm's hook, which its constructor calls.

        Sets the fixed sin-cos position embedding (frozen, but kept as timm's ``pos_embed``
        parameter so the state dict matches), cls token ~ N(0, 0.02) (timm: 1e-6), the patch
        projection initialised like a Linear layer and xavier-uniform Linear layers.
        ``mode`` and ``needs_reset`` are timm's signature; every mode gives the MAE init.
        """
        self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, self.grid_size, self.num_prefix_tokens))
        self.pos_embed.requires_grad_(False)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_mae_weights)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(H / p, W / p)``."""
        return tuple(self.patch_embed.grid_size)

    def forward_masked(self, x: Tensor, views: MaskedViews) -> Tensor:
        """Encode the visible tokens of K masked views per image.

        The patch embedding runs once per image; each view then gathers its visible tokens, so
        the pixels of masked patches never reach the output.

        Args:
            x: ``[B, C, H, W]`` mean/std-normalised images.
            views: K views per image on this encoder's grid (``L = H/p * W/p``).

        Returns:
            ``[B*K, 1 + n_vis, D]``: cls token then visible tokens (ascending ids), after the
            final norm. Row ``b*K + k`` is view ``k`` of image ``b``.

        Raises:
            ValueError: if the views' token count differs from the patch grid.
        """
        num_patches = self.patch_embed.num_patches
        if views.mask.shape[-1] != num_patches:
            raise ValueError(f"views have {views.mask.shape[-1]} tokens, encoder grid {self.grid_size} has {num_patches}")
        prefix = self.num_prefix_tokens
        patches = self.patch_embed(x) + self.pos_embed[:, prefix:]
        visible = gather_tokens(patches, views.ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :prefix]).expand(visible.shape[0], -1, -1)
        tokens = torch.cat([cls, visible], dim=1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(self.blocks, tokens)
        else:
            tokens = self.blocks(tokens)
        return self.norm(tokens)

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments rebuilding this architecture with timm.

        For ``VisionTransformer(**kw)`` or ``timm.create_model(name, **kw)``; the result loads
        this encoder's state dict with ``strict=True``.
        """
        return {**self._arch, "num_classes": 0, "global_pool": "token"}

    def timm_model_name(self) -> str | None:
        """The registered timm model of this width, depth, heads and patch (``vit_tiny_patch16_224``),
        or None; the image size and channels are arguments of that model."""
        size = vit_size_name(self._arch)
        return None if size is None else registered_vit(size, self._arch["patch_size"])


def vit_size_name(arch: dict[str, Any]) -> str | None:
    """The ``VIT_SIZES`` name whose width, depth, heads and MLP ratio ``arch`` has (Ti/S/B/L/H), or None."""
    return next((name for name, dims in VIT_SIZES.items() if all(arch[key] == value for key, value in dims.items())), None)


def registered_vit(size: str, patch_size: int) -> str | None:
    """timm's ViT of a ``VIT_SIZES`` size at this patch: ``vit_{size}_patch{p}_224`` when registered,
    else the first registered ``vit_{size}_patch{p}_<side>``, else None."""
    name = f"vit_{size}_patch{patch_size}_224"
    if timm.is_model(name):
        return name
    pattern = re.compile(rf"vit_{size}_patch{patch_size}_\d+")
    return next((n for n in sorted(timm.list_models(f"vit_{size}_patch{patch_size}_*")) if pattern.fullmatch(n)), None)
