"""Training and evaluation shared by every model: data, loop, checkpoints and metrics.

The names below are loaded on first use: `zoommil predict` and `zoommil profile` import
``zoommil.training.checkpoint`` and should not pay for the trainer's imports (pandas, and
torch._dynamo through torch.optim), about 1.5 s of CPU per process.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MethodSpec": "zoommil.training.config",
    "TrainConfig": "zoommil.training.config",
    "load_config": "zoommil.training.config",
    "resolve_method": "zoommil.training.config",
    "evaluate_checkpoint": "zoommil.training.evaluation",
    "classification_metrics": "zoommil.training.metrics",
    "train": "zoommil.training.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoommil.training' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
