"""TransMIL (Shao et al. 2021): a two-layer Nystrom transformer with a positional conv (PPEG).

``Linear(D, 512)+ReLU``; the N tokens are padded to a square ``ceil(sqrt N)^2`` by repeating
the first tokens (as the reference does), a learnable CLS token is prepended, then
TransLayer -> PPEG -> TransLayer -> LayerNorm -> ``Linear(512, C)`` on the CLS token.
TransLayer is ``x + NystromAttention(LayerNorm(x))`` (8 heads of 64, 256 landmarks, 6 pinv
iterations, depthwise residual conv on V, dropout 0.1), with no feed-forward block.
PPEG adds depthwise 7x7, 5x5 and 3x3 convolutions (plus identity) on the H x W token grid
(row-major token order); the CLS token passes through untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from zoommil.models.bag import Coords, Feats, highest
from zoommil.models.nystrom import NystromAttention


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom self-attention (no FFN, as in TransMIL)."""

    def __init__(
        self, dim: int = 512, heads: int = 8, num_landmarks: int = 256, **kwargs: Any
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim=dim, heads=heads, dim_head=dim // heads, num_landmarks=num_landmarks, **kwargs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: multi-kernel depthwise convs on the token grid."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = x.shape
        cls_token, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        hidden: int = 512,
        heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        layer_kwargs = dict(pinv_iterations=pinv_iterations, residual=True, dropout=dropout)
        self.layer1 = TransLayer(hidden, heads, num_landmarks, **layer_kwargs)
        self.ppeg = PPEG(hidden)
        self.layer2 = TransLayer(hidden, heads, num_landmarks, **layer_kwargs)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, n_classes)

    def _tokens(self, feats: Feats) -> tuple[torch.Tensor, int, int]:
        """CLS + square-padded tokens [1, 1 + side^2, hidden], grid side, and N."""
        h = self.fc(highest(feats, self.in_dim, self))
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:
            repeat = torch.arange(extra, device=h.device) % n
            h = torch.cat([h, h[:, repeat]], dim=1)
        return torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1), side, n

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        x, side, _ = self._tokens(feats)
        x = self.layer2(self.ppeg(self.layer1(x), side))
        return self.classifier(self.norm(x)[:, 0])

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """The CLS token's attention in the last layer over the N instances: [N], sums to 1.

        An instance repeated by the square padding gets the mean of its copies' attention,
        not their sum: summed, the first rows (the ones padding repeats) had about twice the
        weight of the others for that reason alone, and a heatmap showed the padding, not the
        tissue (review H2). The CLS token's attention to itself is left out and the rest
        renormalised.
        """
        x, side, n = self._tokens(feats)
        x = self.ppeg(self.layer1(x), side)
        row = self.layer2.attn.attention_row(self.layer2.norm(x), row=0)[0, 1:]
        scores = row[:n].clone()
        extra = row.shape[0] - n
        if extra:
            copies = torch.arange(extra, device=row.device) % n
            scores.index_add_(0, copies, row[n:])
            occurrences = torch.ones_like(scores).index_add_(0, copies, torch.ones_like(row[n:]))
            scores = scores / occurrences
        return scores / scores.sum().clamp_min(torch.finfo(scores.dtype).tiny)
