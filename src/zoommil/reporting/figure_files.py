"""Saving a figure reproducibly, for Figures 3 and 4.

Both are drawn on `matplotlib.figure.Figure` objects, not pyplot: no backend is chosen or
switched (an importer's own backend stays), nothing global is kept, and `savefig` picks the
writer by extension (PNG, PDF), so it is safe in worker processes without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from zoommil.io.atomic import atomic_path

#: PNG resolution: the usual minimum of journals for figures with text and lines.
PNG_DPI = 300


def save_figure(fig: Figure, outputs: Iterable[str | Path]) -> None:
    """PDFs without a creation date, so that the same results give byte-identical figures and
    a rerun's figure can be compared with a checksum, and with TrueType (Type 42) fonts, not
    matplotlib's default Type 3, which journals' PDF checks (IEEE PDF eXpress and others)
    reject; PNGs at `PNG_DPI`. The font setting holds for these saves only."""
    for out in outputs:
        suffix = Path(out).suffix.lower()
        metadata = {"CreationDate": None} if suffix == ".pdf" else {}
        with atomic_path(out) as tmp, matplotlib.rc_context({"pdf.fonttype": 42}):
            fig.savefig(tmp, dpi=PNG_DPI, bbox_inches="tight", metadata=metadata)


def save_pages(figs: Sequence[Figure], outputs: Iterable[str | Path]) -> None:
    """A figure of several pages (Figure 4 with more rows than a page holds): every page in
    one PDF, as a journal's supplement takes it, and the first in a PNG, which holds one
    image (its note says so); otherwise as `save_figure`."""
    for out in outputs:
        if len(figs) == 1 or Path(out).suffix.lower() != ".pdf":
            save_figure(figs[0], [out])
            continue
        with (
            atomic_path(out) as tmp,
            matplotlib.rc_context({"pdf.fonttype": 42}),
            PdfPages(tmp, metadata={"CreationDate": None}) as pdf,
        ):
            for fig in figs:
                pdf.savefig(fig, dpi=PNG_DPI, bbox_inches="tight")
