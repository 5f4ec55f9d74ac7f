"""Masked prediction branch (MPB): an MAE-style decoder that predicts the masked tokens' targets."""

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from dmjd.masking import MaskedViews
from dmjd.models.encoder import init_mae_weights
from dmjd.models.pos_embed import sincos_pos_embed_2d


class MaskedPredictionBranch(nn.Module):
    """Lightweight transformer decoder over visible latents plus mask tokens (MAE decoder).

    Only the masked positions are sent through the final prediction layer, since only they
    enter the masked prediction loss.
    """

    def __init__(
        self,
        embed_dim: int,
        target_dim: int,
        grid_size: tuple[int, int],
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_prefix_tokens: int = 1,
    ) -> None:
        """Build the branch.

        Args:
            embed_dim: encoder width ``D``.
            target_dim: target width ``T`` per token.
            grid_size: patch grid ``(H, W)`` of the encoder.
            decoder_dim: decoder width.
            depth: decoder blocks; 0 gives a linear decoder (embed, norm, predict).
            num_heads: attention heads per block.
            mlp_ratio: MLP hidden width / decoder width.
            num_prefix_tokens: leading non-patch tokens (cls) in the encoder latent; they go
                through the decoder blocks without position embedding, as in MAE.
        """
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_embed: Tensor
        self.register_buffer("pos_embed", sincos_pos_embed_2d(decoder_dim, grid_size).unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, target_dim)
        self.apply(init_mae_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) excluded from weight decay besides 1-d ones."""
        return {"mask_token"}

    def forward(self, latent: Tensor, views: MaskedViews) -> Tensor:
        """Predict the targets of every view's masked tokens.

        Args:
            latent: ``[N, P + n_vis, D]`` normed encoder output, ``N = B*K``.
            views: the views that produced ``latent``.

        Returns:
            ``[N, n_mask, T]`` predictions at ``views.ids_masked`` (ascending token ids).
        """
        prefix = self.num_prefix_tokens
        x = self.decoder_embed(latent)
        num_rows, _, dim = x.shape
        mask_tokens = self.mask_token.expand(num_rows, views.num_masked, -1)
        # Visible latents then mask tokens, i.e. cat(ids_keep, ids_masked) order -> grid order.
        shuffled = torch.cat([x[:, prefix:], mask_tokens.to(x.dtype)], dim=1)
        restore = views.ids_restore.reshape(num_rows, -1, 1).expand(-1, -1, dim)
        patches = torch.gather(shuffled, 1, restore) + self.pos_embed
        x = self.blocks(torch.cat([x[:, :prefix], patches.to(x.dtype)], dim=1))
        masked = views.ids_masked.reshape(num_rows, -1, 1).expand(-1, -1, dim)
        return self.pred(self.norm(torch.gather(x[:, prefix:], 1, masked)))
