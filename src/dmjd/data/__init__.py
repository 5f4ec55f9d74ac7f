"""Data: data sets (embedded sample, image folders, torchvision sets, WebDataset shards), transforms,
batching, the device-resident pipeline (uint8 set on the device, batched RandomResizedCrop + flip
there), and ``training_data``, which picks a run's path from its config."""

from dmjd.data.datasets import (
    DATASET_NAMES,
    DataError,
    ImageFiles,
    SeededSamples,
    build_dataset,
    embedded_sample,
)
from dmjd.data.arrays import ImageArray, decoded_nbytes, load_image_array, open_source, to_image_array
from dmjd.data.pipeline import Batches, DeviceBatches, LoaderBatches, choose_pipeline, device_budget_bytes, endless
from dmjd.data.resample import pad_batch, random_resized_crop_params, resized_crop
from dmjd.data.sampler import EpochBatchSampler, epoch_permutation
from dmjd.data.transforms import Normalize, default_mean_std, eval_transform, pretrain_transform
from dmjd.data.build import TrainingData, training_data
from dmjd.data.photos import packaged_photos, photo_crops, write_photo_folder
from dmjd.data.profile import DataProfile, folder_layout, profile_data
from dmjd.data.split import stratified_split

__all__ = [
    "Batches",
    "DATASET_NAMES",
    "DeviceBatches",
    "ImageArray",
    "LoaderBatches",
    "choose_pipeline",
    "device_budget_bytes",
    "endless",
    "epoch_permutation",
    "decoded_nbytes",
    "load_image_array",
    "open_source",
    "pad_batch",
    "random_resized_crop_params",
    "resized_crop",
    "to_image_array",
    "DataProfile",
    "packaged_photos",
    "photo_crops",
    "write_photo_folder",
    "folder_layout",
    "profile_data",
    "stratified_split",
    "TrainingData",
    "training_data",
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
