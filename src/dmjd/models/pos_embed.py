"""Fixed 2D sin-cos position embeddings for the encoder and the masked prediction branch."""

import torch
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
    """Fixed 2D sin-cos position embedding of an ``H x W`` patch grid (square or not).

    Built with timm's ``build_sincos2d_pos_embed``: with ``w_i = 10000 ** (-i / (D / 4))``,
    ``i < D / 4``, the token at row ``y`` and column ``x`` gets
    ``[sin(y w), sin(x w), cos(y w), cos(x w)]``. That is MAE's embedding with its channel
    blocks in another order (MAE: ``[sin(x w), cos(x w), sin(y w), cos(y w)]``); fixed
    embeddings only need to be consistent within one model.

    Args:
        embed_dim: width ``D``, divisible by 4 (sin and cos of two coordinates).
        grid_size: ``(H, W)`` patch grid.
        num_prefix_tokens: leading all-zero rows for cls/register tokens, which have no position.

    Returns:
        ``float32[num_prefix_tokens + H*W, D]``, patch rows in row-major grid order, the order of
        timm's patch embedding.

    Raises:
        ValueError: if ``embed_dim`` is not divisible by 4.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos 2D position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    patches = build_sincos2d_pos_embed(list(grid_size), dim=embed_dim, dtype=torch.float32)
    return torch.cat([patches.new_zeros(num_prefix_tokens, embed_dim), patches])
