"""Targets: patch (un)folding, norm-pix pixels and HOG against a slow per-pixel reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmjd.targets import (
    HOGTarget,
    PixelTarget,
    Target,
    available_targets,
    create_target,
    patchify,
    register_target,
    unpatchify,
)

# ---------------------------------------------------------------- slow HOG references
# Written from the descriptions of the two reference implementations (docs/fidelity.md), one
# pixel at a time in float64, each in its own layout; the tests permute them to dmjd's
# (cell_y, cell_x, channel, bin) order.

# SlowFast HOGLayerC's Sobel kernel weight_x; weight_y is its transpose. Applied by 2-D
# cross-correlation (F.conv2d) after reflect padding.
SLOWFAST_WEIGHT_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


def _reflect(i: int, n: int) -> int:
    """Reflect-padding index (edge pixel not repeated): -1 -> 1, n -> n - 2."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


def _slowfast_pixel(img: np.ndarray, c: int, y: int, x: int, nbins: int) -> tuple[int, float]:
    """HOGLayerC at one pixel: (bin, magnitude) with phase = atan2(gx, gy)."""
    _, h, w = img.shape
    gx = gy = 0.0
    for a in range(3):
        for b in range(3):
            value = img[c, _reflect(y + a - 1, h), _reflect(x + b - 1, w)]
            gx += SLOWFAST_WEIGHT_X[a][b] * value
            gy += SLOWFAST_WEIGHT_X[b][a] * value
    k = math.floor(math.atan2(gx, gy) / math.pi * nbins)  # in [-nbins, nbins]
    if k < 0:
        k += nbins
    if k == nbins:
        k = 0
    return k, math.hypot(gx, gy)


