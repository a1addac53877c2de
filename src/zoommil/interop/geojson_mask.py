"""GeoJSON tissue regions -> a mask PNG for ``zoommil tile --tissue-mask``.

QuPath exports annotations and TRIDENT writes ``contours_geojson/*.geojson`` as polygons in
level-0 pixels. A polygon's first ring is its outline and the others its holes; polygons are
united. The mask follows `zoommil.wsi.tissue`'s convention (mask pixel (i, j) covers level-0
``[j W0 / w, (j + 1) W0 / w)`` across, likewise down) and records the slide's size, so
``zoommil tile`` refuses it for another slide::

    python -m zoommil.interop.geojson_mask SLIDE REGIONS.geojson --out MASK.png [--class Tissue]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError


def _features(data: Any) -> list[dict[str, Any]]:
    """A FeatureCollection, a Feature, a bare geometry, or a list of features (QuPath's
    script export) as a list of features."""
    if isinstance(data, list):
        return [f for item in data for f in _features(item)]
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        return list(data.get("features") or [])
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise ZoomMILError(f"not GeoJSON polygons: top-level type {kind!r}")


def _class_name(feature: dict[str, Any]) -> str | None:
    """QuPath's ``properties.classification.name`` (or a plain string there)."""
    cls = (feature.get("properties") or {}).get("classification")
    return cls.get("name") if isinstance(cls, dict) else cls


def _polygons(geometry: dict[str, Any] | None) -> Iterable[list[list[list[float]]]]:
    """Every polygon (a list of rings) of a geometry; lines and points have no area."""
    if not geometry:
        return
    kind = geometry.get("type")
    if kind == "Polygon":
        yield geometry["coordinates"]
    elif kind == "MultiPolygon":
        yield from geometry["coordinates"]
    elif kind == "GeometryCollection":
        for part in geometry.get("geometries") or []:
            yield from _polygons(part)


def read_polygons(path: str | Path, classes: Sequence[str] = ()) -> list[list[np.ndarray]]:
    """The polygons of a GeoJSON file, each ``[outline, *holes]`` as float ``[n, 2]`` level-0
    (x, y); only features of ``classes`` when given (QuPath's classification name)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ZoomMILError(f"{path}: cannot read GeoJSON ({error})") from error
    polygons = [
        [np.asarray(ring, dtype=np.float64)[:, :2] for ring in rings]
        for feature in _features(data)
        if not classes or _class_name(feature) in classes
        for rings in _polygons(feature.get("geometry"))
    ]
    if not polygons:
        raise ZoomMILError(
            f"{path}: no polygons" + (f" of class {list(classes)}" if classes else "")
        )
    return polygons


def _inside(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Mask pixels whose centre is inside ``rings`` (mask coordinates) by the even-odd rule,
    so holes are cleared. Unlike `cv2.fillPoly`, which also paints every pixel its outline
    touches (a hole's edge took a row of tissue with it), only centres count."""
    h, w = shape
    rows, xs = [], []
    for ring in rings:
        a, b = ring, np.roll(ring, -1, axis=0)  # edges, closed whether or not GeoJSON repeats
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        # rows whose centre y = r + 0.5 lies in [lo, hi): each crossing counted once
        first = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)
        last = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
        count = last - first
        edge = np.repeat(np.arange(len(a)), count)
        row = (
            np.repeat(first, count)
            + np.arange(count.sum())
            - np.repeat(np.cumsum(count) - count, count)
        )
        t = (row + 0.5 - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
        rows.append(row)
        xs.append(a[edge, 0] + t * (b[edge, 0] - a[edge, 0]))
    row, x = np.concatenate(rows), np.concatenate(xs)
    # a crossing at x flips every pixel whose centre j + 0.5 is right of it
    flips = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(flips, (row, np.clip(np.ceil(x - 0.5), 0, w).astype(np.int64)), 1)
    return (np.cumsum(flips[:, :w], axis=1) % 2).astype(bool)


def rasterize(
    polygons: list[list[np.ndarray]], dims: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """Boolean mask ``shape`` (h, w) of polygons in level-0 pixels of a ``dims`` (w, h) slide:
    a pixel is tissue when its centre is inside a polygon's outline and outside its holes;
    polygons are united (an island inside another polygon's hole stays)."""
    (w0, h0), (h, w) = dims, shape
    scale = np.array([w / w0, h / h0])
    mask = np.zeros(shape, dtype=bool)
    for rings in polygons:
        mask |= _inside([r * scale for r in rings], shape)
    return mask


def geojson_to_mask(
    geojson: str | Path,
    slide: str | Path,
    out: str | Path,
    mask_mpp: float = 8.0,
    mpp: float | None = None,
    classes: Sequence[str] = (),
) -> Path:
    """Write ``out``: the GeoJSON's regions as a mask of ``slide`` at about ``mask_mpp`` um/px
    (8: 1.25x, as `zoommil tissue` makes). ``mpp``: the slide's level-0 um/px when its
    metadata has none."""
    from zoommil.wsi.slide import open_with_mpp
    from zoommil.wsi.tissue import save_mask

    handle, mpp0, source = open_with_mpp(slide, mpp, None)
    try:
        w0, h0 = (int(d) for d in handle.dimensions)
    finally:
        handle.close()
    factor = max(mask_mpp / mpp0, 1.0)
    shape = (max(1, round(h0 / factor)), max(1, round(w0 / factor)))
    mask = rasterize(read_polygons(geojson, classes), (w0, h0), shape)
    metadata = {
        "zoommil.mask_mpp": repr(mpp0 * w0 / shape[1]),
        "zoommil.params": json.dumps({"geojson": str(geojson), "classes": list(classes)}),
        "zoommil.slide_mpp": repr(float(mpp0)),
        "zoommil.mpp_source": source,
        "zoommil.dimensions": json.dumps([w0, h0]),
    }
    return save_mask(out, mask, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.interop.geojson_mask", description=__doc__.splitlines()[0]
    )
    parser.add_argument("slide", type=Path)
    parser.add_argument("geojson", type=Path, help="polygons in level-0 pixels")
    parser.add_argument("--out", type=Path, required=True, help="mask PNG to write")
    parser.add_argument("--mask-mpp", type=float, default=8.0, help="um/px (default 8)")
    parser.add_argument("--mpp", type=float, default=None, help="slide um/px if none recorded")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        help="keep only features of this classification (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        out = geojson_to_mask(
            args.geojson, args.slide, args.out, args.mask_mpp, args.mpp, args.classes
        )
    except ZoomMILError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.geojson} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
