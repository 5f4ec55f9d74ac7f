"""Shared evaluation plumbing: labelled splits and frozen-feature extraction.

Every evaluation has the same shape: build the labelled train/test splits of a data set, extract
one feature vector per image with the frozen encoder, then run the protocol on those features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Literal, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from dmjd.data import DataError, ImageFiles, build_dataset
from dmjd.engine.metrics import bars_shown
from dmjd.engine.runtime import autocast_dtype

Pool = Literal["cls", "avg", "avg_fc_norm"]


class FeatureEncoder(Protocol):
    """An encoder's forward on whole images (timm ViTs, ConViT): ``[B, C, H, W]`` -> tokens ``[B, P + L, D]``."""

    def forward_features(self, x: Tensor) -> Tensor:
        """Normed output tokens of full images."""
        ...


_FC_NORM_EPS = 1e-6
Transform = Callable[[Image.Image], Tensor]


def subsample(dataset: Dataset, max_images: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``max_images`` items, in index order (all when None)."""
    n = len(dataset)  # type: ignore[arg-type]
    if max_images is None or max_images >= n:
        return dataset
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    return Subset(dataset, keep.tolist())


def labelled_splits(
    name: str,
    path: str | None,
    train_transform: Transform,
    test_transform: Transform,
    download: bool = False,
    max_images: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """The labelled ``train`` and ``test`` splits of a data set (see ``dmjd.data.build_dataset``).

    An image folder of class sub-folders without ``val/`` or ``test/`` is split class by class, the
    same seeded split that pre-training keeps its training part of (``dmjd.data.datasets.image_folder``).
    An image folder's unreadable files are left out of its splits (``ImageFiles.readable``), after
    ``max_images`` sampled them.

    Args:
        max_images: keep a seeded random subset of at most this many images per split.
        seed: the seed of that subset.

    Raises:
        DataError: the data set is missing or has no labelled splits.
    """
    splits = [build_dataset(name, s, t, path, download) for s, t in (("train", train_transform), ("test", test_transform))]
    for split, ds in zip(("train", "test"), splits, strict=True):
        if dataset_labels(ds).min() < 0:
            raise DataError(f"data set {name!r} ({split}) has unlabelled images; evaluations need class labels")
    train, test = (_readable(subsample(ds, max_images, seed)) for ds in splits)
    return train, test


def _readable(dataset: Dataset) -> Dataset:
    """An image folder (or a subset of one) without its unreadable files; any other data set as it is."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, ImageFiles):
        return dataset.dataset.select(np.asarray(dataset.indices)).readable()
    return dataset.readable() if isinstance(dataset, ImageFiles) else dataset


def num_classes(*datasets: Dataset) -> int:
    """Number of classes: the largest label of the data sets plus one."""
    return int(max(dataset_labels(ds).max() for ds in datasets)) + 1


def class_names(dataset: Dataset) -> tuple[str, ...] | None:
    """The class names of a data set (through subsets), None when it has none."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return tuple(getattr(dataset, "classes", ())) or None


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class labels of every item ``[N]``, read without decoding images where the data set allows."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "labels") and len(dataset.labels) == len(dataset):  # type: ignore[arg-type]
        return np.asarray(dataset.labels, dtype=np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    base = getattr(dataset, "base", None)
    for attr in ("targets", "labels"):
        if base is not None and hasattr(base, attr):
            return np.asarray(getattr(base, attr), dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)  # type: ignore[arg-type]


def images_in_memory(
    dataset: Dataset, device: torch.device, batch_size: int = 256, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """All transformed images of a data set ``uint8[N, C, H, W]`` and its labels ``int64[N]`` on ``device``.

    Lossless for ``dmjd.data.eval_transform``: it resizes uint8 images and only then scales them by 1 / 255.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    images = torch.cat([batch[0].mul(255).round_().to(torch.uint8) for batch in loader])
    labels = torch.as_tensor(dataset_labels(dataset))
    return images.to(device), labels.to(device)


def default_pool(encoder: nn.Module) -> Pool:
    """The reference protocol's feature: ``cls`` for encoders with a class token (MAE's linear
    probe), ``avg_fc_norm`` for encoders with ``forward_unfused`` (ConViT: ConvMAE's and the
    official DMJD code's linear probe), else ``avg``."""
    if getattr(encoder, "cls_token", None) is not None:
        return "cls"
    return "avg_fc_norm" if hasattr(encoder, "forward_unfused") else "avg"


def encoder_tokens(encoder: nn.Module, images: Tensor, pool: Pool) -> Tensor:
    """The tokens ``pool`` reads: ``forward_unfused`` for ``avg_fc_norm``, else ``forward_features``.

    Raises:
        ValueError: ``avg_fc_norm`` for an encoder without ``forward_unfused``.
    """
    if pool != "avg_fc_norm":
        return cast(FeatureEncoder, encoder).forward_features(images)
    forward_unfused = getattr(encoder, "forward_unfused", None)
    if forward_unfused is None:
        raise ValueError(f"pool='avg_fc_norm' needs a ConViT encoder, got {type(encoder).__name__}; use 'cls' or 'avg'")
    return forward_unfused(images)


def pool_tokens(encoder: nn.Module, tokens: Tensor, pool: Pool) -> Tensor:
    """One vector per image from the encoder's output tokens ``[B, P + L, D]`` -> ``[B, D]``.

    ``cls``: the class token (MAE's linear-probe feature); ``avg``: the mean of the patch tokens;
    ``avg_fc_norm``: the mean of the patch tokens normalised by a fresh ``fc_norm`` (a LayerNorm
    with unit weight and zero bias, eps 1e-6, frozen as in a linear probe), for the tokens of
    ``encoder_tokens`` (ConViT: no fusion, no final norm).

    Raises:
        ValueError: ``cls`` for an encoder without class token, or an unknown pool.
    """
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    if pool == "cls":
        if getattr(encoder, "cls_token", None) is None:
            raise ValueError("this encoder has no class token; use pool='avg_fc_norm' or 'avg'")
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, prefix:].mean(dim=1)
    if pool == "avg_fc_norm":
        mean = tokens[:, prefix:].float().mean(dim=1)
        return F.layer_norm(mean, mean.shape[-1:], eps=_FC_NORM_EPS)
    raise ValueError(f"unknown pool {pool!r}; choose 'cls', 'avg' or 'avg_fc_norm'")


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Items ``rank, rank + world, ...`` of ``n``, padded by wrap-around to ``ceil(n / world)``
    so every process runs the same number of batches."""
    per_rank = -(-n // world)
    return [(rank + i * world) % n for i in range(per_rank)]


def interleave_shards(shards: Tensor, n: int) -> Tensor:
    """Undo ``shard_indices``: ``[world, per_rank, ...]`` gathered shards -> ``[n, ...]`` in item order."""
    return shards.transpose(0, 1).reshape(-1, *shards.shape[2:])[:n]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    pool: Pool | None = None,
    normalize: nn.Module | None = None,
    num_workers: int = 0,
    progress: bool = True,
    shard: bool = True,
) -> tuple[Tensor, Tensor]:
    """Frozen features of every image of a data set.

    The encoder runs in eval mode without gradients (bf16 autocast on GPUs that support it) and is
    put back in its previous mode afterwards, so it can be called in the middle of training. With
    an initialised process group and ``shard=True`` each process encodes a shard and the results
    are all-gathered (every process must call it); ``shard=False`` encodes everything locally.

    Args:
        encoder: ``forward_features(x) -> [B, P + L, D]`` with ``P = num_prefix_tokens`` (dmjd, timm).
        dataset: items ``(image [C, H, W] in [0, 1], label, ...)``.
        pool: see ``pool_tokens``; None = ``default_pool(encoder)``.
        normalize: applied on the device to each batch (the encoder's mean/std).

    Returns:
        ``(features float32[N, D], labels int64[N])`` on the CPU, in data set order.
    """
    device = torch.device(device)
    pool = pool or default_pool(encoder)
    rank, world = _world() if shard else (0, 1)
    n = len(dataset)  # type: ignore[arg-type]
    local = Subset(dataset, shard_indices(n, rank, world)) if world > 1 else dataset
    loader = DataLoader(local, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    batches = tqdm(loader, desc="features", leave=False, disable=not bars_shown(progress) or rank != 0)
    features, label_t = encode_batches(encoder, batches, device, pool, normalize)
    if world > 1:
        features = interleave_shards(_all_gather(features), n)
        label_t = interleave_shards(_all_gather(label_t), n)
    return features.cpu(), label_t.cpu()


@torch.no_grad()
def encode_batches(
    encoder: nn.Module,
    batches: Iterable[Sequence],
    device: torch.device,
    pool: Pool,
    normalize: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Pooled features of batches ``(images [B, C, H, W] in [0, 1] (float, or uint8 in [0, 255]), labels, ...)``.

    The encoder runs in eval mode (bf16 autocast where supported) and is put back in its previous
    mode afterwards. Returns ``(float32[N, D], int64[N])`` on ``device``.
    """
    normalize = normalize.to(device) if normalize is not None else None
    amp = autocast_dtype("auto", device)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        for images, targets, *_ in batches:
            x = images.to(device, non_blocking=True)
            x = x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x  # as v2.ToDtype(scale=True)
            if normalize is not None:
                x = normalize(x)
            with autocast:
                tokens = encoder_tokens(encoder, x, pool)
            feats.append(pool_tokens(encoder, tokens, pool).float())
            labels.append(torch.as_tensor(targets).to(device))
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def _all_gather(tensor: Tensor) -> Tensor:
    """Stack one equally shaped tensor from every process: ``[world, ...]``."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.stack(out)
