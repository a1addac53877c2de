"""CLAM-SB (Lu et al. 2021): gated attention MIL plus an instance clustering loss.

The bag branch is ABMIL's (``Linear(D, 512)+ReLU+Dropout``, gated attention hidden 256,
``Linear(512, C)``). One ``Linear(512, 2)`` instance classifier per class is trained on
pseudo-labels taken from the attention ranking:

- true class c: the k most attended instances are positives (1), the k least attended are
  negatives (0), scored by classifier c;
- every other class c' (the "subtyping" variant, on by default for C > 2): the k most attended
  instances are negatives (0) under classifier c', and the summed loss is divided by C.

Total loss = ``bag_weight * CE(bag) + (1 - bag_weight) * instance loss`` (bag_weight 0.7,
k_sample 8). The instance loss is the smooth top-1 SVM (``inst_loss="svm"``, Berrada et al.
2018, alpha 1, tau 1), as in the CLAM paper and the reference's documented commands
(``--inst_loss svm``); ``inst_loss="ce"`` is the reference code's default. Unlike the
reference code, k = min(k_sample, N), so bags smaller than k_sample work, and when 2k > N the
ranking is split in two halves so no instance is both a positive and a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.models.attention import GatedAttention, attention_pool
from zoommil.models.bag import Coords, Feats, highest


def clam_instance_indices(
    scores: torch.Tensor, k_sample: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pseudo-labelled instances for the in-class loss: (positives, negatives, k).

    ``k = min(k_sample, N)``; positives are the top-k by attention, negatives the bottom-k;
    when 2k > N they are the top ceil(N/2) and bottom floor(N/2), so the two never overlap.
    """
    n = scores.numel()
    k = min(k_sample, n)
    order = torch.argsort(scores, descending=True)
    k_pos = min(k, (n + 1) // 2) if 2 * k > n else k
    k_neg = min(k, n - k_pos)
    return order[:k_pos], order[n - k_neg :], k


INSTANCE_LOSSES = ("svm", "ce")


def smooth_top1_svm(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """Smooth top-1 SVM loss (Berrada et al. 2018, k = 1), mean over rows:
    ``tau * logsumexp((s + alpha * [j != y]) / tau) - s_y``.

    Why: the multi-class hinge with margin alpha, smoothed by tau; it tends to the hard hinge
    ``max_j(s_j + alpha [j != y]) - s_y`` as tau -> 0 and is CE for alpha = 0, tau = 1.
    """
    margin = alpha * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
    smooth_max = tau * torch.logsumexp((logits + margin) / tau, dim=1)
    return (smooth_max - logits.gather(1, target[:, None])[:, 0]).mean()


class CLAMSB(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        hidden: int = 512,
        attn_hidden: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool | None = None,
        inst_loss: str = "svm",
    ) -> None:
        super().__init__()
        if inst_loss not in INSTANCE_LOSSES:
            raise ZoomMILError(
                f"CLAM-SB inst_loss must be one of {INSTANCE_LOSSES}, got {inst_loss!r}"
            )
        self.inst_loss = smooth_top1_svm if inst_loss == "svm" else F.cross_entropy
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.k_sample = k_sample
        self.bag_weight = bag_weight
        self.subtyping = n_classes > 2 if subtyping is None else subtyping
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, n_heads=1, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))

    def _embed(self, feats: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(highest(feats, self.in_dim, self))
        return h, self.attention(h)

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        h, scores = self._embed(feats)
        pooled, _ = attention_pool(h, scores)
        return self.classifier(pooled)

    def instance_loss(self, h: torch.Tensor, scores: torch.Tensor, label: int) -> torch.Tensor:
        """Instance clustering loss of one bag: h [N, hidden], raw attention scores [N]."""
        scores = scores.detach()
        pos, neg, k = clam_instance_indices(scores, self.k_sample)
        total = h.new_zeros(())
        for c, classifier in enumerate(self.instance_classifiers):
            if c == label:
                idx = torch.cat([pos, neg])
                target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
            elif self.subtyping:
                idx = torch.topk(scores, k).indices
                target = torch.zeros_like(idx)
            else:
                continue
            total = total + self.inst_loss(classifier(h[idx]), target)
        if self.subtyping:
            total = total / self.n_classes
        return total

    def training_loss(
        self, feats: Feats, coords: Coords, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logits [1, C], bag_weight * CE + (1 - bag_weight) * instance loss)."""
        h, scores = self._embed(feats)
        pooled, _ = attention_pool(h, scores)
        logits = self.classifier(pooled)
        bag_loss = F.cross_entropy(logits, label.view(1))
        inst_loss = self.instance_loss(h[0], scores[0, :, 0], int(label.view(-1)[0]))
        return logits, self.bag_weight * bag_loss + (1 - self.bag_weight) * inst_loss

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """Softmax attention weights over the instances: [N]."""
        _, scores = self._embed(feats)
        return torch.softmax(scores[0, :, 0], dim=0)
