"""Data: data sets (embedded sample, image folders, torchvision sets), transforms, batching."""

from dmjd.data.datasets import (
    DATASET_NAMES,
    DataError,
    ImageFiles,
    SeededSamples,
    build_dataset,
    embedded_sample,
)
from dmjd.data.sampler import EpochBatchSampler
from dmjd.data.transforms import Normalize, default_mean_std, eval_transform, pretrain_transform

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "EpochBatchSampler",
    "ImageFiles",
    "Normalize",
    "SeededSamples",
    "build_dataset",
    "default_mean_std",
    "embedded_sample",
    "eval_transform",
    "pretrain_transform",
]
