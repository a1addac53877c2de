"""`zoommil.interop.regions_geojson`: a prediction's zoomed-into regions as QuPath GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoommil.errors import ZoomMILError
from zoommil.interop import regions_geojson
from zoommil.interop.geojson_mask import rasterize, read_polygons
from zoommil.interop.regions_geojson import convert, main, prediction_geojson

SLIDE = (4096, 3072)  # level-0 (w, h)


def _prediction() -> dict:
    """A ZoomMIL prediction as `zoommil predict --json` writes it: 5x -> 10x -> 20x on a
    0.5 um/px slide, K = 2, selected by the selection scores (not the pooling attention)."""
    low = [[x, y] for y in (0, 1024, 2048) for x in (0, 1024, 2048, 3072)]  # 12 parents
    low_weights = np.linspace(0.01, 0.12, 12)
    low_scores = low_weights[::-1].copy()  # the selection score ranks them the other way
    chosen = [[0, 0], [1024, 0]]  # the two of the highest selection score
    mid = [[x + dx, y + dy] for x, y in chosen for dy in (0, 512) for dx in (0, 512)]
    mid_weights = np.linspace(0.2, 0.05, 8)
    mid_scores = mid_weights.copy()
    mid_chosen = [mid[0], mid[1]]
    high = [[x + dx, y + dy] for x, y in mid_chosen for dy in (0, 256) for dx in (0, 256)]
    return {
        "slide": "missing/s.tiff",
        "slide_id": "s",
        "slide_path": "/nonexistent/s.tiff",
        "slide_quickhash": "",
        "method": "zoommil",
        "arch": "zoommil",
        "classes": ["normal", "tumour"],
        "probabilities": {"normal": 0.25, "tumour": 0.75},
        "predicted": "tumour",
        "mpp": 0.5,
        "checkpoint_sha256": "ab" * 32,
        "selected": [
            {"mag": 10.0, "side0": 512, "xy": mid_chosen},  # listed out of order on purpose
            {"mag": 5.0, "side0": 1024, "xy": chosen},
        ],
        "attention": [
            {
                "mag": 5.0,
                "side0": 1024,
                "xy": low,
                "weights": low_weights.tolist(),
                "selection_scores": low_scores.tolist(),
            },
            {
                "mag": 10.0,
                "side0": 512,
                "xy": mid,
                "weights": mid_weights.tolist(),
                "selection_scores": mid_scores.tolist(),
            },
            {"mag": 20.0, "side0": 256, "xy": high, "weights": [0.25] * 8},
        ],  # fmt: skip
        "selected_by": "selection attention",
    }


def _signed_area(ring: list[list[float]]) -> float:
    """Shoelace area: positive for a counter-clockwise ring (x right, y up), RFC 7946 7."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float((x[:-1] * y[1:] - x[1:] * y[:-1]).sum() / 2)


def _annotations(collection: dict) -> list[dict]:
    return [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]


def test_each_region_is_its_box_with_step_magnification_and_scores():
    """One annotation per selected patch, step by step (lowest magnification first), its
    polygon the JSON's box, its measurements the step's attention and selection score of
    that patch (looked up by its xy) with their ranks."""
    prediction = _prediction()
    regions = _annotations(prediction_geojson(prediction))
    assert len(regions) == 4
    boxes = [
        (step, x, y, side)
        for step, side, xys in ((1, 1024, [[0, 0], [1024, 0]]), (2, 512, [[0, 0], [512, 0]]))
        for x, y in xys
    ]
    for feature, (step, x, y, side) in zip(regions, boxes, strict=True):
        (ring,) = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Polygon"
        assert ring == [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        props = feature["properties"]
        assert props["classification"]["name"] == f"Zoom step {step}"
        assert len(props["classification"]["color"]) == 3  # QuPath needs it beside the name
        measurements = props["measurements"]
        assert measurements["Zoom step"] == step
        assert measurements["Magnification"] == {1: 5.0, 2: 10.0}[step]
        assert measurements["Zoomed to magnification"] == {1: 10.0, 2: 20.0}[step]
        entry = {1: prediction["attention"][0], 2: prediction["attention"][1]}[step]
        i = entry["xy"].index([x, y])
        assert measurements["Attention"] == entry["weights"][i]
        assert measurements["Selection score"] == entry["selection_scores"][i]
    first = [f["properties"]["measurements"] for f in regions[:2]]
    # step 1 chose by the selection score: its top two, which the attention ranks last
    assert [m["Selection rank"] for m in first] == [1, 2]
    assert [m["Attention rank"] for m in first] == [12, 11]


def test_the_geojson_is_valid_closed_counter_clockwise_and_plain_json(tmp_path: Path):
    out = tmp_path / "r.geojson"
    (tmp_path / "p.json").write_text(json.dumps(_prediction()))
    convert(tmp_path / "p.json", out, attention=True)
    collection = json.loads(out.read_text())  # strict JSON: no NaN
    assert collection["type"] == "FeatureCollection"
    assert collection["zoommil"]["predicted"] == "tumour"
    assert len(collection["features"]) == 4 + 12 + 8 + 8
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] in ("annotation", "detection")
        assert all(
            isinstance(v, int | float) for v in feature["properties"]["measurements"].values()
        )  # QuPath reads measurements as numbers
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        assert _signed_area(ring) > 0


