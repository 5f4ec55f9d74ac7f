"""SimMIM-style masked image modelling (SimMIM, MaskFeat, BEiT) with disjoint masking and JD.

The encoder sees the FULL token sequence of every view, with a learned mask token in place of
each masked patch, and a linear prediction head maps the encoder output at the masked
positions to their targets. With disjoint masking an image's patch embedding is computed once
and its K views become K sequences. The encoder output at the visible positions feeds the
visible distillation branch, so joint distillation works in this style as in the MAE style.

The mask token belongs to the model, not to the encoder, so the encoder's state dict stays
exactly timm's ViT (``dmjd.models.encoder_state_dict`` exports it unchanged). The encoder keeps
dmjd's fixed sin-cos position embedding; the layer scale and relative position bias of the
original SimMIM / BEiT ViTs are not reproduced.
"""

from typing import Any

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from dmjd.masking import MaskedViews
from dmjd.models.dmjd import DMJDModel, DMJDOutput
from dmjd.models.heads import ProjectorKind, VisibleDistillationBranch
from dmjd.models.registry import build_encoder

__all__ = ["LinearPredictionHead", "SimMIMModel", "build_simmim_model", "encode_full_sequence", "take_view_tokens"]


def take_view_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """Per-view token selection from per-view sequences.

    Args:
        tokens: ``[B*K, L, D]`` one sequence per view, row ``b*K + k``.
        ids: ``long[B, K, n]`` token ids of every view.

    Returns:
        ``[B*K, n, D]``.
    """
    index = ids.reshape(tokens.shape[0], -1, 1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, index)


def encode_full_sequence(encoder: VisionTransformer, x: Tensor, views: MaskedViews, mask_token: Tensor) -> Tensor:
    """Encode K full sequences per image, masked patches replaced by ``mask_token``.

    The patch embedding runs once per image; each view swaps its masked patches for the mask
    token before the position embedding is added (as SimMIM), then the cls token is prepended
    and the blocks and final norm run on all ``1 + L`` tokens.

    Args:
        encoder: a timm ViT (``MaskedViT``) with a cls token.
        x: ``[B, C, H, W]`` mean/std-normalised images.
        views: K views per image on the encoder's grid.
        mask_token: ``[1, 1, D]`` learned embedding of a masked patch.

    Returns:
        ``[B*K, P + L, D]`` normed encoder output, row ``b*K + k`` = view ``k`` of image ``b``.

    Raises:
        ValueError: if the views' token count differs from the patch grid.
    """
    num_patches = encoder.patch_embed.num_patches
    if views.mask.shape[-1] != num_patches:
        raise ValueError(f"views have {views.mask.shape[-1]} tokens, the encoder grid has {num_patches}")
    prefix = encoder.num_prefix_tokens
    patches = encoder.patch_embed(x)
    per_view = torch.where(views.mask.unsqueeze(-1), mask_token.to(patches.dtype), patches.unsqueeze(1))
    assert encoder.pos_embed is not None and encoder.cls_token is not None, "needs a ViT with a cls token"
    per_view = per_view.flatten(0, 1) + encoder.pos_embed[:, prefix:]
    cls = (encoder.cls_token + encoder.pos_embed[:, :prefix]).expand(per_view.shape[0], -1, -1)
    tokens = torch.cat([cls.to(per_view.dtype), per_view], dim=1)
    if encoder.grad_checkpointing and not torch.jit.is_scripting():
        tokens = checkpoint_seq(encoder.blocks, tokens)
    else:
        tokens = encoder.blocks(tokens)
    return encoder.norm(tokens)


