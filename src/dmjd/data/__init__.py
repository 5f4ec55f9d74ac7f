"""Data, in one direction: sources -> in-memory arrays or streams -> batches.

* Sources (``base``, ``decode``, ``datasets``, ``shards``): the embedded sample, Fashion-MNIST IDX
  files, CIFAR/STL-10, image folders and WebDataset shards, as map-style data sets of
  ``(image, label, skipped)``, each image decoded upright and opaque by ``decode.to_mode``;
  ``profile``, ``split`` and ``photos`` describe or make sources, and ``shard_writer`` writes one as
  shards.
* Arrays and streams (``arrays``, ``streaming``): a source decoded once into a uint8 array, or shards
  streamed by loader workers.
* Batches (``sampler``, ``resample``, ``transforms``, ``pipeline``): the order and seeds of an
  epoch, and the two pre-training paths behind one interface: the device-resident pipeline (uint8 set
  on the device, batched RandomResizedCrop + flip there) and DataLoader workers.

Which path a run's config gets is ``dmjd.engine.training_data``.
"""

from dmjd.data.arrays import ImageArray, decoded_nbytes, load_image_array, open_source, to_image_array
from dmjd.data.base import DataError, StandInImages
from dmjd.data.datasets import DATASET_NAMES, ImageFiles, build_dataset, embedded_sample
from dmjd.data.decode import BACKGROUNDS, to_mode
from dmjd.data.photos import packaged_photos, photo_crops, write_photo_folder
from dmjd.data.pipeline import Batches, DeviceBatches, LoaderBatches, choose_pipeline, device_budget_bytes, endless
from dmjd.data.profile import DataProfile, folder_layout, profile_data
from dmjd.data.resample import pad_batch, random_resized_crop_params, resized_crop
from dmjd.data.sampler import EpochBatchSampler, SeededSamples, epoch_permutation
from dmjd.data.split import stratified_split
from dmjd.data.transforms import Normalize, default_mean_std, eval_transform, pretrain_transform

__all__ = [
    "BACKGROUNDS",
    "DATASET_NAMES",
    "Batches",
    "DataError",
    "DataProfile",
    "DeviceBatches",
    "EpochBatchSampler",
    "ImageArray",
    "ImageFiles",
    "LoaderBatches",
    "Normalize",
    "SeededSamples",
    "StandInImages",
    "build_dataset",
    "choose_pipeline",
    "decoded_nbytes",
    "default_mean_std",
    "device_budget_bytes",
    "embedded_sample",
    "endless",
    "epoch_permutation",
    "eval_transform",
    "folder_layout",
    "load_image_array",
    "open_source",
    "packaged_photos",
    "pad_batch",
    "photo_crops",
    "pretrain_transform",
    "profile_data",
    "random_resized_crop_params",
    "resized_crop",
    "stratified_split",
    "to_image_array",
    "to_mode",
    "write_photo_folder",
]
