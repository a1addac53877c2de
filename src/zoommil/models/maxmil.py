"""MaxMIL: classify every instance, let the most confident one speak for the bag.

As CLAM's ``MIL_fc`` / ``MIL_fc_mc``: a shared ``Linear(D, 512)+ReLU+Dropout`` and a
``Linear(512, C)`` instance classifier. Binary bags take the instance with the highest
positive-class probability; multi-class bags take the argmax over all (instance, class)
softmax entries. The chosen instance's logits are the bag logits (and feed the CE loss).
"""

from __future__ import annotations

import torch
from torch import nn

from zoommil.models.bag import Coords, Feats, highest


class MaxMIL(nn.Module):
    def __init__(
        self, in_dim: int = 1024, n_classes: int = 2, hidden: int = 512, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes)

    def instance_logits(self, feats: Feats) -> torch.Tensor:
        """Logits of every instance of the highest magnification: [N, C]."""
        return self.classifier(self.fc(highest(feats, self.in_dim, self)[0]))

    def _instance_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per instance, the probability that decides the max: [N]."""
        probs = torch.softmax(logits, dim=1)
        if self.n_classes == 2:
            return probs[:, 1]
        return probs.max(dim=1).values

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        logits = self.instance_logits(feats)
        top = torch.argmax(self._instance_scores(logits.detach()))
        return logits[top].unsqueeze(0)

    def attention_scores(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """Each instance's probability of `attention_class` (two classes: the positive one,
        whose max decides the bag; more: the predicted class). Not each instance's own top
        class: patches confidently of another class were as bright as the evidence for the
        prediction (review H2)."""
        logits = self.instance_logits(feats)
        top = torch.argmax(self._instance_scores(logits))
        return torch.softmax(logits, dim=1)[:, self.attention_class(logits[top].unsqueeze(0))]

    def attention_class(self, logits: torch.Tensor) -> int:
        """The class `attention_scores` is of, given the bag logits [1, C]."""
        return 1 if self.n_classes == 2 else int(logits.argmax())
