"""Checks of the inputs a checkpoint is evaluated on, where they may come from another cohort
(an external test set): the QC table that applies to the sheet, and the lattice of every
feature file.

Why a module of its own: `zoommil evaluate` and the Python API's `Classifier` import it, and
`zoommil train` does not. The workflow reruns a rule when the code it imports changes, so
these checks, added after many cohorts were trained, did not rerun every user's training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.io.featurefile import read_attrs
from zoommil.io.sheet import read_sheet
from zoommil.training.data import read_exclusions

log = logging.getLogger(__name__)


def is_training_sheet(sheet: str | Path, meta: Mapping[str, Any]) -> bool:
    """Whether ``sheet`` is the file the checkpoint was trained with (its recorded ``sheet``)."""
    recorded = meta.get("sheet")
    if not recorded or not Path(str(recorded)).exists() or not Path(sheet).exists():
        return False
    return Path(sheet).samefile(str(recorded))


def exclusions_for(
    sheet: str | Path | None,
    exclude: str | Path | None,
    meta: Mapping[str, Any],
    checkpoint: str | Path,
) -> str | Path | None:
    """The QC table to give `evaluate_checkpoint`: ``exclude`` if given; None (the training
    one) for the training sheet; ``""`` (none) for another sheet, with a warning naming the
    training table left out. Where the recorded sheet is not on this machine, a QC table the
    checkpoint records must be answered with ``exclude``.

    Why: the training QC table names the training sheet's slides. Applied to another cohort it
    dropped that cohort's slides that share an id with a slide QC excluded. Where the recorded
    sheet is gone (a moved project, a checkpoint from another lab), ``sheet`` may be that very
    sheet moved, whose QC exclusions the metrics need, or another cohort's: only the user
    knows, and a guess either way gives other metrics without a word."""
    if exclude is not None or not sheet or is_training_sheet(sheet, meta):
        return exclude
    if not meta.get("exclude"):
        return ""
    recorded = meta.get("sheet")
    if not recorded or not Path(str(recorded)).exists():
        raise ZoomMILError(
            f"{checkpoint} was trained with the sheet {recorded} and the QC table "
            f"{meta['exclude']}, and that sheet is not on this machine: {sheet} may be it, "
            "moved, or another cohort's; pass --exclude with its QC table (the moved one), "
            "or --exclude '' for none"
        )
    log.warning(
        "%s is not the sheet %s was trained with: the training QC table %s (of the training "
        "sheet's slide ids) is not applied; pass --exclude with this sheet's",
        sheet, checkpoint, meta["exclude"],
    )  # fmt: skip
    return ""


def lattice(attrs: Mapping[str, Any]) -> str | None:
    """Patch size and magnifications a feature file (or a recipe) records, as an error names
    them; None where it lacks either (hand-made files)."""
    size, mags = attrs.get("patch_size"), attrs.get("mags")
    if size is None or mags is None:
        return None
    listed = ", ".join(f"{float(m):g}x" for m in np.atleast_1d(mags))
    return f"patch size {int(size)} px, magnifications {listed}"


def check_same_lattice(
    path: str | Path, attrs: Mapping[str, Any], recipe: Mapping[str, Any], checkpoint: str | Path
) -> None:
    """A feature file has the patch size and magnifications of the checkpoint's training
    features (its recorded preprocessing ``recipe``); else an error naming both.

    Why: another patch size is another field of view per row, and other magnifications filter
    tissue at another lowest one (another bag). Such features load without complaint, and
    `zoommil predict` tiles a slide as the recipe says, not so."""
    got, want = lattice(attrs), lattice(recipe)
    if got is not None and want is not None and got != want:
        raise ZoomMILError(
            f"{path}: features on another lattice ({got}) than {checkpoint} was trained on "
            f"({want}): make them with that recipe (zoommil tile --mags, --patch-size)"
        )


def check_split_lattice(
    sheet: str | Path | None,
    split: str,
    features_dir: str | Path,
    exclude: str | Path | None,
    recipe: Mapping[str, Any],
    checkpoint: str | Path,
) -> None:
    """`check_same_lattice` for every feature file of ``split`` that is there and not excluded.

    A sheet, QC table or file that cannot be read is left to the evaluation, which names it;
    this only adds what it would not see. Why every file: evaluation compares the first file's
    encoder with the checkpoint and the others' with the first, not their lattice."""
    if not sheet or not Path(sheet).exists():
        return
    try:
        rows = read_sheet(sheet)
        excluded = read_exclusions(exclude) if exclude else {}
    except ZoomMILError:
        return
    for slide_id in rows.loc[rows["split"] == split, "slide_id"]:
        path = Path(features_dir) / f"{slide_id}.h5"
        if slide_id in excluded or not path.exists():
            continue
        try:
            attrs = read_attrs(path)
        except (OSError, ValueError):
            continue
        check_same_lattice(path, attrs, recipe, checkpoint)
