"""ABMIL (Ilse et al. 2018) in the flavour used on WSI features by CLAM and ZoomMIL.

``Linear(D, 512)+ReLU+Dropout``, gated attention (hidden 256) with a softmax over instances,
the attention-weighted mean, ``Linear(512, C)``. Equivalent to CLAM-SB without its
instance clustering loss.
"""

from __future__ import annotations

import torch
from torch import nn

from zoommil.models.attention import GatedAttention, attention_pool
from zoommil.models.bag import Coords, Feats, highest


class ABMIL(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        hidden: int = 512,
        attn_hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, n_heads=1, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        h = self.fc(highest(feats, self.in_dim, self))
        pooled, _ = attention_pool(h, self.attention(h))
        return self.classifier(pooled)

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """Softmax attention weights over the instances: [N]."""
        h = self.fc(highest(feats, self.in_dim, self))
        return torch.softmax(self.attention(h)[0, :, 0], dim=0)
