"""The source data of Figures 3 and 4: every plotted value in a CSV beside the figure.

Journals ask for the numbers behind each figure (Nature portfolio's "Source Data"), and a
reader who cannot see the image (a screen reader) needs them as text: Figure 3's GPU
throughput and both error bars, Figure 4's slides, predictions and each region's score per
magnification and zoom step were in the image alone. Written atomically, with the notes under
the figure in a ``notes`` column, as the tables' CSVs carry theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from zoommil.io.atomic import atomic_path


def write_source_csv(
    path: str | Path, frame: pd.DataFrame, columns: Sequence[str], notes: Sequence[str]
) -> None:
    """``frame`` (its ``columns``, in that order) with the figure's ``notes`` joined by " | "
    in a last column. A figure without a point (no timings, maps left out) gets one row of
    empty cells and its notes, which say why: a file of a header alone said nothing.
    Floats are written in full (shortest round-trip), so a value read back is the one drawn."""
    frame = frame.reindex(columns=list(columns))
    if frame.empty:
        frame = pd.DataFrame([{}], columns=list(columns))
    # one line: a note's own line breaks (the figure's layout) become separators too
    frame["notes"] = " | ".join(line for note in notes for line in note.splitlines() if line)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
