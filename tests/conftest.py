"""Shared fixtures: real test slides and tiny deterministic pyramidal TIFFs.

`write_pyramid_tiff` writes a tiled, zlib-compressed, pyramidal TIFF with a centimetre
resolution unit, so OpenSlide (generic-tiff) reports ``openslide.mpp-x``. Use the fixtures:

- ``slides_dir``: the real slides in ``../shared/data/slides`` (skips if absent);
- ``make_slide(name="s.tiff", **kwargs)``: writes a synthetic slide into ``tmp_path``;
- ``synthetic_slide``: one default synthetic slide per test session (do not modify it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from slide_factory import write_pyramid_tiff

REPO = Path(__file__).resolve().parents[1]
# The benchmark scripts import their siblings (bench_cli, source_slide) as a script run from
# benchmarks/ does; tests that load a script from its file need that folder on the path
# (appended, so that it shadows no installed module).
sys.path.append(str(REPO / "benchmarks"))
SLIDES_DIR = REPO / ".." / "shared" / "data" / "slides"


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    """The real test slides (CMU-1-Small-Region.svs, TCGA-...svs, prostate-he-generic.tiff)."""
    if not SLIDES_DIR.is_dir():
        pytest.skip(f"real test slides not found at {SLIDES_DIR}")
    return SLIDES_DIR


@pytest.fixture
def make_slide(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_slide("name.tiff", mpp=0.5, tissue=True, ...)`` -> path in tmp_path."""

    def make(name: str = "slide.tiff", **kwargs) -> Path:
        return write_pyramid_tiff(tmp_path / name, **kwargs)

    return make


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048x1536 slide at 0.5 um/px (20x), 3 levels, tissue ellipse; shared, read-only."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("synthetic") / "synthetic.tiff")
