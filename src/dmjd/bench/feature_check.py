"""Feature check: what the benchmark's probes reach on the same labelled splits with other features.

A benchmark bar such as "beat raw pixels by 3 kNN points" is only meaningful if some feature can
clear it. This check puts, side by side and with the benchmark's own probes (weighted kNN and the
fast linear probe on its seeded labelled splits):

* raw pixels (the benchmark's baseline) and the same pixels standardised per dimension;
* HOG descriptors of the whole image at several cell sizes (the DMJD target, flattened);
* an encoder checkpoint's tokens (a ViT): the class token, and the patch tokens average-pooled on
  ``g x g`` regions for ``g`` = 1 (the benchmark's ``avg`` feature), 2, 4, ... up to the token grid's
  side (on a power-of-two grid the last row keeps every token).

It answers "is the probe, the pooling, the target or the training what holds a feature back?".

E.g. ``python benchmarks/feature_check.py --checkpoint runs/mae/checkpoint-last.pth``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmjd.engine import CheckpointError
from dmjd.eval.features import FeatureEncoder
from dmjd.eval.loading import load_encoder
from dmjd.eval.monitor import OnlineMonitor
from dmjd.targets.hog import HOGTarget

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class FeatureScore:
    """One feature's probe results: ``name``, dimension ``dim``, kNN and linear top-1 (fractions)."""

    name: str
    dim: int
    knn_top1: float
    linprobe_top1: float


def probe_scores(monitor: OnlineMonitor, name: str, train: Split, test: Split) -> FeatureScore:
    """The monitor's kNN and linear probe (``OnlineMonitor.probes``) on features ``(float[N, D], labels[N])``."""
    result = monitor.probes(train, test, linprobe=True)
    return FeatureScore(name, train[0].shape[1], result["knn_top1"], result["linprobe_top1"])


def standardised(train: Split, test: Split) -> tuple[Split, Split]:
    """Both splits z-scored per dimension with the train split's mean and std."""
    mean, std = train[0].mean(0), train[0].std(0).clamp_min(1e-6)
    return ((train[0] - mean) / std, train[1]), ((test[0] - mean) / std, test[1])


def hog_descriptor(images: Tensor, cell_size: int) -> Tensor:
    """``uint8[N, C, H, W]`` -> the flattened ``dmjd`` HOG of every ``cell_size`` cell ``[N, H W C 9 / cell^2]``."""
    hog = HOGTarget(cell_size, images.shape[1], "dmjd", cell_size=cell_size).to(images.device)
    return hog(images.float() / 255).flatten(1)


def grid_pool(tokens: Tensor, grid: tuple[int, int], cells: int) -> Tensor:
    """Patch tokens ``[N, L, D]`` on a ``grid`` (rows, columns) averaged over ``cells x cells`` regions,
    flattened ``[N, cells^2 D]``; ``cells = 1`` is the plain average."""
    maps = tokens.transpose(1, 2).unflatten(2, grid)  # [N, D, rows, columns]
    return F.adaptive_avg_pool2d(maps, cells).flatten(1)


@torch.no_grad()
def output_tokens(encoder: nn.Module, monitor: OnlineMonitor, split: int) -> Split:
    """Every output token ``float[N, P + L, D]`` (``forward_features``, eval mode) of a cached split, and its labels."""
    images, labels = monitor.cache[split]  # type: ignore[index]
    normalize = monitor.normalize.to(images.device)
    encoder.eval()
    forward = cast(FeatureEncoder, encoder).forward_features
    tokens = [forward(normalize(x.float() / 255)).float() for x in images.split(monitor.batch_size)]
    return torch.cat(tokens), labels


def feature_scores(
    monitor: OnlineMonitor, encoder: nn.Module | None = None, hog_cells: Sequence[int] = (2, 4)
) -> list[FeatureScore]:
    """The check's rows: pixels (the benchmark's baseline ``monitor.raw_pixels``, and standardised), HOG
    at ``hog_cells`` (each must divide the image side), and, with an ``encoder`` (a timm ViT), its class
    token and its patch tokens pooled on 1 x 1, 2 x 2, 4 x 4, ... regions up to the token grid's side."""
    score = partial(probe_scores, monitor)
    pixels = [monitor.pixel_features(split) for split in (0, 1)]
    rows = [score("raw pixels", *pixels), score("raw pixels, standardised", *standardised(*pixels))]
    for cell in hog_cells:
        hog = [(hog_descriptor(monitor.cache[s][0], cell), monitor.cache[s][1]) for s in (0, 1)]  # type: ignore[index]
        rows.append(score(f"HOG descriptor, {cell} px cells", *hog))
    if encoder is None:
        return rows
    train, test = (output_tokens(encoder, monitor, s) for s in (0, 1))
    vit = cast("VisionTransformer", encoder)
    prefix, grid = vit.num_prefix_tokens, tuple(vit.patch_embed.grid_size)
    if prefix:
        rows.append(score("encoder: class token", (train[0][:, 0], train[1]), (test[0][:, 0], test[1])))
    cells = 1
    while cells <= min(grid):
        pooled = [(grid_pool(t[:, prefix:], grid, cells), y) for t, y in (train, test)]
        rows.append(score(f"encoder: patch tokens, {cells} x {cells} average", *pooled))
        cells *= 2
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a dmjd pre-training checkpoint (ViT encoder)")
    parser.add_argument("--max-images", type=int, default=2000, help="images per labelled split (the cpu testbed's)")
    parser.add_argument("--hog-cells", default="2,4", help="comma-separated HOG cell sizes in pixels")
    args = parser.parse_args(argv)
    try:
        encoder, cfg = load_encoder(args.checkpoint)
    except CheckpointError as err:
        parser.error(str(err))
    if not hasattr(encoder, "patch_embed") or not hasattr(encoder, "num_prefix_tokens"):
        parser.error(f"the feature check reads ViT encoders; this checkpoint holds a {type(encoder).__name__}")
    cells = [int(c) for c in args.hog_cells.split(",")]
    if any(c <= 0 or cfg.model.img_size % c for c in cells):
        parser.error(f"--hog-cells must divide the image side {cfg.model.img_size}, got {args.hog_cells}")
    monitor = OnlineMonitor.from_config(cfg, max_images=args.max_images)
    if monitor.cache is None:
        parser.error("the labelled splits are too large to cache; lower --max-images")
    rows = feature_scores(monitor, encoder, cells)
    train_n, test_n = (len(monitor.cache[s][1]) for s in (0, 1))
    print(f"feature check: {args.checkpoint}, {train_n} train / {test_n} test images\n")
    print("| feature | dim | kNN top-1 | linear top-1 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.dim} | {100 * r.knn_top1:.2f} % | {100 * r.linprobe_top1:.2f} % |")
    return 0