def test_a_round_trip_through_the_geojson_reader_lands_on_the_same_pixels(tmp_path: Path):
    """Read back with `geojson_mask` (the project's reader of QuPath exports) and rasterized
    on the 256-px grid of the finest patches, each step's regions are exactly its boxes'
    cells, and the attention detections exactly each magnification's patches."""
    prediction = _prediction()
    (tmp_path / "p.json").write_text(json.dumps(prediction))
    out, _, _ = convert(tmp_path / "p.json", tmp_path / "r.geojson", attention=True)
    shape = (SLIDE[1] // 256, SLIDE[0] // 256)

    def cells(xys: list[list[int]], side: int) -> np.ndarray:
        expected = np.zeros(shape, dtype=bool)
        for x, y in xys:
            expected[y // 256 : (y + side) // 256, x // 256 : (x + side) // 256] = True
        return expected

    for step, entry in ((1, prediction["selected"][1]), (2, prediction["selected"][0])):
        mask = rasterize(read_polygons(out, [f"Zoom step {step}"]), SLIDE, shape)
        assert (mask == cells(entry["xy"], entry["side0"])).all(), step
    for entry in prediction["attention"]:
        polygons = read_polygons(out, [f"Attention {entry['mag']:g}x"])
        assert len(polygons) == len(entry["xy"])
        mask = rasterize(polygons, SLIDE, shape)
        assert (mask == cells(entry["xy"], entry["side0"])).all(), entry["mag"]


def test_a_slide_with_bounds_is_shifted_to_qupaths_origin(tmp_path: Path, monkeypatch):
    """QuPath's OpenSlide reader shows a slide with ``openslide.bounds-*`` (MIRAX) from its
    bounding box: the regions move by (bounds-x, bounds-y); --no-crop keeps them."""
    monkeypatch.setattr(regions_geojson, "qupath_offset", lambda slide, quickhash: (300, 40))
    prediction = _prediction()
    (tmp_path / "p.json").write_text(json.dumps(prediction))
    slide = tmp_path / "s.mrxs"
    slide.write_bytes(b"x")
    _, collection, note = convert(tmp_path / "p.json", tmp_path / "r.geojson", slide=slide)
    (ring,) = _annotations(collection)[1]["geometry"]["coordinates"]
    assert ring[0] == [1024 - 300, 0 - 40]
    assert "(300, 40)" in note and collection["zoommil"]["offset_level0"] == [300, 40]
    _, kept, note = convert(tmp_path / "p.json", tmp_path / "k.geojson", slide=slide, no_crop=True)
    assert _annotations(kept)[1]["geometry"]["coordinates"][0][0] == [1024, 0]


def test_bounds_are_read_from_the_slide_and_another_slide_is_refused(make_slide, tmp_path):
    from zoommil.wsi.slide import open_slide, quickhash

    slide = make_slide("s.tiff", width=1024, height=1024)
    handle = open_slide(slide, test_read=False)
    own = quickhash(handle)
    handle.close()
    assert regions_geojson.qupath_offset(slide, own) == (0, 0)  # a TIFF has no bounds
    with pytest.raises(ZoomMILError, match="another slide than the prediction's"):
        regions_geojson.qupath_offset(slide, "0" * 64)


def test_what_cannot_be_shown_is_one_line_and_exit_2(tmp_path: Path, capsys):
    baseline = _prediction() | {"method": "abmil", "arch": "abmil", "selected": []}
    with pytest.raises(ZoomMILError, match="zooms into no regions.*--attention"):
        prediction_geojson(baseline)
    assert len(prediction_geojson(baseline, attention=True)["features"]) == 12 + 8 + 8
    meanmil = baseline | {"attention": []}
    with pytest.raises(ZoomMILError, match="records no attention"):
        prediction_geojson(meanmil, attention=True)
    edited = _prediction()
    edited["selected"][1]["xy"][0] = [8, 8]
    with pytest.raises(ZoomMILError, match=r"region at \(8, 8\) is not among the 5x patches"):
        prediction_geojson(edited)
    marker = tmp_path / "failed.json"
    marker.write_text(json.dumps({"status": "no_tissue", "stage": "predict", "reason": "blank"}))
    assert main([str(marker), "--out", str(tmp_path / "x.geojson")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not classified (status no_tissue: blank)" in err
    assert not (tmp_path / "x.geojson").exists()


def test_a_seed_ensembles_json_is_refused_saying_why(tmp_path: Path, capsys):
    """`zoommil predict --checkpoint A --checkpoint B` writes empty top-level `selected` and
    `attention`: the tool said "method zoommil zooms into no regions (only ZoomMIL does)"."""
    member = _prediction()
    ensemble = _prediction() | {
        "selected": [],
        "attention": [],
        "checkpoints": [member, member],
        "ensemble": {"checkpoints": 2, "argmax_agree": True},
    }
    for attention in (False, True):
        with pytest.raises(ZoomMILError, match=r"seed ensemble's prediction \(2 checkpoints\)"):
            prediction_geojson(ensemble, attention=attention)
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(ensemble))
    assert main([str(path), "--out", str(tmp_path / "x.geojson")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one --checkpoint" in err
    assert not (tmp_path / "x.geojson").exists()


def test_the_command_line_says_what_it_wrote(tmp_path: Path, capsys):
    (tmp_path / "p.json").write_text(json.dumps(_prediction()))
    out = tmp_path / "r.geojson"
    assert main([str(tmp_path / "p.json"), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "4 regions zoomed into, 0 attention patches" in line
    assert "not found" in line  # the slide's bounds could not be checked: said so
    assert len(json.loads(out.read_text())["features"]) == 4


def test_a_round_trip_on_a_slide_with_bounds_lands_on_the_same_pixels(make_slide, monkeypatch):
    """On a slide with OpenSlide bounds (faked: the synthetic TIFF has none) regions_geojson
    writes QuPath's frame, shifted by the bounds, and records the shift; geojson_mask reads
    the file back onto the very cells of the prediction's boxes, in OpenSlide's level 0 (it
    read it unshifted, 512 px left and 256 up, before), and says which frame it took."""
    from zoommil.interop import geojson_mask
    from zoommil.wsi.slide import open_slide, quickhash
    from zoommil.wsi.tissue import load_mask

    slide = make_slide("s.tiff", width=SLIDE[0], height=SLIDE[1], tissue=False)
    handle = open_slide(slide, test_read=False)
    own = quickhash(handle)
    handle.close()
    monkeypatch.setattr(geojson_mask, "qupath_origin", lambda properties: (512, 256))
    prediction = _prediction() | {"slide_path": str(slide), "slide_quickhash": own}
    folder = slide.parent
    (folder / "p.json").write_text(json.dumps(prediction))
    out, collection, _ = convert(folder / "p.json", folder / "r.geojson")
    assert _annotations(collection)[0]["geometry"]["coordinates"][0][0] == [0 - 512, 0 - 256]
    shape = (SLIDE[1] // 16, SLIDE[0] // 16)  # 8 um/px of a 0.5 um/px slide: 16 px a cell
    for step, entry in ((1, prediction["selected"][1]), (2, prediction["selected"][0])):
        mask_path, note = geojson_mask.geojson_to_mask(
            out, slide, folder / f"m{step}.png", classes=[f"Zoom step {step}"]
        )
        mask, _ = load_mask(mask_path)
        expected = np.zeros(shape, dtype=bool)
        for x, y in entry["xy"]:
            side = entry["side0"]
            expected[y // 16 : (y + side) // 16, x // 16 : (x + side) // 16] = True
        assert (mask == expected).all(), step
        assert "QuPath's" in note and "(512, 256)" in note and "regions_geojson" in note
