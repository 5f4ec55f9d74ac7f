"""Configuration: schema (every key and its rules), presets, and loading with overrides."""

from dmjd.config.loading import (
    ConfigError,
    available_presets,
    config_from_dict,
    config_to_yaml,
    load_config,
)
from dmjd.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    OptimConfig,
    TargetConfig,
    TrainConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "TargetConfig",
    "TrainConfig",
    "available_presets",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
]
