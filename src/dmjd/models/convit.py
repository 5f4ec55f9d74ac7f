"""ConViT: ConvMAE's hybrid convolution-transformer encoder with masked convolutions, for K views.

Three stages: convolution blocks at stride ``s1`` (1/4 for 224 px), convolution blocks at stride
``s1*s2`` (1/8) and transformer blocks on the token grid at stride ``patch_size = s1*s2*s3``
(1/16). Masks live on the stage-3 token grid. In every convolution block the features of masked
positions are zeroed before the depthwise convolution (the mask is repeat-upsampled to the stage's
resolution), the stage embeddings are non-overlapping strided convolutions aligned with the token
cells, and stage 3 sees the visible tokens only; so nothing of a masked region reaches a visible
token. The stage-1 and stage-2 features, brought to the token grid by strided convolutions and
gathered at the visible ids, are added to the stage-3 output before the final norm (multi-scale
fusion).

Parameter names are those of the official ConvMAE / DMJD encoders (``patch_embed1..4``,
``blocks1..3``, ``stage1_output_decode``, ``stage2_output_decode``, ``pos_embed``, ``norm``), so
their released checkpoints load directly (``dmjd.models.convert``) and exported weights load into
their detection / segmentation code.
"""

from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, LayerNorm2d, Mlp, to_2tuple
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dmjd.masking import MaskedViews, gather_tokens
from dmjd.models.encoder import init_mae_weights
from dmjd.models.pos_embed import sincos_pos_embed_2d
from dmjd.models.registry import register_encoder

# Stage widths, depths and MLP ratios. base / large: the official DMJD ConViT-B / ConViT-L
# (ConvMAE-B's stages with MLP ratios 8, 8, 4; ConvMAE-B itself uses 4, 4, 4, set by
# model.mlp_ratios in the convmae-convit-b preset); small: Fast ConvMAE's ConViT-S (Alpha-VL);
# tiny: ViT-Ti width in stage 3 and light convolution stages, for CPU runs and small images.
CONVIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dims": (32, 64, 192), "depths": (2, 2, 11), "num_heads": 3, "mlp_ratios": (4.0, 4.0, 4.0)},
    "small": {"embed_dims": (128, 256, 384), "depths": (2, 2, 11), "num_heads": 6, "mlp_ratios": (4.0, 4.0, 4.0)},
    "base": {"embed_dims": (256, 384, 768), "depths": (2, 2, 11), "num_heads": 12, "mlp_ratios": (8.0, 8.0, 4.0)},
    "large": {"embed_dims": (384, 768, 1024), "depths": (2, 2, 23), "num_heads": 16, "mlp_ratios": (8.0, 8.0, 4.0)},
}


