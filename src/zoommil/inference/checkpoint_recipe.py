"""The preprocessing recipe a checkpoint records, for the commands that redo or count it
(`zoommil predict` and `profile` through `Predictor`, `zoommil flops`).

Features tiled with a ``--tissue-mask`` of another tool (QuPath, TRIDENT; README) record the
mask's method as ``unknown`` (and coords made without a detector ``none``): no detector of
zoommil redoes such a mask on a new slide. Read back as a recipe, that name failed as
"unknown tissue method 'unknown'", so a checkpoint trained on such features could neither
predict nor count its FLOPs. Here it gives way to the default detector, which predict says.
Kept out of `zoommil.recipe`, which every workflow step imports (README, "Partial reruns")."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoommil.recipe import TISSUE_METHODS, PreprocessingRecipe, default

log = logging.getLogger(__name__)

#: What a recorded mask of another tool says about itself, meaningless to a detector.
_MASK_KEYS = ("tissue_method", "tissue_params", "tissue_version")


def checkpoint_recipe(
    recorded: Mapping[str, Any],
    checkpoint: str | Path,
    detects: bool = True,
    **overrides: Any,
) -> PreprocessingRecipe:
    """`PreprocessingRecipe.from_attrs` of a checkpoint's ``preprocessing``; a tissue method
    that is none of zoommil's detectors becomes the default one. ``detects``: the caller
    detects tissue on new slides (predict), so that a warning says the masks may differ."""
    method = recorded.get("tissue_method")
    if method is None or method in TISSUE_METHODS:
        return PreprocessingRecipe.from_attrs(recorded, **overrides)
    if detects:
        log.warning(
            "%s: trained on features tiled with tissue masks from outside zoommil "
            "(tissue method %r%s); a new slide's tissue is found with the %s detector, which "
            "may keep other patches than those masks did",
            checkpoint,
            method,
            f", e.g. {recorded['tissue_mask']}" if recorded.get("tissue_mask") else "",
            default("tissue_method"),
        )
    kept = {k: v for k, v in recorded.items() if k not in _MASK_KEYS}
    return PreprocessingRecipe.from_attrs(kept, **overrides)
