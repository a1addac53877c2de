"""Training and evaluation shared by every model: data, loop, checkpoints and metrics."""

from zoommil.training.config import MethodSpec, TrainConfig, load_config, resolve_method
from zoommil.training.evaluation import evaluate_checkpoint
from zoommil.training.metrics import classification_metrics
from zoommil.training.trainer import train

__all__ = [
    "MethodSpec",
    "TrainConfig",
    "classification_metrics",
    "evaluate_checkpoint",
    "load_config",
    "resolve_method",
    "train",
]
