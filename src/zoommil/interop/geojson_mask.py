"""GeoJSON tissue regions -> a mask PNG for ``zoommil tile --tissue-mask``.

QuPath exports annotations and TRIDENT writes ``contours_geojson/*.geojson`` as polygons in
level-0 pixels. A polygon's first ring is its outline and the others its holes; polygons are
united. The mask follows `zoommil.wsi.tissue`'s convention (mask pixel (i, j) covers level-0
``[j W0 / w, (j + 1) W0 / w)`` across, likewise down) and records the slide's size, so
``zoommil tile`` refuses it for another slide::

    python -m zoommil.interop.geojson_mask SLIDE REGIONS.geojson --out MASK.png [--class Tissue]
        [--frame qupath|openslide]

Level 0 has two origins on a slide with OpenSlide bounds (``openslide.bounds-*``: MIRAX,
Leica; since OpenSlide 4.0.1 also sparse TIFFs): OpenSlide's, which zoommil and TRIDENT use,
and the bounding box's top-left, where QuPath's OpenSlide reader (0.2 and later, unless the
image was opened with ``--no-crop``) puts its (0, 0), so a QuPath export is shifted by
(bounds-x, bounds-y). The file does not say which, so there ``--frame`` is asked for, unless
`zoommil.interop.regions_geojson` wrote it (it records its shift); without bounds both agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.interop.tool import add_version, run_checked

#: ``--frame``: the origin a GeoJSON's coordinates are measured from.
FRAMES = ("qupath", "openslide")


def qupath_origin(properties: Mapping[str, str]) -> tuple[int, int]:
    """Where QuPath's OpenSlide reader puts (0, 0), in OpenSlide's level-0 pixels:
    (bounds-x, bounds-y) where the slide has all four ``openslide.bounds-*`` as integers, as
    its reader asks before it crops (QuPath 0.2 to 0.7; ``--no-crop`` keeps (0, 0)), else
    (0, 0)."""
    keys = [f"openslide.bounds-{k}" for k in ("x", "y", "width", "height")]
    try:
        x, y, _, _ = (int(properties[key]) for key in keys)
    except (KeyError, ValueError):
        return (0, 0)
    return (x, y)


def recorded_offset(data: Any) -> tuple[int, int] | None:
    """The shift `zoommil.interop.regions_geojson` recorded in its file (its coordinates plus
    it are OpenSlide's level 0); None for a file of another tool."""
    member = data.get("zoommil") if isinstance(data, dict) else None
    offset = member.get("offset_level0") if isinstance(member, dict) else None
    if not (isinstance(offset, list) and len(offset) == 2):
        return None
    return (int(offset[0]), int(offset[1]))


def frame_offset(
    frame: str | None,
    origin: tuple[int, int],
    recorded: tuple[int, int] | None,
    where: str,
) -> tuple[tuple[int, int], str]:
    """What to add to the GeoJSON's coordinates to get OpenSlide's level 0, and a note saying
    which frame that assumed. A slide with bounds and a file that records no shift needs
    ``frame``: guessing would shift the mask by the bounds without a word."""
    if recorded is not None and recorded not in ((0, 0), origin):
        raise ZoomMILError(
            f"{where}: regions_geojson shifted the file by {recorded}, but this slide's bounds "
            f"start at {origin}: made for another slide?"
        )
    if frame is None and recorded is None and any(origin):
        raise ZoomMILError(
            f"{where}: the slide has OpenSlide bounds from {origin}, where QuPath puts its (0, 0), "
            "but TRIDENT and OpenSlide keep (0, 0), and the GeoJSON does not say whose it is: "
            "give --frame qupath (a QuPath export) or --frame openslide (TRIDENT, QuPath with "
            "--no-crop)"
        )
    offset = {"openslide": (0, 0), "qupath": origin, None: recorded or (0, 0)}[frame]
    if recorded is not None and offset != recorded:
        raise ZoomMILError(
            f"{where}: regions_geojson recorded a shift of {recorded} from OpenSlide's level 0, "
            f"--frame {frame} says {offset}: leave --frame out"
        )
    if not any(origin):
        return offset, "level-0 pixels (the slide has no OpenSlide bounds: every frame agrees)"
    how = f"--frame {frame}" if frame else f"the shift regions_geojson recorded, {recorded}"
    if any(offset):
        return offset, f"QuPath's, from the slide's bounds {origin}: moved by {offset} ({how})"
    return offset, f"OpenSlide's level 0, not QuPath's from the bounds {origin} ({how})"


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


def _load(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ZoomMILError(f"{path}: cannot read GeoJSON ({error})") from error


def read_polygons(
    path: str | Path, classes: Sequence[str] = (), data: Any = None
) -> list[list[np.ndarray]]:
    """The polygons of a GeoJSON file (or its parsed ``data``), each ``[outline, *holes]`` as
    float ``[n, 2]`` (x, y) as written; only features of ``classes`` when given (QuPath's
    classification name)."""
    data = _load(path) if data is None else data
    try:
        features = _features(data)
    except ZoomMILError as error:
        raise ZoomMILError(f"{path}: {error}") from None
    polygons = [
        [np.asarray(ring, dtype=np.float64)[:, :2] for ring in rings]
        for feature in features
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
    frame: str | None = None,
) -> tuple[Path, str]:
    """Write ``out``: the GeoJSON's regions as a mask of ``slide`` at about ``mask_mpp`` um/px
    (8: 1.25x, as `zoommil tissue` makes); return it and a note on the frame assumed.
    ``mpp``: the slide's level-0 um/px when its metadata has none; ``frame``: ``qupath`` or
    ``openslide``, whose origin the coordinates are from (see the module's doc)."""
    from zoommil.wsi.slide import open_with_mpp
    from zoommil.wsi.tissue import save_mask

    if frame not in (None, *FRAMES):
        raise ZoomMILError(f"--frame {frame}: one of {', '.join(FRAMES)}")
    handle, mpp0, source = open_with_mpp(slide, mpp, None)
    try:
        w0, h0 = (int(d) for d in handle.dimensions)
        origin = qupath_origin(handle.properties)
    finally:
        handle.close()
    data = _load(geojson)
    offset, note = frame_offset(frame, origin, recorded_offset(data), f"{slide}")
    polygons = [[r + offset for r in rings] for rings in read_polygons(geojson, classes, data)]
    factor = max(mask_mpp / mpp0, 1.0)
    shape = (max(1, round(h0 / factor)), max(1, round(w0 / factor)))
    mask = rasterize(polygons, (w0, h0), shape)
    params = {"geojson": str(geojson), "classes": list(classes), "offset_level0": list(offset)}
    metadata = {
        "zoommil.mask_mpp": repr(mpp0 * w0 / shape[1]),
        "zoommil.params": json.dumps(params),
        "zoommil.slide_mpp": repr(float(mpp0)),
        "zoommil.mpp_source": source,
        "zoommil.dimensions": json.dumps([w0, h0]),
    }
    return save_mask(out, mask, metadata), note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.interop.geojson_mask", description=__doc__.splitlines()[0]
    )
    parser.add_argument("slide", type=Path)
    parser.add_argument("geojson", type=Path, help="polygons in level-0 pixels")
    parser.add_argument(
        "--frame",
        choices=FRAMES,
        help="whose origin the coordinates are from, asked for only on a slide with OpenSlide "
        "bounds (MIRAX, ...): qupath (a QuPath export; its OpenSlide reader starts at the "
        "bounds) or openslide (TRIDENT, QuPath with --no-crop)",
    )
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
    add_version(parser)
    args = parser.parse_args(argv)
    done = run_checked(
        parser.prog,
        lambda: geojson_to_mask(
            args.geojson, args.slide, args.out, args.mask_mpp, args.mpp, args.classes, args.frame
        ),
        [args.out],
        [("slide", args.slide), ("GeoJSON", args.geojson)],
    )
    if done is None:
        return 2
    out, note = done
    print(f"{args.geojson} -> {out}; coordinates: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
