"""The MIL baselines and the model registry: shapes, bag-size extremes, determinism, the
per-model details that are easy to get wrong, and a toy task each model must learn."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from zoommil.errors import ZoomMILError
from zoommil.models import MODEL_NAMES, build_model, default_mags
from zoommil.models.clam import CLAMSB, clam_instance_indices
from zoommil.models.dsmil import DSMIL, concat_parent_features
from zoommil.models.nystrom import NystromAttention, iterative_pinv
from zoommil.models.sparseconvmil import SparseConvMIL
from zoommil.models.transmil import TransMIL

HAVE_ZOOMMIL = importlib.util.find_spec("zoommil.models.zoommil") is not None
BASELINES = [n for n in MODEL_NAMES if n != "zoommil"]
ALL = BASELINES + [
    pytest.param(
        "zoommil",
        marks=pytest.mark.skipif(not HAVE_ZOOMMIL, reason="models/zoommil.py not written yet"),
    )
]
MAGS = [5.0, 10.0]
TOY_DIM = 32
N_CLASSES = 3
STRENGTH = 8.0


def small_model(name: str, in_dim: int = TOY_DIM, **kwargs) -> torch.nn.Module:
    """A model of the paper's widths for a two-magnification (5x, 10x) bag."""
    if name == "sparseconvmil":
        kwargs.setdefault("downsample", 1)
    if name == "zoommil":
        kwargs.setdefault("k", 2)
    return build_model(name, in_dim=in_dim, n_classes=N_CLASSES, mags=MAGS, **kwargs)


def quadtree_coords(n_low: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of n_low parents on a square and their 4 children each, depth-first order."""
    side = math.ceil(math.sqrt(n_low))
    low = torch.stack([torch.arange(n_low) // side, torch.arange(n_low) % side], dim=1)
    quad = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
    high = (2 * low[:, None, :] + quad[None]).reshape(-1, 2)
    return low, high


def random_bag(n_low: int, dim: int, gen: torch.Generator) -> tuple[list, list]:
    low = torch.randn(1, n_low, dim, generator=gen)
    high = torch.randn(1, 4 * n_low, dim, generator=gen)
    return [low, high], list(quadtree_coords(n_low))


# --------------------------------------------------------------------------- toy task


def toy_bags(n_bags: int, seed: int) -> list[tuple[list, list, int]]:
    """Class 0: noise only; class c > 0: one 10x instance (and its 5x parent) carries pattern c.

    Bags have 5-12 parents (20-48 instances at 10x); one key instance decides the label.
    """
    gen = torch.Generator().manual_seed(1234)
    patterns = F.normalize(torch.randn(N_CLASSES, TOY_DIM, generator=gen), dim=1) * STRENGTH
    gen = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        label = i % N_CLASSES
        n_low = int(torch.randint(5, 13, (1,), generator=gen))
        feats, coords = random_bag(n_low, TOY_DIM, gen)
        if label > 0:
            parent = int(torch.randint(n_low, (1,), generator=gen))
            child = 4 * parent + int(torch.randint(4, (1,), generator=gen))
            feats[0][0, parent] += patterns[label]
            feats[1][0, child] += patterns[label]
        bags.append((feats, coords, label))
    return bags


def inputs_for(name: str, feats: list, coords: list) -> tuple[list, list]:
    used = default_mags(name, MAGS)
    idx = [MAGS.index(m) for m in used]
    return [feats[i] for i in idx], [coords[i] for i in idx]


def train_toy(name: str, epochs: int = 4, lr: float = 5e-4) -> float:
    torch.manual_seed(0)
    model = small_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train, test = toy_bags(90, seed=1), toy_bags(60, seed=2)
    for _ in range(epochs):
        model.train()
        for j in torch.randperm(len(train)).tolist():
            feats, coords, label = train[j]
            feats, coords = inputs_for(name, feats, coords)
            target = torch.tensor([label])
            optimizer.zero_grad()
            if hasattr(model, "training_loss"):
                _, loss = model.training_loss(feats, coords, target)
            else:
                loss = F.cross_entropy(model(feats, coords), target)
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for feats, coords, label in test:
            feats, coords = inputs_for(name, feats, coords)
            correct += int(model(feats, coords).argmax()) == label
    return correct / len(test)


@pytest.mark.parametrize("name", ALL)
def test_learns_key_instance_task(name):
    accuracy = train_toy(name)
    assert accuracy >= 0.9, f"{name}: held-out accuracy {accuracy:.2f}"
