"""The methods' display names, as the tables, the figures and the heatmap legends write them.

A module of its own, without pandas or the table code: `zoommil predict` draws heatmap legends
with these names, and the workflow reruns a rule when a module it imports changes, so an edit
of the table code must not rerun Figure 4's predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DISPLAY_NAMES = {
    "zoommil": "ZoomMIL",
    "maxmil": "MaxMIL",
    "meanmil": "MeanMIL",
    "sparseconvmil": "SparseConvMIL",
    "abmil": "ABMIL",
    "clam_sb": "CLAM-SB",
    "transmil": "TransMIL",
    "msmil": "MS-MIL",
    "dsmil": "DSMIL",
}


def display_name(method: str, spec: Mapping[str, Any] | None = None) -> str:
    """ZoomMIL-style display name; a method named like its arch gets the paper's spelling."""
    if method in DISPLAY_NAMES:
        return DISPLAY_NAMES[method]
    return method
