"""Classify feature files from Python: a checkpoint's model together with its normalisation.

Why: `model_from_checkpoint` returns the bare model, while the standardisation fitted in
training (the checkpoint's ``feature_norm``) is part of the classifier. A notebook that calls
the model on a feature file's raw rows gets other probabilities, without an error. A
`Classifier` keeps the two together and reads a feature file the way `zoommil evaluate` does
(the magnifications the features were made at, the finiteness and encoder checks, the
checkpoint's seed for models with randomness at inference), so its probabilities are
evaluate's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoommil.device import resolve_device
from zoommil.errors import ZoomMILError
from zoommil.io.featurefile import read_feature_file
from zoommil.training.checkpoint import load_checkpoint, model_from_state
from zoommil.training.data import (
    check_feature_dim,
    check_finite_bag,
    check_matches_checkpoint,
    feature_tensors,
)
from zoommil.training.evaluation_inputs import check_same_lattice
from zoommil.training.normalize import FeatureNorm


@dataclass
class Classifier:
    """A trained model, its feature normalisation and its checkpoint config."""

    model: nn.Module
    config: dict[str, Any]
    norm: FeatureNorm | None
    checkpoint: str

    @property
    def classes(self) -> list[str]:
        """The class names in the model's output order, as strings: index i of the logits and
        of `probabilities` is ``classes[i]`` (the sheet's labels may be read as numbers)."""
        return [str(c) for c in self.config["classes"]]

    @property
    def arch(self) -> str:
        """The model's architecture (``zoommil``, ``abmil``, ...): what decides which of
        ``forward_with_details`` or ``attention_scores`` the model offers (a method's name
        may be an ablation's, e.g. ``zoommil_random``)."""
        return str(self.config["arch"])

    @property
    def mags(self) -> list[float]:
        """The magnifications read from a feature file (those the features were made at; a
        single-scale model uses the highest of them)."""
        return [float(m) for m in self.config.get("config_mags") or self.config["mags"]]

    def inputs(self, feature_file: str | Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The model's inputs from a `zoommil features` file: standardised features [1, N, D]
        and (row, col) coords [N, 2] per magnification, lowest first. ``model(*inputs)`` gives
        the logits; for ZoomMIL, ``model.forward_with_details(feats)`` also gives what it
        zoomed into, and the other attention models have ``model.attention_scores(feats)``."""
        path = Path(feature_file)
        bag = read_feature_file(path, self.mags)
        check_finite_bag(path, bag.mags, bag.feats)
        recipe = self.config.get("preprocessing") or {}
        check_matches_checkpoint(path, recipe, self.checkpoint)
        check_same_lattice(path, bag.attrs, recipe, self.checkpoint)
        check_feature_dim(path, bag.feats[0].shape[1], self.checkpoint, self.config["in_dim"])
        feats, coords = feature_tensors(bag.feats, bag.coords)
        if self.norm is not None:
            feats = [self.norm(f) for f in feats]
        return feats, coords

    def probabilities(self, feature_file: str | Path) -> dict[str, float]:
        """Class probabilities of one feature file, as `zoommil evaluate` gives them."""
        feats, coords = self.inputs(feature_file)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(int(self.config.get("seed", 0)))
            try:
                logits = self.model(feats, coords)
            except ZoomMILError as error:
                raise ZoomMILError(f"{feature_file}: {error}") from error
        probs = torch.softmax(logits.float(), dim=1)[0].tolist()
        return dict(zip(self.classes, probs, strict=True))

    def predict(self, feature_file: str | Path) -> str:
        """The most probable class of one feature file."""
        probs = self.probabilities(feature_file)
        return max(probs, key=probs.__getitem__)


def load_classifier(checkpoint: str | Path, device: str = "cpu") -> Classifier:
    """The classifier of a `zoommil train` checkpoint, its model in eval mode on ``device``
    (cpu, cuda, cuda:N or auto; the features of `Classifier.inputs` are moved to it by the
    model). Probabilities equal evaluate's on CPU; on a GPU they differ in the last digits.

    The caller's torch random state is left as it was: building the model initialises its
    layers from it before the checkpoint's weights replace them, so a notebook's seeded code
    drew other numbers after a `load_classifier` than without one."""
    state_dict, config = load_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):  # the model is built on the CPU
        model = model_from_state(state_dict, config, checkpoint)
    model = model.to(resolve_device(device))
    norm = FeatureNorm.from_config(config.get("feature_norm"))
    return Classifier(model=model, config=dict(config), norm=norm, checkpoint=str(checkpoint))
