"""`zoommil.interop.geojson_mask`: QuPath / TRIDENT GeoJSON regions as `--tissue-mask`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.interop.geojson_mask import geojson_to_mask, rasterize, read_polygons
from zoommil.interop.geojson_mask import main as geojson_main
from zoommil.io.coords import load_coords
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.tiling import tile_slide


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_a_left_half_with_a_hole_tiles_only_there(make_slide, tmp_path: Path):
    """The recipe README gives a lab with QuPath or TRIDENT regions: a polygon over the left
    half of a 4096x3072 slide with a hole over one 5x parent (1024 level-0 px) keeps exactly
    the left half's parents but that one, each whole."""
    slide = make_slide("s.tiff", width=4096, height=3072, tissue=False)
    outline, hole = _square(0, 0, 2048, 3072), _square(1024, 1024, 2048, 2048)
    regions = tmp_path / "s.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [outline, hole]}}]}))  # fmt: skip
    mask = geojson_to_mask(regions, slide, tmp_path / "m.png")
    coords = tmp_path / "c.h5"
    argv = ["tile", str(slide), "--mags", "5", "10", "--tissue-mask", str(mask)]
    assert main([*argv, "--out", str(coords)]) == 0
    lattice = load_coords(coords)
    assert lattice.coords[0].tolist() == [[0, 0], [0, 1], [1, 0], [2, 0], [2, 1]]
    assert lattice.attrs["tissue_method"] == "unknown"
    other = make_slide("o.tiff", width=4096, height=3000, tissue=False)
    with pytest.raises(ZoomMILError, match="tissue mask was made for a slide of 4096x3072"):
        tile_slide(other, PreprocessingRecipe(mags=[5, 10]), mask_path=mask)


def test_holes_islands_multipolygons_and_qupath_classes(tmp_path: Path):
    """Only pixel centres count (an edge on a pixel boundary takes no extra row), an island in
    a hole stays, and QuPath's list of features is filtered by classification."""
    lake = [_square(0, 0, 80, 80), _square(20, 20, 60, 60)]
    island = [_square(30, 30, 50, 50)]
    polys = [[np.asarray(r, float) for r in rings] for rings in (lake, island)]
    mask = rasterize(polys, (160, 80), (8, 16))  # 10 level-0 px per mask px
    expected = np.zeros((8, 16), bool)
    expected[:, :8] = True
    expected[2:6, 2:6] = False
    expected[3:5, 3:5] = True
    assert (mask == expected).all()
    features = [
        {"type": "Feature", "properties": {"classification": {"name": name}},
         "geometry": {"type": "MultiPolygon", "coordinates": [[_square(*box)]]}}
        for name, box in (("Tissue", (0, 0, 40, 40)), ("Other", (40, 40, 80, 80)))
    ]  # fmt: skip
    regions = tmp_path / "qupath.geojson"
    regions.write_text(json.dumps(features))
    assert len(read_polygons(regions)) == 2
    (only,) = read_polygons(regions, ["Tissue"])
    assert only[0].max() == 40
    with pytest.raises(ZoomMILError, match="no polygons of class"):
        read_polygons(regions, ["Tumor"])
    assert geojson_main([str(tmp_path / "none.tiff"), str(regions), "--out", "x.png"]) == 2
