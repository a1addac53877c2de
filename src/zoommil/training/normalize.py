"""Per-dimension feature standardisation, fitted on the training bags only.

Why: ImageNet layer3 features are well scaled, but other encoders are not: the demo's seeded
random ResNet-50 gives features with mean ~10 and a per-dimension spread of ~1.8 across
patches, and no MIL head learns from them at lr 1e-4. ``feature_norm: standardize`` in the
train config subtracts the training set's mean and divides by its standard deviation; the
statistics are stored in the checkpoint so `zoommil evaluate` and `zoommil predict` apply
exactly the same transform. The paper presets keep ``none`` (the official code has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class FeatureNorm:
    """``(x - mean) / std`` over the last dimension."""

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def to_config(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> FeatureNorm | None:
        if not data:
            return None
        return cls(
            torch.tensor(data["mean"], dtype=torch.float32),
            torch.tensor(data["std"], dtype=torch.float32),
        )


#: A dimension whose spread over the training rows is below this fraction of the median
#: dimension's (or below ``eps``) counts as constant.
CONSTANT_FRACTION = 1e-3


def fit_feature_norm(feature_sets: Iterable[torch.Tensor], eps: float = 1e-6) -> FeatureNorm:
    """Mean and standard deviation per dimension over every row of ``feature_sets`` ([..., D]).

    A dimension that (nearly) never varies in training is only centred (scale 1, as sklearn's
    StandardScaler does): dividing by its ~0 spread made any slide unlike the training data
    (a dead ReLU channel that fires on a new scanner) thousands of standard deviations out on
    that dimension alone (the demo's random ResNet-50 has 22 such dimensions of 1024).
    """
    total, total_sq, count = None, None, 0
    for x in feature_sets:
        rows = x.reshape(-1, x.shape[-1]).double()
        if total is None:
            total, total_sq = rows.sum(0), (rows * rows).sum(0)
        else:
            total, total_sq = total + rows.sum(0), total_sq + (rows * rows).sum(0)
        count += rows.shape[0]
    if total is None or count == 0:
        raise ValueError("cannot fit a feature normalisation on zero rows")
    mean = total / count
    spread = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    floor = max(eps, CONSTANT_FRACTION * float(spread.median()))
    std = torch.where(spread < floor, torch.ones_like(spread), spread + eps)
    return FeatureNorm(mean.float(), std.float())
