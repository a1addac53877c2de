"""MeanMIL: the MaxMIL embedding followed by a mean over instances (no official reference).

``Linear(D, 512)+ReLU+Dropout``, mean over the bag, ``Linear(512, C)``: the same capacity as
the other baselines, so it isolates what attention or selection adds over plain averaging.
"""

from __future__ import annotations

import torch
from torch import nn

from zoommil.models.bag import Coords, Feats, highest


class MeanMIL(nn.Module):
    def __init__(
        self, in_dim: int = 1024, n_classes: int = 2, hidden: int = 512, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        h = self.fc(highest(feats, self.in_dim, self))
        return self.classifier(h.mean(dim=1))
