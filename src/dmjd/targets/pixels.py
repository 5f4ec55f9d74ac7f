"""Raw-pixel target with optional per-patch normalisation (MAE's ``norm_pix_loss``)."""

from torch import Tensor

from dmjd.targets.base import Target, patchify, register_target

__all__ = ["PixelTarget"]


def _moments(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance over the last dim of ``[B, L, D]`` -> two ``[B, L, 1]``."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


@register_target("pixels")
class PixelTarget(Target):
    """Patch pixels, each patch optionally standardised by its own mean and variance.

    With ``norm_pix`` a patch ``x`` becomes ``(x - mean(x)) / sqrt(var(x) + eps)``, where the
    variance is the unbiased one (``torch.var`` default), exactly as MAE's ``norm_pix_loss``,
    so pixel-target results stay comparable with MAE. ``T = p*p*C`` in :func:`patchify`
    order. Use :meth:`patch_stats` to map normalised predictions back to pixels.

    Args:
        patch_size: patch side ``p`` in pixels.
        in_chans: channel count ``C``.
        norm_pix: standardise each patch (enhances local contrast, as in MAE).
        eps: added to the variance before the square root.

    Raises:
        ValueError: if ``norm_pix`` is set for one-value patches (no variance to divide by).
    """

    def __init__(
        self, patch_size: int, in_chans: int, norm_pix: bool = True, eps: float = 1e-6
    ) -> None:
        super().__init__(patch_size, in_chans, dim=patch_size * patch_size * in_chans)
        if norm_pix and self.dim < 2:
            raise ValueError("norm_pix needs at least two values per patch")
        self.norm_pix = norm_pix
        self.eps = eps

    def patch_stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per-patch mean and (unbiased) variance used by the normalisation.

        A visualiser un-normalises a prediction with ``pred * (var + eps).sqrt() + mean``;
        honest reconstructions therefore borrow the statistics of the true patch.

        Args:
            images: ``[B, C, H, W]`` in ``[0, 1]``.

        Returns:
            ``(mean, var)``, each ``[B, L, 1]``.
        """
        return _moments(patchify(images.float(), self.patch_size))

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, L, p*p*C]``, normalised per patch if ``norm_pix``."""
        patches = patchify(images, self.patch_size)
        if not self.norm_pix:
            return patches
        mean, var = _moments(patches)
        return (patches - mean) / (var + self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_pix={self.norm_pix}, eps={self.eps}"