def stage_strides(patch_size: int) -> tuple[int, int, int]:
    """Strides ``(s1, s2, s3)`` of the three stage embeddings, with ``s1 * s2 * s3 = patch_size``.

    Stages 3 and 2 each halve the resolution while ``patch_size`` has a factor 2 left, stage 1
    takes the rest: 16 -> (4, 2, 2) as ConvMAE, 8 -> (2, 2, 2), 4 -> (1, 2, 2) for 32 px images,
    2 -> (1, 1, 2), 12 -> (3, 2, 2).

    Raises:
        ValueError: if ``patch_size < 1``.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    s3 = 2 if patch_size % 2 == 0 else 1
    s2 = 2 if (patch_size // s3) % 2 == 0 else 1
    return patch_size // (s2 * s3), s2, s3


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """Repeat each cell of a ``[N, 1, h, w]`` mask into a ``factor x factor`` block."""
    if factor == 1:
        return mask
    return mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


class ConvStageEmbed(nn.Module):
    """Non-overlapping strided convolution, then channel LayerNorm and GELU (ConvMAE's PatchEmbed)."""

    def __init__(self, in_chans: int, embed_dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=stride, stride=stride)
        self.norm = LayerNorm2d(embed_dim, eps=1e-5)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, D, H / s, W / s]``."""
        return self.act(self.norm(self.proj(x)))


class MaskedConvBlock(nn.Module):
    """ConvMAE's convolution block: LN, 1x1 conv, masked 5x5 depthwise conv, 1x1 conv, conv MLP.

    The depthwise convolution is the only operation that mixes positions, so zeroing the masked
    positions right before it keeps masked content out of every visible position. It is named
    ``attn`` (the block's token mixer), as in ConvMAE, so that state dicts match.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-5)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, masked: Tensor | None = None) -> Tensor:
        """``[N, C, H, W]`` -> same shape; ``masked``: ``bool[N, 1, H, W]`` (True = masked) or None."""
        mixed = self.conv1(self.norm1(x))
        if masked is not None:
            mixed = mixed.masked_fill(masked, 0.0)
        x = x + self.drop_path(self.conv2(self.attn(mixed)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(nn.Module):
    """ConvMAE's encoder: two masked convolution stages, then transformer blocks on visible tokens.

    No class token (``num_prefix_tokens = 0``); evaluations pool the patch tokens. The fixed 2D
    sin-cos position embedding is kept as a frozen ``pos_embed`` parameter so that checkpoints
    carry it, as ConvMAE's do. Like a timm model, ``model(x)`` is
    ``forward_head(forward_features(x))``: the mean of the tokens, through ``head`` (a linear
    classifier of ``num_classes``, or ``nn.Identity`` without parameters when it is 0, so the
    pre-trained weights still load strictly).
    """

    num_prefix_tokens = 0
    global_pool = "avg"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dims: tuple[int, int, int] = (256, 384, 768),
        depths: tuple[int, int, int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratios: tuple[float, float, float] = (8.0, 8.0, 4.0),
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
    ) -> None:
        """Build the encoder.

        Args:
            img_size: input side (or ``(H, W)``) in pixels.
            patch_size: total stride to the token grid, split by ``stage_strides``.
            in_chans: image channels.
            embed_dims: widths of stages 1, 2, 3 (stage 3 = ``embed_dim``).
            depths: blocks of stages 1, 2, 3.
            num_heads: attention heads of the stage-3 transformer blocks.
            mlp_ratios: MLP hidden width / width, per stage.
            drop_path_rate: stochastic depth, rising linearly over all blocks (for fine-tuning).
            num_classes: outputs of the linear ``head``; 0 (the pre-trained encoder) = none,
                ``model(x)`` then gives the pooled features ``[B, embed_dim]``.

        Raises:
            ValueError: if an image side is not divisible by ``patch_size``, or the stage-3 width
                is not divisible by ``num_heads`` or by 4 (sin-cos embedding).
        """
        super().__init__()
        height, width = to_2tuple(img_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}")
        dim1, dim2, dim3 = embed_dims
        if dim3 % num_heads:
            raise ValueError(f"stage-3 width {dim3} must be divisible by num_heads {num_heads}")
        self._arch: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dims": tuple(embed_dims),
            "depths": tuple(depths),
            "num_heads": num_heads,
            "mlp_ratios": tuple(mlp_ratios),
            **({"num_classes": num_classes} if num_classes else {}),
        }
        self.num_classes = num_classes
        self.strides = stage_strides(patch_size)
        s1, s2, s3 = self.strides
        self.embed_dims = tuple(embed_dims)
        self.embed_dim = self.num_features = dim3
        self._grid = (height // patch_size, width // patch_size)
        self.grad_checkpointing = False

        self.patch_embed1 = ConvStageEmbed(in_chans, dim1, s1)
        self.patch_embed2 = ConvStageEmbed(dim1, dim2, s2)
        self.patch_embed3 = ConvStageEmbed(dim2, dim3, s3)
        self.patch_embed4 = nn.Linear(dim3, dim3)
        self.stage1_output_decode = nn.Conv2d(dim1, dim3, s2 * s3, stride=s2 * s3)
        self.stage2_output_decode = nn.Conv2d(dim2, dim3, s3, stride=s3)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim3, self._grid).unsqueeze(0), requires_grad=False)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        d1, d2, _ = depths
        self.blocks1 = nn.ModuleList(MaskedConvBlock(dim1, mlp_ratios[0], rates[i]) for i in range(d1))
        self.blocks2 = nn.ModuleList(MaskedConvBlock(dim2, mlp_ratios[1], rates[d1 + i]) for i in range(d2))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks3 = nn.Sequential(
            *[
                # timm annotates norm_layer as a Module class; it takes any callable (and passes partials itself).
                Block(dim3, num_heads, mlp_ratios[2], qkv_bias=True, drop_path=rate, norm_layer=norm_layer)  # type: ignore[arg-type]
                for rate in rates[d1 + d2 :]
            ]
        )
        self.norm = norm_layer(dim3)
        self.head = nn.Linear(dim3, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """ConvMAE initialisation: xavier-uniform Linear layers (MAE), LayerNorms reset, the
        stage-3 embedding initialised like a Linear layer; other convolutions keep PyTorch's."""
        self.apply(init_mae_weights)
        proj = self.patch_embed3.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(H / patch_size, W / patch_size)`` of stage 3, where masks live."""
        return self._grid

    def arch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments rebuilding this architecture with ``ConViT(**kw)``."""
        return dict(self._arch)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-d ones."""
        return {"pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's ``group_matcher``).

        As ConvMAE's fine-tuning: the embeddings and both convolution stages form layer 0,
        transformer block ``i`` is layer ``i + 1``, everything else (final norm, fusion
        convolutions, a classifier head) is the top layer. ``coarse`` gives the same grouping.
        """
        return {"stem": r"^pos_embed|^patch_embed\d|^blocks[12]\.", "blocks": r"^blocks3\.(\d+)"}

    def _conv_blocks(self, blocks: nn.ModuleList, x: Tensor, masked: Tensor | None) -> Tensor:
        for block in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, masked, use_reentrant=False)
            else:
                x = block(x, masked)
        return x

    def _conv_stages(self, x: Tensor, masked: Tensor | None, num_views: int) -> tuple[Tensor, Tensor]:
        """Stages 1 and 2 and the stage-3 embedding, per view.

        Args:
            x: ``[B, C, H, W]`` images.
            masked: ``bool[B*K, 1, h, w]`` masks on the token grid (True = masked), or None.
            num_views: ``K``; the mask-independent stage-1 embedding runs once per image and is
                repeated for the views, everything after it runs on ``B*K`` rows.

        Returns:
            Stage-3 embeddings ``[B*K, L, D]`` and the fused stage-1 + stage-2 features
            ``[B*K, L, D]``, both on the token grid in row-major order.
        """
        _, s2, s3 = self.strides
        x = self.patch_embed1(x).repeat_interleave(num_views, dim=0)
        masked1 = None if masked is None else upsample_mask(masked, s2 * s3)
        masked2 = None if masked is None else upsample_mask(masked, s3)
        x = self._conv_blocks(self.blocks1, x, masked1)
        fused = self.stage1_output_decode(x)
        x = self._conv_blocks(self.blocks2, self.patch_embed2(x), masked2)
        fused = fused + self.stage2_output_decode(x)
        tokens = self.patch_embed3(x)
        return tokens.flatten(2).transpose(1, 2), fused.flatten(2).transpose(1, 2)

    def _blocks3(self, tokens: Tensor) -> Tensor:
        """The stage-3 transformer blocks (recomputed in backward with gradient checkpointing)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks3, tokens, use_reentrant=False)
        return self.blocks3(tokens)

    def _transformer(self, tokens: Tensor, fused: Tensor) -> Tensor:
        """Stage-3 blocks, multi-scale fusion, final norm."""
        return self.norm(self._blocks3(tokens) + fused)

    def forward_masked(self, x: Tensor, views: MaskedViews) -> Tensor:
        """Encode the visible tokens of K masked views per image.

        Each view runs the convolution stages with its own mask (batched as ``B*K`` rows), then
        the transformer blocks on its visible tokens only.

        Args:
            x: ``[B, C, H, W]`` mean/std-normalised images.
            views: K views per image on the token grid (``L = H/p * W/p``).

        Returns:
            ``[B*K, n_vis, D]`` visible tokens (ascending ids) after the final norm; row
            ``b*K + k`` is view ``k`` of image ``b``.

        Raises:
            ValueError: if the views' token count differs from the token grid.
        """
        height, width = self._grid
        if views.mask.shape[-1] != height * width:
            raise ValueError(f"views have {views.mask.shape[-1]} tokens, encoder grid {self._grid} has {height * width}")
        rows = views.batch_size * views.num_views
        masked = views.mask.reshape(rows, 1, height, width)
        tokens, fused = self._conv_stages(x, masked, views.num_views)
        ids = views.ids_keep.reshape(rows, 1, views.num_visible)
        tokens = self.patch_embed4(gather_tokens(tokens, ids)) + self.pos_embed[0, ids[:, 0]]
        return self._transformer(tokens, gather_tokens(fused, ids))

    def forward_features(self, x: Tensor) -> Tensor:
        """Encode every token of unmasked images (evaluation): ``[B, C, H, W]`` -> ``[B, L, D]``.

        The same computation as ``forward_masked`` with nothing masked, final norm applied.
        """
        tokens, fused = self._conv_stages(x, None, 1)
        return self._transformer(self.patch_embed4(tokens) + self.pos_embed, fused)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``[B, L, D]`` tokens -> the mean token ``[B, D]`` through ``head`` (``[B, num_classes]``
        logits; the pooled features when ``num_classes`` is 0 or ``pre_logits``)."""
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``forward_head(forward_features(x))``: ``[B, num_classes]``, or
        ``[B, embed_dim]`` pooled features without a head."""
        return self.forward_head(self.forward_features(x))

    def forward_unfused(self, x: Tensor) -> Tensor:
        """Stage-3 tokens of unmasked images without the fusion convolutions and the final norm.

        The tokens ConvMAE's and the official DMJD code's classifier (``models_convit.ConvViT``)
        pools for fine-tuning, linear probing and kNN: the fusion convolutions are pre-training
        only, and their ``fc_norm`` after pooling replaces ``norm``. ``[B, C, H, W]`` -> ``[B, L, D]``.
        """
        tokens, _ = self._conv_stages(x, None, 1)  # the fusion features are left unused
        return self._blocks3(self.patch_embed4(tokens) + self.pos_embed)


@register_encoder("convit")
def create_convit(
    size: str,
    img_size: int,
    patch_size: int,
    in_chans: int,
    embed_dim: int | None = None,
    depth: int | None = None,
    **overrides: Any,
) -> ConViT:
    """ConViT from a ``CONVIT_SIZES`` preset.

    ``embed_dim`` and ``depth`` (the config's generic overrides) replace the stage-3 width and
    depth; other keywords (``embed_dims``, ``depths``, ``num_heads``, ``mlp_ratios``,
    ``drop_path_rate``) replace ``ConViT`` arguments.

    Raises:
        ValueError: for an unknown ``size``.
    """
    if size not in CONVIT_SIZES:
        raise ValueError(f"unknown ConViT size {size!r}; available: {sorted(CONVIT_SIZES)}")
    kwargs = {**CONVIT_SIZES[size], **overrides}
    if embed_dim is not None:
        kwargs["embed_dims"] = (*kwargs["embed_dims"][:2], embed_dim)
    if depth is not None:
        kwargs["depths"] = (*kwargs["depths"][:2], depth)
    return ConViT(img_size=img_size, patch_size=patch_size, in_chans=in_chans, **kwargs)
