"""Visible distillation branch (VDB): projector + predictor on the visible token features."""

from typing import Literal

from torch import Tensor, nn

from dmjd.models.encoder import init_mae_weights

ProjectorKind = Literal["nonlinear", "linear"]
_LN_EPS = 1e-6  # the official proj_embed's norm_layer, partial(nn.LayerNorm, eps=1e-6)


def build_projector(embed_dim: int, hidden_dim: int, kind: ProjectorKind) -> nn.Module:
    """Projector ``g`` of the visible distillation branch.

    ``"nonlinear"`` (the paper's): three Linear layers of width ``hidden_dim``, each followed by a
    LayerNorm, GELU after the first two, the last LayerNorm without affine parameters (SimCLR
    style); the LayerNorms use eps 1e-6, as the official ``proj_embed``. ``"linear"``: one Linear
    layer (Table V ablation).

    Raises:
        ValueError: for another ``kind``.
    """
    if kind == "linear":
        return nn.Linear(embed_dim, hidden_dim)
    if kind == "nonlinear":
        return nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.LayerNorm(hidden_dim, eps=_LN_EPS),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim, eps=_LN_EPS),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim, eps=_LN_EPS, elementwise_affine=False),
        )
    raise ValueError(f"projector must be 'nonlinear' or 'linear', got {kind!r}")


class VisibleDistillationBranch(nn.Module):
    """Projector ``g`` then predictor ``q`` (one Linear to the target width), per visible token."""

    def __init__(
        self,
        embed_dim: int,
        target_dim: int,
        hidden_dim: int = 512,
        projector: ProjectorKind = "nonlinear",
    ) -> None:
        """Build the branch: encoder width ``embed_dim`` -> ``hidden_dim`` -> ``target_dim``."""
        super().__init__()
        self.projector = build_projector(embed_dim, hidden_dim, projector)
        self.predictor = nn.Linear(hidden_dim, target_dim)
        self.apply(init_mae_weights)

    def forward(self, tokens: Tensor) -> Tensor:
        """Map visible token features ``[N, n_vis, D]`` to target predictions ``[N, n_vis, T]``."""
        return self.predictor(self.projector(tokens))
