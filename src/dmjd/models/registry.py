"""Encoder registry and the model builder used by the config / CLI layer."""

from collections.abc import Callable
from typing import Any, TypeVar, cast

from torch import nn

from dmjd.models.decoder import MaskedPredictionBranch
from dmjd.models.dmjd import DMJDModel, MaskedEncoder
from dmjd.models.encoder import VIT_SIZES, MaskedViT
from dmjd.models.heads import ProjectorKind, VisibleDistillationBranch

EncoderFactory = Callable[..., nn.Module]
_FactoryT = TypeVar("_FactoryT", bound=EncoderFactory)
_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[_FactoryT], _FactoryT]:
    """Decorator registering an encoder factory under ``name``.

    The factory is called as ``factory(size=..., img_size=..., patch_size=..., in_chans=...,
    **overrides)`` and must return a module following ``dmjd.models.dmjd.MaskedEncoder``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def add(factory: _FactoryT) -> _FactoryT:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = factory
        return factory

    return add


def available_encoders() -> list[str]:
    """Registered encoder names, sorted."""
    return sorted(_ENCODERS)


def create_encoder(
    arch: str = "vit",
    size: str = "base",
    img_size: int = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    **overrides: Any,
) -> nn.Module:
    """Build a registered encoder.

    Args:
        arch: registered encoder name (``available_encoders()``).
        size: size preset of that encoder (ViT: tiny, small, base, large, huge).
        img_size: input side in pixels.
        patch_size: patch side in pixels.
        in_chans: image channels.
        **overrides: preset fields to replace (ViT: ``embed_dim``, ``depth``, ``num_heads``,
            ``mlp_ratio``); None values mean "keep the preset", as configs write them.

    Raises:
        ValueError: for an unknown ``arch`` (and, from the factory, an unknown ``size``).
    """
    if arch not in _ENCODERS:
        raise ValueError(f"unknown encoder {arch!r}; available: {available_encoders()}")
    kwargs = {key: value for key, value in overrides.items() if value is not None}
    return _ENCODERS[arch](size=size, img_size=img_size, patch_size=patch_size, in_chans=in_chans, **kwargs)


@register_encoder("vit")
def create_vit(size: str, img_size: int, patch_size: int, in_chans: int, **overrides: Any) -> MaskedViT:
    """ViT encoder from a ``VIT_SIZES`` preset with optional overrides.

    Raises:
        ValueError: for an unknown ``size``.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; available: {sorted(VIT_SIZES)}")
    return MaskedViT(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        **{**VIT_SIZES[size], **overrides},
    )


def build_encoder(*, grad_checkpointing: bool = False, **encoder_kwargs: Any) -> nn.Module:
    """The encoder of every model builder: ``create_encoder(**encoder_kwargs)``.

    Args:
        grad_checkpointing: recompute encoder blocks in backward to save activation memory.
        **encoder_kwargs: ``arch``, ``size``, ``img_size``, ``patch_size``, ``in_chans`` and preset
            overrides, see ``create_encoder``.
    """
    encoder = create_encoder(**encoder_kwargs)
    if grad_checkpointing:
        cast(MaskedEncoder, encoder).set_grad_checkpointing(True)
    return encoder


def build_model(
    *,
    target_dim: int,
    arch: str = "vit",
    size: str = "base",
    img_size: int = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratios: tuple[float, float, float] | None = None,
    decoder_dim: int = 512,
    decoder_depth: int = 8,
    decoder_heads: int = 16,
    decoder_mlp_ratio: float = 4.0,
    vdb: bool = True,
    vdb_hidden: int = 512,
    projector: ProjectorKind = "nonlinear",
    grad_checkpointing: bool = False,
) -> DMJDModel:
    """Build the DMJD model from plain keyword arguments (the ``model`` config section).

    Args:
        target_dim: target width ``T`` (``target.dim``).
        arch, size, img_size, patch_size, in_chans: encoder, see ``create_encoder``.
        embed_dim, depth, num_heads: encoder preset overrides, None keeps the preset.
        mlp_ratios: ConViT per-stage MLP ratios, None keeps the preset.
        decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio: masked prediction branch.
        vdb: add the visible distillation branch (joint distillation).
        vdb_hidden: projector width of the visible distillation branch.
        projector: ``"nonlinear"`` (paper) or ``"linear"`` projector.
        grad_checkpointing: recompute encoder blocks in backward to save memory.
    """
    encoder = build_encoder(
        arch=arch,
        size=size,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratios=mlp_ratios,
        grad_checkpointing=grad_checkpointing,
    )
    spec = cast(MaskedEncoder, encoder)  # every registered encoder follows MaskedEncoder
    mpb = MaskedPredictionBranch(
        spec.embed_dim,
        target_dim,
        spec.grid_size,
        decoder_dim=decoder_dim,
        depth=decoder_depth,
        num_heads=decoder_heads,
        mlp_ratio=decoder_mlp_ratio,
        num_prefix_tokens=spec.num_prefix_tokens,
    )
    branch = VisibleDistillationBranch(spec.embed_dim, target_dim, vdb_hidden, projector) if vdb else None
    return DMJDModel(encoder, mpb, branch)
