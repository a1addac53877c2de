"""Where the benchmarks find the real H&E region they read or tile into real-size slides.

The slide is OpenSlide's public test region CMU-1-Small-Region.svs (CC0). It is looked for in
`shared/data/slides/` inside the checkout, then beside it (`../shared/data/slides/`, the
development layout); a GPU node usually has neither, so the scripts that need it take
`--source PATH` and say where to download it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "CMU-1-Small-Region.svs"
URL = "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"
CANDIDATES = (
    REPO / "shared" / "data" / "slides" / NAME,
    REPO.parent / "shared" / "data" / "slides" / NAME,
)


def default_source() -> Path:
    """The first candidate that exists, else the development layout's path (for messages)."""
    return next((path for path in CANDIDATES if path.is_file()), CANDIDATES[-1])


def missing_source_message(path: Path) -> str:
    """One line naming the file that is missing and how to get it."""
    return f"{path}: source region not found; download {URL} and pass its path with --source"
