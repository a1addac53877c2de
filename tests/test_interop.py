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
    mask, _ = geojson_to_mask(regions, slide, tmp_path / "m.png")
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


def test_a_qupath_export_of_a_slide_with_bounds_needs_its_frame(
    make_slide, tmp_path, monkeypatch, capsys
):
    """QuPath's OpenSlide reader starts a slide with OpenSlide bounds (MIRAX, ...; faked here)
    at (bounds-x, bounds-y), TRIDENT at OpenSlide's (0, 0): the GeoJSON does not say which,
    so geojson_mask asks for --frame there (it read every file as OpenSlide's, and so put a
    QuPath export's mask off by the bounds without a word) and says which frame it took."""
    from zoommil.interop import geojson_mask
    from zoommil.wsi.tissue import load_mask

    slide = make_slide("s.tiff", width=4096, height=3072, tissue=False)
    trident = tmp_path / "trident.geojson"  # the left half, in OpenSlide's level 0
    trident.write_text(json.dumps({"type": "Polygon", "coordinates": [_square(0, 0, 2048, 3072)]}))
    qupath = tmp_path / "qupath.geojson"  # the same region, from the bounds' corner
    qupath.write_text(
        json.dumps({"type": "Polygon", "coordinates": [_square(-1024, -512, 1024, 2560)]})
    )
    expected, _ = load_mask(geojson_to_mask(trident, slide, tmp_path / "e.png")[0])
    assert expected[:, :128].all() and not expected[:, 128:].any()

    monkeypatch.setattr(geojson_mask, "qupath_origin", lambda properties: (1024, 512))
    argv = [str(slide), str(qupath), "--out", str(tmp_path / "m.png")]
    assert geojson_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OpenSlide bounds from (1024, 512)" in err
    assert "--frame qupath" in err and "--frame openslide" in err
    assert not (tmp_path / "m.png").exists()
    assert geojson_main([*argv, "--frame", "qupath"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "QuPath's" in line and "(1024, 512) (--frame qupath)" in line
    assert (load_mask(tmp_path / "m.png")[0] == expected).all()
    mask_path, note = geojson_to_mask(trident, slide, tmp_path / "t.png", frame="openslide")
    assert (load_mask(mask_path)[0] == expected).all()
    assert note.startswith("OpenSlide's level 0, not QuPath's")


def test_a_slide_without_bounds_needs_no_frame_and_a_recorded_shift_is_kept(
    make_slide, tmp_path, monkeypatch
):
    """Without bounds every frame agrees (no --frame asked); a shift regions_geojson recorded
    is taken as written, and neither a --frame that contradicts it nor another slide's
    bounds pass."""
    from zoommil.interop import geojson_mask

    slide = make_slide("s.tiff", width=4096, height=3072, tissue=False)
    plain = tmp_path / "plain.geojson"
    plain.write_text(json.dumps({"type": "Polygon", "coordinates": [_square(0, 0, 2048, 3072)]}))
    _, note = geojson_to_mask(plain, slide, tmp_path / "p.png")
    assert "no OpenSlide bounds" in note
    ours = tmp_path / "ours.geojson"
    shifted = {"type": "Polygon", "coordinates": [_square(-1024, -512, 1024, 2560)]}
    feature = {"type": "Feature", "properties": {}, "geometry": shifted}
    collection = {"type": "FeatureCollection", "features": [feature]}
    ours.write_text(json.dumps(collection | {"zoommil": {"offset_level0": [1024, 512]}}))
    with pytest.raises(ZoomMILError, match=r"shifted the file by \(1024, 512\).*another slide"):
        geojson_to_mask(ours, slide, tmp_path / "o.png")
    monkeypatch.setattr(geojson_mask, "qupath_origin", lambda properties: (1024, 512))
    _, note = geojson_to_mask(ours, slide, tmp_path / "o.png")
    assert "recorded, (1024, 512)" in note
    with pytest.raises(ZoomMILError, match="--frame openslide says"):
        geojson_to_mask(ours, slide, tmp_path / "o.png", frame="openslide")


def test_qupaths_origin_is_the_bounds_only_where_all_four_are_integers():
    """As QuPath's OpenSlide reader: it crops only with x, y, width and height all given."""
    from zoommil.interop.geojson_mask import qupath_origin

    bounds = {f"openslide.bounds-{k}": v for k, v in zip("xy", ("300", "40"), strict=True)}
    size = {"openslide.bounds-width": "1000", "openslide.bounds-height": "800"}
    assert qupath_origin(bounds | size) == (300, 40)
    assert qupath_origin(bounds) == (0, 0)
    assert qupath_origin(bounds | size | {"openslide.bounds-x": "3.5"}) == (0, 0)
    assert qupath_origin({}) == (0, 0)
