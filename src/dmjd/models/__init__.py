"""Models: masked ViT encoder, masked prediction branch, visible distillation branch, DMJD."""

from dmjd.models import convit  # noqa: F401  (registers "convit")
from dmjd.models.decoder import MaskedPredictionBranch
from dmjd.models.dmjd import DMJDModel, DMJDOutput, MaskedEncoder, encoder_state_dict
from dmjd.models.encoder import VIT_SIZES, MaskedViT, init_mae_weights
from dmjd.models.heads import ProjectorKind, VisibleDistillationBranch, build_projector
from dmjd.models.pos_embed import sincos_pos_embed_2d
from dmjd.models.registry import (
    available_encoders,
    build_model,
    create_encoder,
    register_encoder,
)
from dmjd.models.simmim import LinearPredictionHead, SimMIMModel, build_simmim_model

__all__ = [
    "VIT_SIZES",
    "DMJDModel",
    "DMJDOutput",
    "LinearPredictionHead",
    "MaskedEncoder",
    "MaskedPredictionBranch",
    "MaskedViT",
    "ProjectorKind",
    "SimMIMModel",
    "VisibleDistillationBranch",
    "available_encoders",
    "build_model",
    "build_projector",
    "build_simmim_model",
    "create_encoder",
    "encoder_state_dict",
    "init_mae_weights",
    "register_encoder",
    "sincos_pos_embed_2d",
]
