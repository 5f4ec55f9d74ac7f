"""Index bookkeeping for K masked views per image, and a copy-free per-view gather."""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MaskedViews:
    """Visible / masked token ids of ``K`` views per image, all views equally masked.

    Attributes:
        mask: ``bool[B, K, L]``, True = masked.
        ids_keep: ``long[B, K, n_vis]`` visible token ids, ascending.
        ids_masked: ``long[B, K, n_mask]`` masked token ids, ascending.
        ids_restore: ``long[B, K, L]`` position of token ``j`` in
            ``cat(ids_keep, ids_masked)``; gathering a sequence laid out as
            ``[visible..., masked...]`` with it restores grid order (MAE's unshuffle).
        ids_keep_drawn: ``long[B, K, n_vis]`` the visible ids in the order the masking drew them
            (the official code's ``ids_keep`` order, ``DisjointMasking.sample``), or None; only
            ``loss.vis_pairing=official`` reads it.
    """

    mask: Tensor
    ids_keep: Tensor
    ids_masked: Tensor
    ids_restore: Tensor
    ids_keep_drawn: Tensor | None = None

    @classmethod
    def from_mask(cls, mask: Tensor, num_masked: int | None = None, ids_keep_drawn: Tensor | None = None) -> "MaskedViews":
        """Build the ids from a mask.

        Args:
            mask: ``bool[B, K, L]``, True = masked; every view must mask the same count.
            num_masked: that count when the caller knows it (``DisjointMasking.num_masked``):
                skips the check, and with it the one host sync needed to read the count.
            ids_keep_drawn: the visible ids in draw order, kept as given (not checked).

        Raises:
            ValueError: if ``mask`` is not a 3-d bool tensor or views differ in masked count.
        """
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor [B, K, L], got {mask.dtype} {tuple(mask.shape)}")
        num_tokens = mask.shape[-1]
        if num_masked is None:
            counts = mask.sum(dim=-1)
            low, num_masked = torch.stack([counts.amin(), counts.amax()]).tolist()
            if low != num_masked:
                raise ValueError(f"every view must mask the same number of tokens, got {low}..{num_masked}")
        # Stable sort of 0/1 keys: visible ids first, then masked ids, each ascending.
        order = torch.argsort(mask.to(torch.uint8), dim=-1, stable=True)
        positions = torch.arange(num_tokens, device=mask.device).expand_as(order)
        ids_restore = torch.empty_like(order).scatter_(-1, order, positions)
        num_visible = num_tokens - num_masked
        return cls(
            mask=mask,
            ids_keep=order[..., :num_visible],
            ids_masked=order[..., num_visible:],
            ids_restore=ids_restore,
            ids_keep_drawn=ids_keep_drawn,
        )

    @property
    def batch_size(self) -> int:
        """Unique images ``B``."""
        return self.mask.shape[0]

    @property
    def num_views(self) -> int:
        """Masked views per image ``K``."""
        return self.mask.shape[1]

    @property
    def num_visible(self) -> int:
        """Visible tokens per view ``n_vis``."""
        return self.ids_keep.shape[-1]

    @property
    def num_masked(self) -> int:
        """Masked tokens per view ``n_mask``."""
        return self.ids_masked.shape[-1]


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Gather tokens of every view from per-image tokens, without K copies of ``x``.

    Used for the visible patch embeddings fed to the encoder and for the targets of the
    masked / visible tokens, which are computed once per image and shared by its views.

    Args:
        x: ``[B, L, *C]`` per-image tokens.
        ids: ``long[B, K, n]`` token ids per view.

    Returns:
        ``[B*K, n, *C]``, row ``b*K + k`` holds ``x[b, ids[b, k]]``.
    """
    batch, num_tokens = x.shape[:2]
    if ids.dim() != 3 or ids.shape[0] != batch:
        raise ValueError(f"ids must be [B={batch}, K, n] for x of shape {tuple(x.shape)}, got {tuple(ids.shape)}")
    offsets = torch.arange(batch, device=ids.device).view(batch, 1, 1) * num_tokens
    flat = x.flatten(0, 1).index_select(0, (ids + offsets).flatten())
    return flat.view(batch * ids.shape[1], ids.shape[2], *x.shape[2:])
