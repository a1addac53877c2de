"""Checks of one evaluation JSON before the tables and figures rely on it.

Why: a table's cells combine many files, and a malformed one surfaced as a bare KeyError or
ValueError deep in the statistics, without saying which file to look at. Every message here
starts with the file (`results.SOURCE`, recorded by `results.eval_runs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.reporting.results import SOURCE

PREDICTION_KEYS = ("slide_id", "label", "pred")


def source(record: Mapping[str, Any]) -> str:
    """The file a record was read from (as `results.eval_runs` recorded it)."""
    return str(record.get(SOURCE) or "an evaluation record")


def check_predictions(record: Mapping[str, Any]) -> None:
    """``classes`` is a list and every entry of ``predictions`` has a slide id, and a label
    and a prediction among the classes; an error naming the file and the entry otherwise."""
    where = source(record)
    classes = record.get("classes")
    if not isinstance(classes, list):
        raise ZoomMILError(f"{where}: 'classes' is not a list of class names")
    predictions = record.get("predictions")
    if not isinstance(predictions, list):
        raise ZoomMILError(f"{where}: 'predictions' is not a list")
    for i, entry in enumerate(predictions):
        if not isinstance(entry, Mapping):
            raise ZoomMILError(f"{where}: predictions[{i}] is not an object")
        missing = [k for k in PREDICTION_KEYS if k not in entry]
        if missing:
            raise ZoomMILError(f"{where}: predictions[{i}] has no {', '.join(missing)}")
        for key in ("label", "pred"):
            if entry[key] not in classes:
                raise ZoomMILError(
                    f"{where}: predictions[{i}] (slide {entry['slide_id']}): {key} "
                    f"{entry[key]!r} is not one of the classes {classes}"
                )
