"""Saving a figure reproducibly, for Figures 3 and 4.

Both are drawn on `matplotlib.figure.Figure` objects, not pyplot: no backend is chosen or
switched (an importer's own backend stays), nothing global is kept, and `savefig` picks the
writer by extension (PNG, PDF), so it is safe in worker processes without a display.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from matplotlib.figure import Figure

from zoommil.io.atomic import atomic_path


def save_figure(fig: Figure, outputs: Iterable[str | Path]) -> None:
    """PDFs without a creation date, so that the same results give byte-identical figures and
    a rerun's figure can be compared with a checksum."""
    for out in outputs:
        suffix = Path(out).suffix.lower()
        metadata = {"CreationDate": None} if suffix == ".pdf" else {}
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", metadata=metadata)