class LinearPredictionHead(nn.Module):
    """The masked prediction branch of SimMIM / MaskFeat / BEiT: one Linear layer per token.

    SimMIM's 1x1 convolution + pixel shuffle is this Linear on each token. Initialised with a
    truncated normal (std 0.02) and zero bias, as those methods do.
    """

    def __init__(self, embed_dim: int, target_dim: int) -> None:
        """Map encoder width ``embed_dim`` to target width ``target_dim``."""
        super().__init__()
        self.pred = nn.Linear(embed_dim, target_dim)
        nn.init.trunc_normal_(self.pred.weight, std=0.02)
        nn.init.zeros_(self.pred.bias)

    def no_weight_decay(self) -> set[str]:
        """No multi-dimensional parameter is exempt from weight decay."""
        return set()

    def forward(self, tokens: Tensor) -> Tensor:
        """``[N, n, D]`` encoder outputs -> ``[N, n, T]`` predictions."""
        return self.pred(tokens)


class SimMIMModel(DMJDModel):
    """Full-sequence encoder + linear prediction head + optional visible distillation branch.

    A ``DMJDModel`` (same attributes ``encoder``, ``mpb``, ``vdb``, same output and weight-decay
    contract) whose forward encodes K full sequences per image.
    """

    encoder: VisionTransformer

    def __init__(
        self,
        encoder: VisionTransformer,
        mpb: LinearPredictionHead,
        vdb: VisibleDistillationBranch | None = None,
    ) -> None:
        """Compose the parts; the mask token ``[1, 1, D]`` is drawn from N(0, 0.02)."""
        super().__init__(encoder, mpb, vdb)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor, views: MaskedViews) -> DMJDOutput:
        """Encode every view's full sequence and run the head and the VDB.

        Args:
            x: ``[B, C, H, W]`` mean/std-normalised images.
            views: K masked views per image.

        Returns:
            ``pred_masked [N, n_mask, T]`` at ``views.ids_masked``, ``pred_visible
            [N, n_vis, T]`` at ``views.ids_keep`` (None without VDB) and ``latent
            [N, P + n_vis, D]``: prefix tokens then the visible tokens' encoder outputs.
        """
        prefix = self.encoder.num_prefix_tokens
        tokens = encode_full_sequence(self.encoder, x, views, self.mask_token)
        patches = tokens[:, prefix:]
        visible = take_view_tokens(patches, views.ids_keep)
        return DMJDOutput(
            pred_masked=self.mpb(take_view_tokens(patches, views.ids_masked)),
            pred_visible=None if self.vdb is None else self.vdb(visible),
            latent=torch.cat([tokens[:, :prefix], visible], dim=1),
        )

    def no_weight_decay(self) -> set[str]:
        """``DMJDModel``'s set plus the mask token."""
        return super().no_weight_decay() | {"mask_token"}


def build_simmim_model(
    *,
    target_dim: int,
    vdb: bool = False,
    vdb_hidden: int = 512,
    projector: ProjectorKind = "nonlinear",
    **encoder_kwargs: Any,
) -> SimMIMModel:
    """Build a SimMIM-style model from the ``model`` config keys it uses.

    Args:
        target_dim: target width ``T`` (codebook size for BEiT).
        vdb: add the visible distillation branch (joint distillation).
        vdb_hidden, projector: visible distillation branch.
        **encoder_kwargs: ``arch``, ``size``, ``img_size``, ``patch_size``, ``in_chans``, ``embed_dim``,
            ``depth``, ``num_heads`` (None keeps the preset) and ``grad_checkpointing``, see
            ``dmjd.models.registry.build_encoder``; the encoder must be a timm ViT (``arch="vit"``).

    Raises:
        ValueError: for a non-ViT encoder.
    """
    encoder = build_encoder(**encoder_kwargs)
    if not isinstance(encoder, VisionTransformer):
        raise ValueError(f"the SimMIM style needs a ViT encoder, got arch {encoder_kwargs.get('arch', 'vit')!r}")
    branch = VisibleDistillationBranch(encoder.embed_dim, target_dim, vdb_hidden, projector) if vdb else None
    return SimMIMModel(encoder, LinearPredictionHead(encoder.embed_dim, target_dim), branch)
