"""Training engine: a run's parts and training data from its config, optimizer and LR rules, time
budgets, metrics, distributed set-up, resuming, fault handling, the run folder, and the trainer."""

from dmjd.engine.faults import NonFiniteLossError, ResourceError, TrainingInterrupted
from dmjd.engine.optim import build_optimizer, effective_lr, lr_at, param_groups
from dmjd.engine.resume import resume_config
from dmjd.engine.run_dir import OutputDirError
from dmjd.engine.trainer import Pretrainer, pretrain
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
    "build_optimizer",
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
