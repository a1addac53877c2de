"""A `zoommil predict` JSON -> GeoJSON that QuPath imports: the regions ZoomMIL zoomed into.

A pathologist reviews a prediction on the slide itself, not on a separate picture: each
region ZoomMIL selected at a zoom step becomes a locked annotation (classification
``Zoom step k``, in the heatmap's outline colour of that step) whose measurements are its
step, magnification, attention and selection score with their ranks; ``--attention`` adds
every scored patch of every magnification as a detection, which QuPath's measurement maps
colour like the heatmap (and which is what a baseline with attention has to show). Drag the
file onto the slide opened in QuPath (0.4 or later), or File > Import objects from file.

Coordinates are level-0 pixels of the slide as QuPath shows it: the prediction's (OpenSlide's
level 0), less the slide's ``openslide.bounds-x``/``-y`` where it has them (MIRAX and other
formats with an empty margin), since QuPath's OpenSlide reader shows only that bounding box.
The slide is looked for where the prediction says it is (``--slide`` elsewhere) for that;
``--no-crop`` keeps OpenSlide's coordinates (QuPath's ``--no-crop`` reader argument)::

    python -m zoommil.interop.regions_geojson PREDICTION.json --out REGIONS.geojson [--attention]

Nothing in the commands or the workflow imports this module: changing it reruns no rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.interop.tool import add_version, run_checked

#: The classification colour of each magnification's attention detections (grey: the
#: measurement map, not the class, is what colours them in a review).
ATTENTION_COLOUR = (128, 128, 128)


def box_ring(x: float, y: float, side: float) -> list[list[float]]:
    """The closed ring of the square ``side`` wide at top-left (``x``, ``y``), its vertices
    in the order RFC 7946 asks of an exterior ring: counter-clockwise by the right-hand rule
    in the coordinates as written (a positive shoelace area; with the image's y axis down,
    QuPath draws it clockwise, which it does not mind)."""
    x1, y1 = x + side, y + side
    return [[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]


def _ranks(values: Sequence[float]) -> list[int]:
    """1 for the highest of ``values``, 2 for the next, ... (ties: first come first)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks.tolist()


