"""Gated attention (Ilse et al. 2018), shared by ZoomMIL, ABMIL, CLAM-SB and MS-MIL."""

from __future__ import annotations

import torch
from torch import nn


class GatedAttention(nn.Module):
    """Scores instances: ``w^T (tanh(V h) * sigmoid(U h))``; returns raw scores [B, N, n_heads].

    Softmax over instances is left to the caller, because some callers need the raw scores
    (CLAM's instance sampling, ZoomMIL's top-K).
    """

    def __init__(self, dim: int = 512, hidden: int = 256, n_heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.sigmoid_branch = nn.Sequential(
            nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout)
        )
        self.score = nn.Linear(hidden, n_heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(self.tanh_branch(h) * self.sigmoid_branch(h))


def attention_pool(h: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over instances (dim 1) and weighted sum: h [B, N, D], scores [B, N, 1] -> [B, D]."""
    weights = torch.softmax(scores, dim=1)
    return (weights * h).sum(dim=1), weights
