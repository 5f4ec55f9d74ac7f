"""Online monitoring: a cheap validation signal of the encoder while it pre-trains.

Every few epochs the trainer calls the monitor with its encoder; it extracts frozen features of a
labelled train/test split and returns the weighted-kNN and fast linear-probe top-1 accuracies.
The splits are built once, in the constructor, so a missing data set fails before training starts.
"""

from __future__ import annotations

import torch
from torch import nn

from dmjd.config import Config
from dmjd.data import Normalize, eval_transform
from dmjd.eval.features import Pool, extract_features, labelled_splits
from dmjd.eval.knn import knn_top1
from dmjd.eval.linear_probe import logistic_regression_top1
from dmjd.eval.loading import InputSpec


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
        num_workers: data-loader processes.

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
    ) -> None:
        transform = eval_transform(img_size, in_chans)
        self.train_set, self.test_set = labelled_splits(
            data_name, data_path, transform, transform, download=download, max_images=max_images
        )
        self.normalize = Normalize(mean, std)
        self.device, self.batch_size, self.num_workers = torch.device(device), batch_size, num_workers
        self.k, self.temperature, self.pool, self.linprobe = k, temperature, pool, linprobe

    @classmethod
    def from_config(cls, cfg: Config, max_images: int | None = 5000, device: str | torch.device = "cpu") -> OnlineMonitor:
        """A monitor on the labelled splits of the run's own data set (``cfg.data``)."""
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
            num_workers=cfg.data.num_workers,
        )

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """Evaluate ``encoder`` (any mode; it is put back in its mode afterwards)."""
        common = dict(batch_size=self.batch_size, device=self.device, pool=self.pool, normalize=self.normalize,
                      num_workers=self.num_workers, progress=False, shard=False)  # fmt: skip
        train_x, train_y = extract_features(encoder, self.train_set, **common)
        test_x, test_y = extract_features(encoder, self.test_set, **common)
        result = {"knn_top1": knn_top1(train_x, train_y, test_x, test_y, self.k, self.temperature)}
        if self.linprobe:
            result["linprobe_top1"] = logistic_regression_top1(train_x, train_y, test_x, test_y)
        return result
