"""Checks of one evaluation JSON before the tables and figures rely on it.

Why: a table's cells combine many files, and a malformed one surfaced as a bare KeyError or
ValueError deep in the statistics, without saying which file to look at. And a table's means
come from the JSON's scalar metrics while its CIs and comparisons come from the same JSON's
per-slide predictions: a file whose scalars are not those of its predictions (edited by hand,
written by another tool, or by a producer with a bug) would print a mean from one source and
an interval from another. Every message here starts with the file (`results.SOURCE`, recorded
by `results.eval_runs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.reporting import stats
from zoommil.reporting.results import SOURCE, metric_entry

PREDICTION_KEYS = ("slide_id", "label", "pred")
#: How far a JSON's scalar metric may be from the one its predictions give (float noise only).
TOLERANCE = 1e-6


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


def check_scalars(record: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """The scalar metrics of ``data`` (`stats.METRICS`, where present, found as the tables
    find them: `results.metric_entry`) equal those its per-slide predictions give, within
    `TOLERANCE`; an error naming the file, the key and both values otherwise. ``record`` is
    ``data`` with top-level ``classes`` and ``predictions`` (a metrics.json's ``test`` block
    lifted up), checked by `check_predictions`."""
    pred = stats.predictions_from_evals([{**record, "seed": 0}])
    every = np.arange(len(pred.slides))
    for metric in stats.METRICS:
        entry = metric_entry(dict(data), metric)
        if entry is None or np.isnan(entry[1]):
            continue
        key, value = entry
        recomputed = float(stats.seed_mean_metric(pred, metric, every))
        if abs(recomputed - value) > TOLERANCE:
            raise ZoomMILError(
                f"{source(record)}: {key} = {value:.6g}, but its {len(pred.slides)} per-slide "
                f"predictions give {recomputed:.6g}; the table's mean (from {key}) and its CI "
                "(from the predictions) would disagree: rewrite the file with `zoommil "
                "evaluate`"
            )
