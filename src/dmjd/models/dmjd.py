"""DMJD model: encoder + masked prediction branch + optional visible distillation branch.

The model returns predictions only; the losses live in ``dmjd.losses``.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from torch import Tensor, nn

from dmjd.masking import MaskedViews
from dmjd.models.heads import VisibleDistillationBranch

# Wrapper prefixes of DistributedDataParallel and torch.compile state dicts.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class MaskedEncoder(Protocol):
    """What DMJDModel needs from an encoder (MaskedViT, or any registered backbone)."""

    embed_dim: int
    num_prefix_tokens: int

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(H, W)``."""
        ...

    def forward_masked(self, x: Tensor, views: MaskedViews) -> Tensor:
        """``[B, C, H, W]`` images -> ``[B*K, num_prefix_tokens + n_vis, embed_dim]``, normed."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Names of multi-dimensional parameters to keep out of weight decay."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute blocks in backward (``model.grad_checkpointing``)."""
        ...


class PredictionBranch(Protocol):
    """What DMJDModel needs from its prediction branch (MaskedPredictionBranch, SimMIM's LinearPredictionHead)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """Predictions ``[N, n_mask, T]``."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Names of multi-dimensional parameters to keep out of weight decay."""
        ...


@dataclass
class DMJDOutput:
    """Predictions of one forward pass, ``N = B*K`` rows.

    Attributes:
        pred_masked: ``[N, n_mask, T]`` masked prediction branch output.
        pred_visible: ``[N, n_vis, T]`` visible distillation branch output, None without VDB.
        latent: ``[N, P + n_vis, D]`` normed encoder output (P prefix tokens first).
    """

    pred_masked: Tensor
    pred_visible: Tensor | None
    latent: Tensor


class DMJDModel(nn.Module):
    """Joint distillation architecture: both branches read the same normed encoder output."""

    def __init__(
        self,
        encoder: nn.Module,
        mpb: PredictionBranch,
        vdb: VisibleDistillationBranch | None = None,
    ) -> None:
        """Compose an encoder (see ``MaskedEncoder``) and the branches; ``vdb=None``: no JD."""
        super().__init__()
        self.encoder = encoder
        self.mpb = mpb
        self.vdb = vdb

    def forward(self, x: Tensor, views: MaskedViews) -> DMJDOutput:
        """Encode the visible tokens of every view and run both branches.

        Args:
            x: ``[B, C, H, W]`` mean/std-normalised images.
            views: K masked views per image.
        """
        encoder = cast(MaskedEncoder, self.encoder)
        latent = encoder.forward_masked(x, views)
        visible = latent[:, encoder.num_prefix_tokens :]
        return DMJDOutput(
            pred_masked=self.mpb(latent, views),
            pred_visible=None if self.vdb is None else self.vdb(visible),
            latent=latent,
        )

    def no_weight_decay(self) -> set[str]:
        """Parameter names without weight decay: every 1-d parameter (biases, norm scales) plus
        the encoder's and decoder's tokens and position embeddings."""
        named = {f"encoder.{name}" for name in cast(MaskedEncoder, self.encoder).no_weight_decay()}
        named |= {f"mpb.{name}" for name in self.mpb.no_weight_decay()}
        return {name for name, param in self.named_parameters() if param.ndim <= 1 or name in named}


def encoder_state_dict(source: nn.Module | Mapping[str, Any]) -> dict[str, Tensor]:
    """timm-compatible encoder weights from a DMJD model, its state dict or a checkpoint.

    Args:
        source: a ``DMJDModel``, its ``state_dict()``, or a checkpoint dict holding it under
            ``"model"``. ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed.

    Returns:
        The ``encoder.*`` entries without that prefix, loadable with ``strict=True`` into
        ``VisionTransformer(**encoder.timm_kwargs())``.

    Raises:
        ValueError: if there is no ``encoder.`` entry.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    weights = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith("encoder."):
            weights[key.removeprefix("encoder.")] = value
    if not weights:
        raise ValueError("no 'encoder.' weights found; expected a DMJDModel state dict")
    return weights
