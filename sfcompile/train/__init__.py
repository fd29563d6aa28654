"""Training: `train` runs SparseForge + distillation on a sparsified model; `TrainConfig` configures it."""

from sfcompile.train.config import TrainConfig, TrainConfigError, parse_tokens
from sfcompile.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "parse_tokens", "train"]
