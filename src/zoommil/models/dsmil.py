"""DSMIL (Li et al. 2021): a max-instance stream and a critical-instance attention stream.

Instance stream: ``Linear(K, C)`` scores every instance. Bag stream: per class c the critical
instance ``m_c = argmax_i score[i, c]``; queries ``q = Linear(K, 128)+ReLU+Linear(128, 128)+Tanh``;
attention ``A = softmax_i(Q q_m^T / sqrt(128))`` [N, C]; bag embedding ``B = A^T V`` [C, K] with
V the instance features; ``Conv1d(C, C, kernel_size=K)`` gives the C bag logits.
Loss: ``0.5 CE(bag logits) + 0.5 CE(max_i instance scores)`` (softmax CE, the multi-class
adaptation of the reference's BCE).

Two classes (``binary_one_class``, the default): one stream for the second (positive) class
only, as the reference trains CAMELYON16 (``--num_classes=1``: a negative bag is all zeros).
The logits are ``[0, z]``, so softmax CE on them is the reference's BCE on ``z``. Two streams
would also pick a critical "normal" instance and push the normal score of every patch of a
tumour slide down, against the MIL assumption that a positive bag holds negative instances.

Initialisation: every Linear and Conv1d weight orthogonal and every bias zero, as the reference
trains (``apply_sparse_init`` in its ``train.py``); torch's default uniform init gives the
critical-instance queries a different starting geometry.

Multi-scale (``n_scales=2``, the reference's "tree" features): the model reads the lowest and
the highest magnification; every highest-magnification feature is concatenated with its
parent's lowest-magnification feature (parent row ``j // (N_high / N_low)``, the feature-file
contract), so instances are 2*D-dimensional. ``n_scales=1`` uses the highest only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.models.bag import Coords, Feats, as_list, check_bag


def concat_parent_features(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``[h_high_j, h_low_parent(j)]`` per high row j: [N_low, D], [N_high, D] -> [N_high, 2D]."""
    n_low, n_high = low.shape[0], high.shape[0]
    if n_low == 0 or n_high % n_low:
        raise ZoomMILError(
            f"magnifications are not aligned: {n_high} high-magnification rows is not a "
            f"multiple of {n_low} low-magnification rows"
        )
    parent = torch.arange(n_high, device=high.device) // (n_high // n_low)
    return torch.cat([high, low[parent]], dim=1)


def _orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for Linear and Conv1d layers (the reference's init)."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DSMIL(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        n_scales: int = 2,
        q_dim: int = 128,
        passing_v: bool = False,
        dropout_v: float = 0.0,
        binary_one_class: bool = True,
    ) -> None:
        super().__init__()
        if n_scales not in (1, 2):
            raise ZoomMILError(f"DSMIL uses 1 or 2 magnifications, not {n_scales}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.n_scales = n_scales
        self.q_dim = q_dim
        self.one_class = binary_one_class and n_classes == 2
        streams = 1 if self.one_class else n_classes
        dim = in_dim * n_scales
        self.instance_classifier = nn.Linear(dim, streams)
        self.q = nn.Sequential(nn.Linear(dim, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
        self.v = (
            nn.Sequential(nn.Dropout(dropout_v), nn.Linear(dim, dim), nn.ReLU())
            if passing_v
            else nn.Identity()
        )
        self.fcc = nn.Conv1d(streams, streams, kernel_size=dim)
        self.apply(_orthogonal_init)

    def instances(self, feats: Feats) -> torch.Tensor:
        """The bag's instances [N, K]: highest-mag features, with parents if multi-scale."""
        feats = as_list(feats, self)
        for f in feats:
            check_bag(f, self.in_dim)
        if self.n_scales == 1:
            return feats[-1][0]
        if len(feats) < 2:
            raise ZoomMILError(
                "DSMIL was built multi-scale (n_scales=2) and needs the lowest and the highest "
                f"magnification, but got {len(feats)}"
            )
        return concat_parent_features(feats[0][0], feats[-1][0])

    def _streams(self, feats: Feats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(instance scores [N, S], attention [N, S], bag scores [1, S]) for S streams."""
        h = self.instances(feats)
        scores = self.instance_classifier(h)
        critical = torch.argmax(scores, dim=0)  # [S]
        queries = self.q(h)
        attn = torch.softmax(queries @ queries[critical].T / math.sqrt(self.q_dim), dim=0)
        bag = attn.T @ self.v(h)  # [S, K]
        return scores, attn, self.fcc(bag.unsqueeze(0)).view(1, -1)

    def _logits(self, scores: torch.Tensor) -> torch.Tensor:
        """[1, S] stream scores -> [1, C] logits (one stream: ``[0, z]``)."""
        return torch.cat([torch.zeros_like(scores), scores], dim=1) if self.one_class else scores

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        return self._logits(self._streams(feats)[2])

    def training_loss(
        self, feats: Feats, coords: Coords, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logits, 0.5 CE(bag) + 0.5 CE(max-instance scores))."""
        scores, _, bag = self._streams(feats)
        label = label.view(1)
        logits = self._logits(bag)
        max_scores = self._logits(scores.max(dim=0).values.unsqueeze(0))
        loss = 0.5 * F.cross_entropy(logits, label) + 0.5 * F.cross_entropy(max_scores, label)
        return logits, loss

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """Attention over the (highest-magnification) instances: [N], of the positive class
        with one stream, else of the predicted class."""
        _, attn, bag = self._streams(feats)
        return attn[:, 0] if self.one_class else attn[:, int(bag.argmax())]

    def attention_class(self, logits: torch.Tensor) -> int:
        """The class `attention_scores` is of, given the bag logits [1, C]."""
        return 1 if self.one_class else int(logits.argmax())
