"""The preprocessing recipe of a checkpoint trained on features tiled with another tool's
tissue masks.

Features tiled with a ``--tissue-mask`` of another tool (QuPath, TRIDENT; README) record the
mask's method as ``unknown`` (and coords made without a detector ``none``): no detector of
zoommil redoes such a mask on a new slide. Read back as a recipe, that name failed as
"unknown tissue method 'unknown'", so `zoommil flops` could not count such a checkpoint and
`zoommil predict` stopped with a message that did not say why. flops detects nothing and
counts with the recipe's other settings; predict refuses in one line that says what to do.
Kept out of `zoommil.recipe`, which every workflow step imports, and out of
`zoommil.inference.predict`, which the timing jobs import (README, "Partial reruns")."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.recipe import TISSUE_METHODS, PreprocessingRecipe

#: What a recorded mask of another tool says about itself, meaningless to a detector.
_MASK_KEYS = ("tissue_method", "tissue_params", "tissue_version")


def outside_mask_method(recorded: Mapping[str, Any]) -> str | None:
    """The recorded tissue method where it is none of zoommil's detectors, else None."""
    method = recorded.get("tissue_method")
    return None if method is None or method in TISSUE_METHODS else str(method)


def counting_recipe(recorded: Mapping[str, Any], **overrides: Any) -> PreprocessingRecipe:
    """`PreprocessingRecipe.from_attrs` of a checkpoint's ``preprocessing`` for a caller that
    detects no tissue (`zoommil flops`): another tool's mask method is left out."""
    if outside_mask_method(recorded) is None:
        return PreprocessingRecipe.from_attrs(recorded, **overrides)
    kept = {k: v for k, v in recorded.items() if k not in _MASK_KEYS}
    return PreprocessingRecipe.from_attrs(kept, **overrides)


def check_detects_like_training(checkpoint: str | Path) -> None:
    """Refuse to predict from slide files with a checkpoint whose training features were
    tiled with another tool's masks: predict finds a new slide's tissue with a zoommil
    detector, which keeps other patches than those masks did."""
    from zoommil.training.checkpoint import load_checkpoint

    recorded = load_checkpoint(checkpoint)[1].get("preprocessing") or {}
    method = outside_mask_method(recorded)
    if method is None:
        return
    mask = f", e.g. {recorded['tissue_mask']}" if recorded.get("tissue_mask") else ""
    raise ZoomMILError(
        f"{checkpoint}: trained on features tiled with tissue masks from outside zoommil "
        f"(tissue method {method!r}{mask}), which zoommil predict cannot redo on a new slide; "
        "tile each new slide with its own mask (zoommil tile --tissue-mask), run zoommil "
        "features, and classify the feature files with the Python API's Classifier or "
        "zoommil evaluate (README, 'Coming from CLAM, TRIDENT or QuPath')"
    )