def _official_dmjd_pixel(img: np.ndarray, c: int, y: int, x: int, nbins: int) -> tuple[int, float]:
    """Official DMJD hog_tensor at one pixel: (bin, magnitude) from g_row, g_col (zero on the border)."""
    _, h, w = img.shape
    g_row = img[c, y + 1, x] - img[c, y - 1, x] if 0 < y < h - 1 else 0.0
    g_col = img[c, y, x + 1] - img[c, y, x - 1] if 0 < x < w - 1 else 0.0
    orientation = math.degrees(math.atan2(g_row, g_col)) % 180
    return int(orientation // (180 / nbins)), math.hypot(g_col, g_row)


def _mmpretrain_window(size: int) -> np.ndarray:
    """mmpretrain HOGGenerator's Gaussian kernel: std size // 2, centred, divided by its sum."""
    n = np.arange(size, dtype=np.float64)
    g = np.exp(-0.5 * ((n - n.mean()) / (size // 2)) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def reference_hog(img: np.ndarray, variant: str, patch: int, cell: int, nbins: int, window: int = 0) -> np.ndarray:
    """Per-pixel loop HOG of one image ``[C, H, W]`` -> ``[L, T]`` in dmjd's token layout.

    ``maskfeat``: SlowFast HOGLayerC (+ mmpretrain's window when ``window``) and MaskFeat's token
    layout (channel, bin, cell_y, cell_x); ``dmjd``: the official DMJD hog_tensor with the
    InstanceWhitening LayerNorm and its layout (cell_y, cell_x, bin, channel).
    """
    c_count, h, w = img.shape
    pixel = _slowfast_pixel if variant == "maskfeat" else _official_dmjd_pixel
    weights = np.tile(_mmpretrain_window(window), (h // window, w // window)) if window else np.ones((h, w))
    hist = np.zeros((c_count, h // cell, w // cell, nbins))
    for c in range(c_count):
        for y in range(h):
            for x in range(w):
                k, magnitude = pixel(img, c, y, x, nbins)
                hist[c, y // cell, x // cell, k] += weights[y, x] * magnitude
    if variant == "dmjd":
        hist = hist / cell**2
        mean = hist.mean(axis=-1, keepdims=True)
        var = ((hist - mean) ** 2).mean(axis=-1, keepdims=True)
        hist = (hist - mean) / np.sqrt(var + 1e-5)
    else:
        hist = hist / np.maximum(np.sqrt((hist**2).sum(axis=-1, keepdims=True)), 1e-12)
    k = patch // cell
    tokens = []
    for py in range(h // patch):
        for px in range(w // patch):
            cells = hist[:, py * k : (py + 1) * k, px * k : (px + 1) * k]  # [C, k, k, nbins]
            if variant == "dmjd":  # official: (cell_y, cell_x, bin, channel)
                tokens.append(cells.transpose(1, 2, 3, 0).reshape(-1, nbins, c_count).transpose(0, 2, 1).ravel())
            else:  # MaskFeat: (channel, bin, cell_y, cell_x)
                official = cells.transpose(0, 3, 1, 2).ravel()
                tokens.append(official.reshape(c_count, nbins, k, k).transpose(2, 3, 0, 1).ravel())
    return np.array(tokens)


HOG_CASES = [
    # variant, channels, height, width, patch, cell, window
    ("dmjd", 1, 16, 16, 8, 4, 0),
    ("dmjd", 3, 32, 24, 8, 8, 0),
    ("dmjd", 3, 16, 32, 16, 8, 0),
    ("maskfeat", 1, 16, 16, 8, 4, 0),
    ("maskfeat", 3, 32, 24, 8, 8, 0),
    ("maskfeat", 3, 16, 32, 16, 8, 0),
    ("maskfeat", 3, 16, 32, 16, 8, 8),
    ("maskfeat", 1, 32, 16, 16, 4, 16),
]


@pytest.mark.parametrize(("variant", "chans", "height", "width", "patch", "cell", "window"), HOG_CASES)
def test_hog_matches_slow_reference(
    variant: str, chans: int, height: int, width: int, patch: int, cell: int, window: int
) -> None:
    images = torch.rand(2, chans, height, width, generator=torch.Generator().manual_seed(7))
    target = HOGTarget(patch, chans, variant=variant, cell_size=cell, gaussian_window=window)
    out = target(images)
    grid = (height // patch) * (width // patch)
    assert out.shape == (2, grid, target.dim)
    assert target.dim == (patch // cell) ** 2 * chans * 9
    for b in range(2):
        expected = reference_hog(images[b].double().numpy() * 255, variant, patch, cell, 9, window)
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [0, 16])
def test_maskfeat_hog_equals_slowfast_on_the_normalised_input(window: int) -> None:
    """SlowFast's MaskFeat computes HOGLayerC on the mean/std-normalised image; ours takes [0, 1]
    images and must give the same values (per-channel affine invariance), window or not."""
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    normalised = (images[0].double().numpy() - mean) / std
    out = HOGTarget(16, 3, variant="maskfeat", gaussian_window=window)(images)[0]
    np.testing.assert_allclose(out.numpy(), reference_hog(normalised, "maskfeat", 16, 8, 9, window), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["dmjd", "maskfeat"])
def test_hog_is_exact_on_8bit_images(variant: str) -> None:
    """8-bit images have many gradients that cancel exactly (angle 0 or 90 degrees, on or
    near a bin edge); binning them must not depend on float rounding."""
    levels = torch.randint(0, 4, (1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    out = HOGTarget(16, 3, variant=variant)(levels / 255.0)[0]
    expected = reference_hog(levels[0].double().numpy(), variant, 16, 8, 9)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("degrees", "dmjd_bin", "maskfeat_bin"), [(5, 0, 4), (15, 0, 3), (100, 4, 8), (165, 8, 5)])
def test_hog_bins_of_an_oriented_ramp(degrees: int, dmjd_bin: int, maskfeat_bin: int) -> None:
    """Hand values: a ramp whose gradient points at ``degrees`` (x right, y down) falls in bin
    floor(degrees / 20) with the official DMJD convention and in bin floor(((90 - degrees) mod
    180) / 20) with SlowFast's atan2(gx, gy): mirrored and shifted by half a bin."""
    theta = math.radians(degrees)
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    image = (0.5 + 0.01 * (math.cos(theta) * x + math.sin(theta) * y)).view(1, 1, 16, 16)
    for variant, expected in (("dmjd", dmjd_bin), ("maskfeat", maskfeat_bin)):
        hist = HOGTarget(16, 1, variant=variant).cell_histograms(image)[0, 0, :, 1, 1]
        assert int(hist.argmax()) == expected, variant


def test_hog_dim_for_rgb_16px_patches_and_8px_cells() -> None:
    for variant in ("dmjd", "maskfeat"):
        target = create_target("hog", patch_size=16, in_chans=3, variant=variant)
        assert target.dim == 108
        assert target(torch.rand(2, 3, 32, 48)).shape == (2, 6, 108)
    assert HOGTarget(16, 1).dim == 36


@pytest.mark.parametrize("variant", ["dmjd", "maskfeat"])
def test_hog_histograms_are_normalised(variant: str) -> None:
    target = HOGTarget(16, 3, variant=variant)
    hist = target.cell_histograms(torch.rand(2, 3, 32, 32))  # [B, C, nbins, Hc, Wc]
    assert hist.shape == (2, 3, 9, 4, 4)
    if variant == "maskfeat":
        torch.testing.assert_close(hist.norm(dim=2), torch.ones(2, 3, 4, 4))
    else:
        torch.testing.assert_close(hist.mean(dim=2), torch.zeros(2, 3, 4, 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(hist.var(dim=2, unbiased=False), torch.ones(2, 3, 4, 4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("variant", ["dmjd", "maskfeat"])
def test_hog_invariant_to_global_brightness(variant: str) -> None:
    """Scaling (and shifting) intensities changes gradient size, not direction: the per-cell
    normalisation must cancel it."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = HOGTarget(16, 3, variant=variant)
    reference = target(images)
    torch.testing.assert_close(target(0.5 * images), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(target(0.5 * images + 0.25), reference, atol=1e-4, rtol=1e-4)


def test_hog_tokens_follow_the_patch_grid() -> None:
    """Texture in one patch only changes that patch's token (row-major grid order)."""
    images = torch.full((1, 1, 32, 48), 0.5)
    # Texture strictly inside patch (row 1, column 1) = token 4, away from its border so
    # that the 3x3 Sobel of the neighbouring patches sees a flat image.
    images[0, 0, 18:30, 18:30] += 0.1 * torch.rand(12, 12)
    out = HOGTarget(16, 1, variant="maskfeat")(images)[0]
    changed = out.abs().sum(dim=-1) > 0
    assert changed.tolist() == [False, False, False, False, True, False]


def test_hog_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="multiple"):
        HOGTarget(12, 3, cell_size=8)
    with pytest.raises(ValueError, match="variant"):
        HOGTarget(16, 3, variant="sift")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Gaussian"):
        HOGTarget(16, 3, variant="dmjd", gaussian_window=16)
    with pytest.raises(ValueError, match="gaussian_window"):
        HOGTarget(16, 3, variant="maskfeat", gaussian_window=6)


# ---------------------------------------------------------------- common target contract


@pytest.mark.parametrize(
    "target",
    [HOGTarget(8, 3, variant="dmjd"), HOGTarget(8, 3, variant="maskfeat", gaussian_window=8), PixelTarget(8, 3)],
    ids=["hog-dmjd", "hog-maskfeat", "pixels"],
)
def test_target_is_float32_without_grad_even_under_autocast(target: Target) -> None:
    images = torch.rand(2, 3, 16, 24)
    expected = target(images)
    low = images.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = target(low)
    assert out.dtype == torch.float32
    assert not out.requires_grad
    torch.testing.assert_close(out, target(low.detach().float()))
    torch.testing.assert_close(target.to(torch.float64)(images), expected)
    assert expected.shape == (2, 6, target.dim)


def test_target_rejects_bad_images() -> None:
    target = HOGTarget(16, 3)
    with pytest.raises(ValueError, match="expected images"):
        target(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expected images"):
        target(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        target(torch.rand(2, 3, 32, 40))


def test_registry() -> None:
    assert {"hog", "pixels"} <= set(available_targets())
    assert available_targets() == sorted(available_targets())
    target = create_target("hog", patch_size=16, in_chans=1, variant="maskfeat", nbins=6)
    assert isinstance(target, HOGTarget) and target.dim == 24
    assert isinstance(create_target("pixels", patch_size=4, in_chans=3), PixelTarget)
    with pytest.raises(ValueError, match="hog, pixels"):
        create_target("clip", patch_size=16, in_chans=3)
    with pytest.raises(ValueError, match="already registered"):
        register_target("hog")(PixelTarget)


# ---------------------------------------------------------------- pixels


def test_pixel_target_by_hand() -> None:
    image = torch.arange(16.0).reshape(1, 1, 4, 4) / 16  # rows 0..3, 4..7, 8..11, 12..15
    raw = PixelTarget(2, 1, norm_pix=False)(image)
    assert raw.tolist() == [
        [
            [0 / 16, 1 / 16, 4 / 16, 5 / 16],
            [2 / 16, 3 / 16, 6 / 16, 7 / 16],
            [8 / 16, 9 / 16, 12 / 16, 13 / 16],
            [10 / 16, 11 / 16, 14 / 16, 15 / 16],
        ]
    ]
    # Every patch is (offset + [0, 1, 4, 5]) / 16: mean offset + 2.5, unbiased variance 17 / 3.
    normed = PixelTarget(2, 1)(image)
    scale = math.sqrt(17 / 3 / 256 + 1e-6)
    expected = torch.tensor([-2.5, -1.5, 1.5, 2.5]) / 16 / scale
    torch.testing.assert_close(normed, expected.expand(1, 4, 4))


def test_pixel_target_channel_order_and_stats() -> None:
    images = torch.rand(2, 3, 8, 12)
    target = PixelTarget(4, 3)
    raw = PixelTarget(4, 3, norm_pix=False)(images)
    assert target.dim == 48
    torch.testing.assert_close(raw[1, 5, :3], images[1, :, 4, 8])  # first pixel of token 5
    torch.testing.assert_close(raw[1, 5, 3:6], images[1, :, 4, 9])  # its right neighbour
    mean, var = target.patch_stats(images)
    assert mean.shape == var.shape == (2, 6, 1)
    torch.testing.assert_close(target(images) * (var + target.eps).sqrt() + mean, raw)
    with pytest.raises(ValueError, match="two values"):
        PixelTarget(1, 1)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def reference_norm_pix(image: np.ndarray, patch: int, mean: tuple, std: tuple) -> np.ndarray:
    """MAE's forward_loss target, one patch at a time: normalise the image with mean/std, take each
    patch's p*p*C values (row, column, channel), subtract their mean, divide by sqrt(unbiased
    variance + 1e-6)."""
    c_count, h, w = image.shape
    normalised = (image - np.array(mean).reshape(-1, 1, 1)) / np.array(std).reshape(-1, 1, 1)
    tokens = []
    for py in range(h // patch):
        for px in range(w // patch):
            values = [
                normalised[c, py * patch + r, px * patch + q]
                for r in range(patch)
                for q in range(patch)
                for c in range(c_count)
            ]
            m = sum(values) / len(values)
            var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
            tokens.append([(v - m) / math.sqrt(var + 1e-6) for v in values])
    return np.array(tokens)


def test_norm_pix_target_is_maes_on_the_normalised_image() -> None:
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(5))
    target = PixelTarget(4, 3, mean=IMAGENET[0], std=IMAGENET[1])
    out = target(images)
    for b in range(2):
        expected = reference_norm_pix(images[b].double().numpy(), 4, *IMAGENET)
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=1e-4, atol=1e-5)
    # RGB: statistics over the three channels together change with the per-channel affine map.
    assert (out - PixelTarget(4, 3)(images)).abs().max() > 0.1
    # One channel: the per-patch standardisation absorbs the affine map (up to eps).
    grey = images[:, :1]
    torch.testing.assert_close(PixelTarget(4, 1, mean=(0.5,), std=(0.25,))(grey), PixelTarget(4, 1)(grey), atol=1e-3, rtol=1e-3)


def test_pixel_target_without_norm_pix_regresses_the_normalised_image() -> None:
    images = torch.rand(1, 3, 4, 4)
    out = PixelTarget(4, 3, norm_pix=False, mean=IMAGENET[0], std=IMAGENET[1])(images)
    torch.testing.assert_close(out[0, 0, :3], (images[0, :, 0, 0] - torch.tensor(IMAGENET[0])) / torch.tensor(IMAGENET[1]))


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("stats", [IMAGENET, (None, None)])
def test_pixel_target_to_images_inverts_the_target(norm_pix: bool, stats: tuple) -> None:
    images = torch.rand(2, 3, 8, 12)
    target = PixelTarget(4, 3, norm_pix=norm_pix, mean=stats[0], std=stats[1])
    torch.testing.assert_close(target.to_images(target(images), images, (2, 3)), images, atol=1e-5, rtol=1e-5)


def test_pixel_target_rejects_incomplete_statistics() -> None:
    with pytest.raises(ValueError, match="both"):
        PixelTarget(4, 3, mean=IMAGENET[0])
    with pytest.raises(ValueError, match="channels"):
        PixelTarget(4, 1, mean=IMAGENET[0], std=IMAGENET[1])
    with pytest.raises(ValueError, match="positive"):
        PixelTarget(4, 3, mean=IMAGENET[0], std=(0.2, 0.0, 0.2))


# ---------------------------------------------------------------- patchify / unpatchify


@settings(max_examples=40, deadline=None)
@given(
    chans=st.sampled_from([1, 2, 3]),
    patch=st.integers(1, 4),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_patchify_round_trip(chans: int, patch: int, gh: int, gw: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, chans, gh * patch, gw * patch, generator=g)
    tokens = patchify(images, patch)
    assert tokens.shape == (2, gh * gw, patch * patch * chans)
    row, col = divmod(gh * gw - 1, gw)  # last token: bottom-right patch
    block = images[:, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
    torch.testing.assert_close(tokens[:, -1], block.permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(unpatchify(tokens, patch, (gh, gw), chans), images)


def test_unpatchify_square_grid_and_bad_shapes() -> None:
    images = torch.rand(1, 1, 6, 6)
    assert torch.equal(unpatchify(patchify(images, 3), 3, 2, 1), images)
    with pytest.raises(ValueError, match="expected tokens"):
        unpatchify(patchify(images, 3), 3, 2, 3)
    with pytest.raises(ValueError, match="divisible"):
        patchify(images, 4)
    with pytest.raises(ValueError, match="expected images"):
        patchify(images[0], 3)
