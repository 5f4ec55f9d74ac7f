"""dmjd: Disjoint Masking with Joint Distillation for efficient masked image modeling."""

__version__ = "0.1.0"
