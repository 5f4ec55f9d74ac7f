"""Online monitoring: a cheap validation signal of the encoder while it pre-trains.

Every few epochs the trainer calls the monitor with its encoder; it extracts frozen features of a
labelled train/test split and returns the weighted-kNN and fast linear-probe top-1 accuracies.
The splits are built once, in the constructor, so a missing data set fails before training starts.
When they are small enough (``cache_mib``: Fashion-MNIST's 2 x 5000 images of 1 x 32 x 32 take
10 MiB as uint8) their transformed images are also cached on the monitor's device, so an evaluation
is only batched forward passes: no data-loader workers are spawned and no image is decoded again.
Larger splits (e.g. 2 x 5000 RGB images of 224 px, 1.5 GiB) are read through a DataLoader each time.

Both probes run on the monitor's device: the weighted kNN and ``torch_logistic_regression_top1``
(the same regularised objective as scikit-learn's probe, fitted with full-batch L-BFGS; it matches
``logistic_regression_top1`` on the tests' synthetic problems and costs milliseconds on a GPU, where
scikit-learn's CPU solver took tens of seconds per evaluation on real encoder features).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dmjd.config import Config
from dmjd.data import Normalize, eval_transform
from dmjd.eval.features import (
    Pool,
    default_pool,
    encode_batches,
    extract_features,
    images_in_memory,
    labelled_splits,
)
from dmjd.eval.knn import knn_top1
from dmjd.eval.linear_probe import torch_logistic_regression_top1
from dmjd.eval.loading import InputSpec


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one, as DataLoader counts)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnlineMonitor:
    """``monitor(encoder) -> {"knn_top1": ..., "linprobe_top1": ...}`` (fractions in [0, 1]).

    It runs in the calling process alone (no collective operations), so a distributed trainer can
    call it on its main process only.

    Args:
        data_name: a labelled data set of ``dmjd.data.build_dataset`` with train/test splits
            (``embedded`` is the packaged Fashion-MNIST sample).
        data_path: its folder (ImageFolder root with train/ and val/ or test/).
        img_size, in_chans: the encoder's input.
        mean, std: the encoder's normalisation (the run's ``data.mean``/``data.std`` or defaults).
        max_images: seeded random subset per split, to bound the cost (None = all).
        device: where features are computed.
        batch_size: feature-extraction batch.
        k, temperature: weighted kNN.
        pool: ``cls`` token or ``avg`` of patch tokens; None = ``cls`` when the encoder has one.
        linprobe: also fit the fast logistic-regression probe.
        download: let torchvision download the data set.
        num_workers: data-loader processes (building the cache, or every evaluation without it).
        cache_mib: cache both splits' images as uint8 on ``device`` when they fit in this many MiB
            (0 = never cache).
        background: what transparent pixels become (``data.background``).

    Raises:
        DataError: the data set or its labelled splits are missing.
    """

    def __init__(
        self,
        data_name: str = "embedded",
        data_path: str | None = None,
        img_size: int = 224,
        in_chans: int = 3,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        max_images: int | None = 5000,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        k: int = 20,
        temperature: float = 0.07,
        pool: Pool | None = None,
        linprobe: bool = True,
        download: bool = False,
        num_workers: int = 0,
        cache_mib: int = 512,
        background: str = "white",
    ) -> None:
        transform = eval_transform(img_size, in_chans, background=background)
        self.train_set, self.test_set = labelled_splits(
            data_name, data_path, transform, transform, download=download, max_images=max_images
        )
        self.normalize = Normalize(mean, std)
        self.device, self.batch_size, self.num_workers = torch.device(device), batch_size, num_workers
        self.k, self.temperature, self.pool, self.linprobe = k, temperature, pool, linprobe
        cache_bytes = (len(self.train_set) + len(self.test_set)) * in_chans * img_size**2  # type: ignore[arg-type]
        self.cache: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
        if cache_bytes <= cache_mib * 2**20:
            self.cache = (self._cache_split(self.train_set), self._cache_split(self.test_set))

    def _cache_split(self, dataset: Dataset) -> tuple[Tensor, Tensor]:
        """All transformed images of a split ``uint8[N, C, H, W]`` and labels ``int64[N]``, on the device."""
        return images_in_memory(dataset, self.device, self.batch_size, self.num_workers)

    @classmethod
    def from_config(
        cls, cfg: Config, max_images: int | None = 5000, device: str | torch.device = "cpu", cache_mib: int = 512
    ) -> OnlineMonitor:
        """A monitor on the labelled splits of the run's own data set (``cfg.data``), read with the
        run's ``data.num_workers`` at most one per available core (its splits are small; more
        workers than cores only contend, and DataLoader warns)."""
        spec = InputSpec.from_config(cfg)
        return cls(
            data_name=cfg.data.name,
            data_path=cfg.data.path,
            img_size=spec.img_size,
            in_chans=spec.in_chans,
            mean=spec.mean,
            std=spec.std,
            max_images=max_images,
            device=device,
            download=cfg.data.download,
            num_workers=min(cfg.data.num_workers, available_cores()),
            cache_mib=cache_mib,
            background=cfg.data.background,
        )

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """Evaluate ``encoder`` (any mode; it is put back in its mode afterwards)."""
        return self.probes(self._features(encoder, 0), self._features(encoder, 1))

    def probes(
        self, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], linprobe: bool | None = None
    ) -> dict[str, float]:
        """``{"knn_top1"[, "linprobe_top1"]}`` of the monitor's probes on any features ``(float[N, D],
        labels[N])`` of the train and test splits; ``linprobe`` None follows the monitor's setting."""
        (train_x, train_y), (test_x, test_y) = train, test
        result = {"knn_top1": knn_top1(train_x, train_y, test_x, test_y, self.k, self.temperature)}
        use_linprobe = self.linprobe if linprobe is None else linprobe
        if use_linprobe:
            result["linprobe_top1"] = torch_logistic_regression_top1(train_x, train_y, test_x, test_y)
        return result

    def raw_pixels(self, side: int = 32, linprobe: bool | None = None) -> dict[str, float]:
        """``probes`` on raw pixels (each image normalised, area-resized to at most ``side`` x ``side``,
        flattened): the baselines an encoder should beat."""
        return self.probes(self.pixel_features(0, side), self.pixel_features(1, side), linprobe)

    def pixel_baseline(self, side: int = 32) -> dict[str, float]:
        """``{"pixels_knn_top1": ...}``: the weighted kNN of ``raw_pixels`` alone."""
        return {"pixels_knn_top1": self.raw_pixels(side, linprobe=False)["knn_top1"]}

    def pixel_features(self, split: int, side: int = 32) -> tuple[Tensor, Tensor]:
        """Flattened normalised images ``[N, C * s * s]`` (``s = min(side, image side)``) and labels."""
        batches: Iterable[tuple[Tensor, Tensor]]
        if self.cache is not None:
            images, labels = self.cache[split]
            batches = zip(images.split(self.batch_size), labels.split(self.batch_size))
        else:
            dataset = (self.train_set, self.test_set)[split]
            batches = ((b[0], b[1]) for b in DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers))
        normalize = self.normalize.to(self.device)
        feats, all_labels = [], []
        for images, labels in batches:
            x = images.to(self.device)
            x = normalize(x.float() / 255 if x.dtype == torch.uint8 else x)
            if x.shape[-1] > side:
                x = F.adaptive_avg_pool2d(x, side)
            feats.append(x.flatten(1))
            all_labels.append(labels.to(self.device))
        return torch.cat(feats), torch.cat(all_labels)

    def _features(self, encoder: nn.Module, split: int) -> tuple[Tensor, Tensor]:
        """Features ``[N, D]`` and labels ``[N]`` of split 0 (train) or 1 (test), on the device."""
        pool = self.pool or default_pool(encoder)
        if self.cache is not None:
            images, labels = self.cache[split]
            batches = zip(images.split(self.batch_size), labels.split(self.batch_size))
            return encode_batches(encoder, batches, self.device, pool, self.normalize)
        dataset = (self.train_set, self.test_set)[split]
        feats, labels = extract_features(encoder, dataset, self.batch_size, self.device, pool, self.normalize,
                                         self.num_workers, progress=False, shard=False)  # fmt: skip
        return feats.to(self.device), labels.to(self.device)