def _by_mag(entries: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """Entries (``selected`` or ``attention``) lowest magnification first, as the heatmap
    orders them: zoom step k is the k-th."""
    return sorted(entries or [], key=lambda e: float(e["mag"]))


def _polygon(x: float, y: float, side: float, offset: tuple[int, int]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [box_ring(x - offset[0], y - offset[1], side)]}


def _class(name: str, colour: Sequence[int]) -> dict[str, Any]:
    """QuPath's classification: its reader needs the colour beside the name."""
    return {"name": name, "color": [int(c) for c in colour]}


def region_features(
    prediction: Mapping[str, Any], offset: tuple[int, int] = (0, 0)
) -> list[dict[str, Any]]:
    """One locked annotation per region ZoomMIL zoomed into (``selected``), step by step,
    with the step's attention (and selection score) of that patch, looked up by its xy in
    the ``attention`` entry of the same magnification."""
    from zoommil.reporting.attention import OUTLINE_COLOURS

    attention = {float(e["mag"]): e for e in _by_mag(prediction.get("attention"))}
    mags = sorted(attention)
    features = []
    for k, step in enumerate(_by_mag(prediction.get("selected")), start=1):
        mag, side = float(step["mag"]), step["side0"]
        entry = attention.get(mag)
        if entry is None:
            raise ZoomMILError(f"zoom step {k} ({mag:g}x) has no attention entry of its mag")
        where = {tuple(int(v) for v in xy): i for i, xy in enumerate(entry["xy"])}
        weights = [float(w) for w in entry["weights"]]
        scores = entry.get("selection_scores")
        attention_rank = _ranks(weights)
        selection_rank = _ranks(scores) if scores else None
        higher = [m for m in mags if m > mag]
        colour = OUTLINE_COLOURS[(k - 1) % len(OUTLINE_COLOURS)]
        for x, y in step["xy"]:
            i = where.get((int(x), int(y)))
            if i is None:
                raise ZoomMILError(
                    f"zoom step {k}: region at ({x}, {y}) is not among the {mag:g}x patches "
                    "with attention (an edited or truncated prediction JSON?)"
                )
            measurements = {
                "Zoom step": k,
                "Magnification": mag,
                "Zoomed to magnification": higher[0] if higher else None,
                "Attention": weights[i],
                "Attention rank": attention_rank[i],
                "Selection score": float(scores[i]) if scores else None,
                "Selection rank": selection_rank[i] if selection_rank else None,
                "Patch side (level-0 px)": float(side),
                "Patches at this magnification": len(weights),
            }
            features.append(
                {
                    "type": "Feature",
                    "geometry": _polygon(x, y, side, offset),
                    "properties": {
                        "objectType": "annotation",
                        "name": f"Step {k} ({mag:g}x), attention #{attention_rank[i]}",
                        "classification": _class(f"Zoom step {k}", colour),
                        "isLocked": True,
                        "measurements": {
                            key: value for key, value in measurements.items() if value is not None
                        },
                    },
                }
            )
    return features


def attention_features(
    prediction: Mapping[str, Any], offset: tuple[int, int] = (0, 0)
) -> list[dict[str, Any]]:
    """One detection per patch with attention, each magnification its own classification
    (``Attention 5x``), with the raw weight and the heatmap's min-max scaled one."""
    from zoommil.reporting.attention import scaled_weights

    features = []
    for entry in _by_mag(prediction.get("attention")):
        mag, side = float(entry["mag"]), entry["side0"]
        weights = np.asarray(entry["weights"], dtype=np.float64)
        scaled = scaled_weights(weights)
        ranks = _ranks(weights)
        label = f"Attention {mag:g}x" + (f" (class {entry['class']})" if "class" in entry else "")
        for (x, y), weight, fraction, rank in zip(entry["xy"], weights, scaled, ranks, strict=True):
            features.append(
                {
                    "type": "Feature",
                    "geometry": _polygon(x, y, side, offset),
                    "properties": {
                        "objectType": "detection",
                        "classification": _class(label, ATTENTION_COLOUR),
                        "measurements": {
                            "Magnification": mag,
                            "Attention": float(weight),
                            "Attention (min-max scaled)": float(fraction),
                            "Attention rank": rank,
                        },
                    },
                }
            )
    return features


def prediction_geojson(
    prediction: Mapping[str, Any],
    attention: bool = False,
    offset: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The FeatureCollection of a prediction: its zoom steps' regions, and with
    ``attention`` every scored patch; the slide's class and probabilities ride along as a
    foreign member (RFC 7946 6.1; QuPath ignores it)."""
    if prediction.get("status") not in (None, "ok"):
        raise ZoomMILError(
            f"the slide was not classified (status {prediction['status']}: "
            f"{prediction.get('reason', 'no reason recorded')}): no regions to show"
        )
    if "probabilities" not in prediction:
        raise ZoomMILError("not a `zoommil predict` JSON (no probabilities)")
    if isinstance(prediction.get("ensemble"), Mapping):
        # its own `selected` and `attention` are empty: each seed zoomed into its own regions
        raise ZoomMILError(
            f"a seed ensemble's prediction ({len(prediction.get('checkpoints') or [])} "
            "checkpoints) has no regions or attention of its own, only each checkpoint's "
            "(under 'checkpoints'): run zoommil predict with one --checkpoint for QuPath"
        )
    features = region_features(prediction, offset)
    if attention:
        if not prediction.get("attention"):
            raise ZoomMILError(
                f"method {prediction.get('method')} records no attention (MeanMIL and "
                "SparseConvMIL weigh patches equally)"
            )
        features += attention_features(prediction, offset)
    elif not features:
        raise ZoomMILError(
            f"method {prediction.get('method')} zooms into no regions (only ZoomMIL does); "
            "--attention writes its attention over the patches instead"
        )
    keys = ("slide_id", "method", "predicted", "probabilities", "checkpoint_sha256", "mpp")
    summary = {key: prediction.get(key) for key in keys}
    summary["offset_level0"] = list(offset)
    return {"type": "FeatureCollection", "features": features, "zoommil": summary}


def qupath_offset(slide: str | Path, quickhash: str | None = None) -> tuple[int, int]:
    """(bounds-x, bounds-y) of ``slide`` (0, 0 without bounds): where QuPath's OpenSlide
    reader puts its origin (`geojson_mask.qupath_origin`). A slide of another quickhash than
    the prediction's is refused: the regions would be drawn on the wrong slide."""
    from zoommil.interop.geojson_mask import qupath_origin
    from zoommil.wsi.slide import open_slide
    from zoommil.wsi.slide import quickhash as slide_hash

    handle = open_slide(slide, test_read=False)
    try:
        found = slide_hash(handle)
        if quickhash and found and found != quickhash:
            raise ZoomMILError(
                f"{slide}: another slide than the prediction's (quickhash {found[:12]}, the "
                f"prediction's {quickhash[:12]}); give --slide with the slide it classified"
            )
        return qupath_origin(handle.properties)  # geojson_mask's, so a round trip agrees
    finally:
        handle.close()


def _slide_of(prediction: Mapping[str, Any], given: Path | None) -> Path | None:
    """The slide file: ``given``, else the prediction's resolved path, else its path as given
    to predict; None where none of them exists."""
    if given is not None:
        return given
    for key in ("slide_path", "slide"):
        if prediction.get(key) and Path(prediction[key]).is_file():
            return Path(prediction[key])
    return None


def convert(
    prediction_path: str | Path,
    out: str | Path,
    attention: bool = False,
    slide: Path | None = None,
    no_crop: bool = False,
) -> tuple[Path, dict[str, Any], str]:
    """Write ``out`` from ``prediction_path``; return it, the collection and a note on the
    coordinates (how they relate to the slide's level 0)."""
    from zoommil.io.atomic import write_text_atomic

    try:
        prediction = json.loads(Path(prediction_path).read_text())
    except (OSError, ValueError) as error:
        raise ZoomMILError(f"{prediction_path}: cannot read the prediction ({error})") from error
    if not isinstance(prediction, dict):
        raise ZoomMILError(f"{prediction_path}: not a `zoommil predict` JSON")
    offset, note = (0, 0), "OpenSlide level-0 pixels (--no-crop)"
    if not no_crop:
        found = _slide_of(prediction, slide)
        if found is None:
            note = (
                f"OpenSlide level-0 pixels: slide {prediction.get('slide_path')} not found, so "
                "its bounds were not checked (QuPath shows MIRAX slides from their bounds: "
                "give --slide)"
            )
        else:
            offset = qupath_offset(found, prediction.get("slide_quickhash"))
            shift = (
                f", less the slide's bounds offset {offset}: QuPath's frame with its OpenSlide "
                "reader (--no-crop if QuPath opened the slide with --no-crop or Bio-Formats)"
            )
            note = "level-0 pixels" + (shift if any(offset) else "")
    try:
        collection = prediction_geojson(prediction, attention, offset)
    except ZoomMILError as error:  # name the file: a batch converts many
        raise ZoomMILError(f"{prediction_path}: {error}") from None
    # compact: a slide's attention layer is thousands of squares
    text = json.dumps(collection, allow_nan=False, separators=(",", ":")) + "\n"
    return write_text_atomic(out, text), collection, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.interop.regions_geojson",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument("prediction", type=Path, help="a `zoommil predict` JSON")
    parser.add_argument("--out", type=Path, required=True, help="GeoJSON file to write")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="also every patch with attention, as detections (QuPath: Measure > Show "
        "measurement maps > Attention); a baseline has only these",
    )
    parser.add_argument(
        "--slide", type=Path, help="the slide file, where it is not at the prediction's path"
    )
    parser.add_argument(
        "--no-crop",
        action="store_true",
        help="keep OpenSlide's level-0 coordinates for a slide with bounds (QuPath opened it "
        "with --no-crop)",
    )
    add_version(parser)
    args = parser.parse_args(argv)
    done = run_checked(
        parser.prog,
        lambda: convert(args.prediction, args.out, args.attention, args.slide, args.no_crop),
        [args.out],
        [("prediction", args.prediction), ("slide", args.slide)],
    )
    if done is None:
        return 2
    out, collection, note = done
    kinds = [f["properties"]["objectType"] for f in collection["features"]]
    print(
        f"{args.prediction} -> {out}: {kinds.count('annotation')} regions zoomed into, "
        f"{kinds.count('detection')} attention patches; coordinates: {note}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
