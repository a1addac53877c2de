"""MS-MIL (Hashimoto et al. 2020) on frozen features: one attention bag over all magnifications.

Each magnification has its own ``Linear(D, 512)+ReLU+Dropout``; the instances of all
magnifications are concatenated along the instance axis and pooled by one gated attention
(hidden 256) into ``Linear(512, C)``. This is an adaptation, not the reference's head: MS-DA-MIL
fine-tunes one CNN per scale and shares one ``fc`` and a plain (ungated) attention
``Linear(512, 128)+Tanh+Linear(128, 1)`` over the instances of all scales. On one frozen
encoder's features the per-scale specialisation can only live in the first layer, hence one
``fc`` per magnification, and the attention is ABMIL's gated one, as for the other baselines.

The domain-adversarial branch of MS-DA-MIL needs domain labels (centre or scanner) and is off
by default (``n_domains=0``). With ``n_domains > 0`` a ``Linear(512, n_domains)`` domain
classifier sees every instance embedding through an adaptive gradient reversal layer: the
reversed gradient of instance i is scaled by ``lambda * (max_j a_j - a_i)``, so highly attended
instances are pushed less towards domain invariance. Pass ``domain`` to `training_loss` to
add its cross-entropy; without a domain label the loss is plain CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.models.attention import GatedAttention
from zoommil.models.bag import Coords, Feats, as_list, check_bag


class _AdaptiveGradReverse(torch.autograd.Function):
    """Identity forward; backward ``-lambda * (max a - a_i) * grad`` per instance."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        scale = (weight.max() - weight).unsqueeze(-1)
        return -ctx.lambd * scale * grad, None, None


class MSMIL(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        n_scales: int = 3,
        hidden: int = 512,
        attn_hidden: int = 256,
        dropout: float = 0.25,
        n_domains: int = 0,
        domain_lambda: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.n_scales = n_scales
        self.domain_lambda = domain_lambda
        self.fcs = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            for _ in range(n_scales)
        )
        self.attention = GatedAttention(hidden, attn_hidden, n_heads=1, dropout=dropout)
        self.classifier = nn.Linear(hidden, n_classes)
        self.domain_classifier = nn.Linear(hidden, n_domains) if n_domains > 0 else None

    def _embed(self, feats: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        """All instances of all magnifications [1, sum N_m, hidden] and their softmax weights."""
        feats = as_list(feats, self)
        if len(feats) != self.n_scales:
            raise ZoomMILError(
                f"MS-MIL was built for {self.n_scales} magnifications but got {len(feats)}"
            )
        for f in feats:
            check_bag(f, self.in_dim)
        h = torch.cat([fc(f) for fc, f in zip(self.fcs, feats, strict=True)], dim=1)
        return h, torch.softmax(self.attention(h), dim=1)

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        h, weights = self._embed(feats)
        return self.classifier((weights * h).sum(dim=1))

    def training_loss(
        self,
        feats: Feats,
        coords: Coords,
        label: torch.Tensor,
        domain: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, CE [+ domain CE through the adaptive gradient reversal when enabled])."""
        h, weights = self._embed(feats)
        logits = self.classifier((weights * h).sum(dim=1))
        loss = F.cross_entropy(logits, label.view(1))
        if self.domain_classifier is not None and domain is not None:
            reversed_h = _AdaptiveGradReverse.apply(
                h[0], weights[0, :, 0].detach(), self.domain_lambda
            )
            domain_logits = self.domain_classifier(reversed_h)
            target = domain.view(1).expand(domain_logits.shape[0])
            loss = loss + F.cross_entropy(domain_logits, target)
        return logits, loss

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """Softmax attention over all instances, magnifications concatenated lowest first."""
        return self._embed(feats)[1][0, :, 0]
