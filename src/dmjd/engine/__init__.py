"""Training engine: a run's training data, optimizer and LR rules, metrics, distributed set-up, the trainer."""

from dmjd.engine.optim import effective_lr, lr_at, param_groups
from dmjd.engine.trainer import (
    NonFiniteLossError,
    OutputDirError,
    Pretrainer,
    ResourceError,
    TrainingInterrupted,
    pretrain,
    resume_config,
)
from dmjd.engine.training_data import TrainingData, training_data
from dmjd.io.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "OutputDirError",
    "Pretrainer",
    "ResourceError",
    "TrainingData",
    "TrainingInterrupted",
    "effective_lr",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "param_groups",
    "pretrain",
    "resume_config",
    "save_checkpoint",
    "training_data",
]
