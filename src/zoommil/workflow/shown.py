"""What the report, tables and figures say about the encoder weights: a weights file by its
file name, never its folder.

The tables' notes, Figure 3's note and the report's front page named `features.weights` as
configured; a weights file given by its absolute path put the lab's folder, often with a user
name, into a paper's table notes and the shared `report.html` (as a rule parameter too). The
file's sha256 stays in the feature files and checkpoints, where `zoommil predict` checks it.
Imported by the Snakefile only: no script or command imports it, so an edit reruns nothing.
"""

from __future__ import annotations

from pathlib import PureWindowsPath
from typing import Any


def shown_weights(weights: Any) -> str:
    """``weights`` as the report names it: a keyword (``random``, ``imagenet``, ``hf``) as
    it is, a file by its name alone (also a Windows path or one with ``~``)."""
    text = str(weights)
    if "/" not in text and "\\" not in text:
        return text
    return PureWindowsPath(text).name  # splits on both / and \
