"""The one attention renderer: `zoommil predict --heatmap` and Figure 4 draw with it.

Attention weights are painted over the patches they belong to (`attention_map`: one grid per
magnification, min-max scaled), and the regions ZoomMIL zoomed into are outlined, so a person
can see where the model looked. `predict --heatmap` blends each magnification's map over the
thumbnail (`attention_overlay`), one panel per magnification, above a legend that says what
the colour and the boxes are (`legend`); Figure 4 draws the same maps with matplotlib.
Slides are opened and read only through `zoommil.wsi.slide` and `zoommil.wsi.pixels`. A
heatmap of random encoder weights carries the note in a caption band under the map (every
format) and, as a PNG, in a text chunk.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps

from zoommil.errors import ZoomMILError
from zoommil.io.atomic import write_bytes_atomic
from zoommil.recipe import weights_note
from zoommil.reporting.names import display_name
from zoommil.workflow.failure import IMAGE_SUFFIXES
from zoommil.wsi.pixels import read_thumbnail_at_mpp
from zoommil.wsi.slide import open_with_mpp

#: The zoom steps' box colours (step 1 first) and their names in the legend, each drawn over a
#: black casing (`OUTLINE_CASING`). Green, blue and orange were: green and orange one grey
#: (CIELAB L* 70 and 69) and one olive to a protan or deutan reader (dE 13-14, Machado et al.
#: 2009), and orange vanished on the orange to pale yellow of inferno's top, where the top K
#: lie. White, Okabe-Ito's sky blue and blue sit outside inferno's hues, at L* 100, 70 and 46
#: (apart in grayscale), dE >= 24 apart in normal and dichromat vision; the casing keeps a
#: box seen on the pale map and tissue, the light core on the dark.
OUTLINE_COLOURS = ((255, 255, 255), (86, 180, 233), (0, 114, 178))
OUTLINE_NAMES = ("white", "sky blue", "blue")
OUTLINE_CASING = (0, 0, 0)

#: Image files a heatmap can be: OpenCV picks its encoder by the suffix. The same list as the
#: image failure markers of `zoommil.workflow.failure`, so every heatmap can be marked failed.
HEATMAP_SUFFIXES = IMAGE_SUFFIXES


def check_heatmap_path(path: str | Path) -> None:
    """Refuse a heatmap name OpenCV cannot write (.pdf, .svg, none) before any slide is read:
    `cv2.imwrite` raised a `cv2.error` only after the slide was encoded and the JSON written."""
    suffix = Path(path).suffix.lower()
    if suffix not in HEATMAP_SUFFIXES or not cv2.haveImageWriter(f"heatmap{suffix}"):
        raise ZoomMILError(
            f"--heatmap {path}: not an image file name ({suffix or 'no suffix'}); a heatmap is "
            f"written as {', '.join(HEATMAP_SUFFIXES)}"
        )


def slide_thumbnail(
    slide_path: str | Path, mpp: float | None = None, max_side: int = 1024
) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB thumbnail of at most ``max_side`` px and the slide's level-0 (width, height)."""
    slide, mpp0, _ = open_with_mpp(slide_path, mpp)
    try:
        width, height = slide.dimensions
        target = mpp0 * max(1.0, max(width, height) / max_side)
        thumb = read_thumbnail_at_mpp(slide, mpp0, target)
    finally:
        slide.close()
    return thumb, (int(width), int(height))


def attention_entries(prediction: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The attention of every magnification of a `zoommil predict` result, lowest first."""
    return sorted(prediction.get("attention") or [], key=lambda e: float(e["mag"]))


def scaled_weights(weights: np.ndarray) -> np.ndarray:
    """One map's weights as they are painted: min-max scaled within the map, 0.5 (the middle
    colour) where all are equal, as they rank nothing. The heatmap, Figure 4's source data
    and QuPath's scaled measurement all take it from here, so they agree."""
    if weights.size == 0:
        return weights
    span = weights.max() - weights.min()
    return (weights - weights.min()) / span if span > 0 else np.full_like(weights, 0.5)


def attention_map(
    entry: Mapping[str, Any], level0_size: tuple[int, int], thumb_size: tuple[int, int]
) -> np.ndarray:
    """One magnification's attention (``entry``: xy, side0, weights) painted on a [H, W] grid
    of the thumbnail; NaN where it has no patch.

    Weights are min-max scaled per slide and magnification, as attention is only comparable
    within one softmax (equal weights, e.g. one patch: all 0.5, the middle colour, as they rank
    nothing). Both the heatmap and Figure 4 paint with this.
    """
    width0, height0 = level0_size
    width, height = thumb_size
    heat = np.full((height, width), np.nan, dtype=np.float32)
    if not entry or not entry.get("weights"):
        return heat
    weights = scaled_weights(np.asarray(entry["weights"], dtype=np.float64))
    sx, sy = width / width0, height / height0
    side = float(entry["side0"])
    for (x, y), w in zip(entry["xy"], weights, strict=True):
        c0, r0 = int(math.floor(x * sx)), int(math.floor(y * sy))
        c1 = max(c0 + 1, int(math.ceil((x + side) * sx)))
        r1 = max(r0 + 1, int(math.ceil((y + side) * sy)))
        heat[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = w
    return heat


#: What the colour of a heatmap is, by architecture (others: "attention").
SCORE_NAMES = {
    "zoommil": "pooling attention",
    "maxmil": "per-patch probability of a class",
    "dsmil": "attention to the critical patch",
    "transmil": "class-token attention",
}
PANEL_GAP = 8  # white pixels between two magnifications' panels


def render(
    prediction: Mapping[str, Any],
    slide_path: str | Path,
    mpp: float | None = None,
    max_side: int = 1024,
    steps: int | None = None,
) -> np.ndarray:
    """RGB image of the prediction: per magnification with attention (lowest first), the
    thumbnail with that magnification's map, titled, and the regions of the first ``steps``
    zoom steps (all when None) outlined where they were chosen at or below it; under the
    panels, the `legend`. ``mpp``: the level-0 um/px to read the slide at; default: the one
    the prediction resolved (its ``mpp``), so a slide classified with `--mpp` or
    `--default-mpp` is drawn without it.

    Every magnification, not the lowest alone: ZoomMIL's class comes from all of them, and the
    highest's attention (over the regions it zoomed into) was in the JSON only."""
    mpp = prediction.get("mpp") if mpp is None else mpp
    thumb, size0 = slide_thumbnail(slide_path, mpp, max_side)
    selected = attention_entries({"attention": prediction.get("selected") or []})[:steps]
    panels = []
    for entry in attention_entries(prediction) or [{}]:
        mag = float(entry.get("mag", math.inf))
        shown = [step for step in selected if float(step["mag"]) <= mag]
        panel = attention_overlay(thumb, size0, entry, shown)
        panels.append(_titled(panel, f"{mag:g}x" if entry else "no attention"))
    gap = np.full((panels[0].shape[0], PANEL_GAP, 3), 255, np.uint8)
    row = np.hstack([part for panel in panels for part in (gap, panel)][1:])
    return np.vstack([row, legend(prediction, row.shape[1], len(selected))])


def _titled(panel: np.ndarray, title: str, scale: float = 0.45) -> np.ndarray:
    """``panel`` under a white strip holding ``title``."""
    (_, height), baseline = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = np.full((height + baseline + 8, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(
        strip, title, (4, height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.vstack([strip, panel])


def legend(prediction: Mapping[str, Any], width: int, steps: int) -> np.ndarray:
    """A band ``width`` wide: the colour bar (low to high) over `legend_text`."""
    bar = np.full((26, width, 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    left = 4 + cv2.getTextSize("low", font, scale, 1)[0][0] + 6
    length = min(256, width - left - 40)
    if length >= 16:  # a narrow map (a strip of a slide) gets a bar of the map's own width
        cv2.putText(bar, "low", (4, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(bar, "high", (left + length + 6, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    else:
        left, length = 0, width
    ramp = colormaps["inferno"](np.linspace(0.0, 1.0, length))[:, :3] * 255.0
    bar[6:20, left : left + length] = ramp.astype(np.uint8)[None]
    return captioned(bar, legend_text(prediction, steps))


def legend_text(prediction: Mapping[str, Any], steps: int) -> str:
    """What a heatmap shows: the slide's prediction, the score the colour is (`score_name`)
    and its scaling, and, for ``steps`` zoom steps, which outline colour is which step and
    what chose the regions (`SELECTED_BY`)."""
    probs = prediction.get("probabilities") or {}
    predicted = prediction.get("predicted")
    text = f"{prediction.get('slide_id', '')}: predicted {predicted}"
    if predicted in probs:
        text += f" (p = {float(probs[predicted]):.2f})"
    text += (
        f". Colour: {model_name(prediction)}'s "
        f"{score_name(prediction)}, min-max scaled per slide and magnification (relative "
        "within one map, not a probability; the middle colour where all patches are equal)."
    )
    if steps:
        names = OUTLINE_NAMES
        outlines = ", ".join(f"{names[k % len(names)]} step {k + 1}" for k in range(steps))
        chosen = SELECTED_BY.get(str(prediction.get("selected_by")), "")
        text += f" Boxes: regions zoomed into ({outlines}){chosen}."
    return text


def model_name(prediction: Mapping[str, Any]) -> str:
    """The model as the tables name it (`display_name`: "ZoomMIL", not the config key
    "zoommil"), from the prediction's method, else its arch."""
    method = prediction.get("method") or prediction.get("arch")
    return display_name(str(method)) if method else "the model"


#: How ZoomMIL's boxes were chosen, by the prediction's ``selected_by``.
SELECTED_BY = {
    "selection attention": ", the top K of the selection score ('selection_scores' in the "
    "JSON), not of the colour",
    "pooling attention": ", the top K of the colour (one attention scores and selects)",
    "random": ", drawn at random (a random-selection ablation), not by any score",
}


def score_name(*predictions: Mapping[str, Any]) -> str:
    """What the predictions' attention weights are (`SCORE_NAMES`, by the first one's arch),
    with the class they are of where the model names one (MaxMIL, DSMIL): a legend of
    "probability" alone did not say of which class, and one class named for rows of several
    (Figure 4) was wrong for the others."""
    name = SCORE_NAMES.get(str(predictions[0].get("arch")), "attention") if predictions else ""
    shown = {e.get("class") for p in predictions for e in attention_entries(p)} - {None}
    if len(shown) > 1:
        return f"{name} (each slide's predicted class)"
    return f"{name} (class {shown.pop()})" if shown else name or "attention"


def attention_overlay(
    thumb: np.ndarray,
    level0_size: tuple[int, int],
    attention: Mapping[str, Any],
    selected: Sequence[Mapping[str, Any]] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend ``attention`` (one magnification, painted by `attention_map`) over ``thumb`` with
    the inferno colour map, and outline the ``selected`` regions (per zoom step: xy, side0) in
    that step's `OUTLINE_COLOURS` over a black casing."""
    height, width = thumb.shape[:2]
    heat = attention_map(attention, level0_size, (width, height))
    out = thumb.astype(np.float32).copy()
    painted = ~np.isnan(heat)
    colours = colormaps["inferno"](heat[painted])[:, :3] * 255.0
    out[painted] = (1 - alpha) * out[painted] + alpha * colours
    out = np.clip(out, 0, 255).astype(np.uint8)
    scale = width / level0_size[0]
    for k, step in enumerate(selected):
        colour = OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]
        side = step["side0"] * scale
        for x, y in step["xy"]:
            p0 = (int(round(x * scale)), int(round(y * scale)))
            p1 = (int(round(x * scale + side)) - 1, int(round(y * scale + side)) - 1)
            # thin on any scale: a box of a small slide's thumbnail was a band over the tissue
            thickness = min(3, max(1, int(round(side / 24))))
            cv2.rectangle(out, p0, p1, OUTLINE_CASING, thickness=thickness + 2)
            cv2.rectangle(out, p0, p1, colour, thickness=thickness)
    return out


def captioned(image: np.ndarray, text: str, scale: float = 0.4) -> np.ndarray:
    """``image`` (RGB) with a white band below it holding ``text`` in black, wrapped at word
    boundaries to the image's width: the map's own pixels stay as they are, and the note is
    seen in any format and in any copy of the picture (metadata is dropped by many tools)."""
    font, thickness, margin = cv2.FONT_HERSHEY_SIMPLEX, 1, 4
    width = image.shape[1]
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        fits = cv2.getTextSize(joined, font, scale, thickness)[0][0] <= width - 2 * margin
        if lines and fits:
            lines[-1] = joined
        else:
            lines.append(word)
    (_, height), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    step = height + baseline + margin
    band = np.full((margin + step * len(lines), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        origin = (margin, margin + height + i * step)
        cv2.putText(band, line, origin, font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.vstack([image, band])


def save_heatmap(
    path: str | Path,
    slide_path: str | Path,
    prediction: Mapping[str, Any],
    mpp: float | None = None,
) -> Path:
    """Write the attention maps of a `zoommil predict` result (`render`: every magnification
    and a legend) as an image (PNG, JPEG, ... by the suffix of ``path``); random encoder
    weights (the prediction's ``weights``) add `captioned`'s band and, in a PNG, the text
    chunk ``zoommil.weights_note``. A prediction without attention is a `ZoomMILError`."""
    check_heatmap_path(path)
    if not attention_entries(prediction):  # a bare thumbnail would read as "no attention"
        raise ZoomMILError(
            f"{slide_path}: the prediction has no attention to draw (arch "
            f"{prediction.get('arch', '?')}: MeanMIL and SparseConvMIL weigh every patch alike)"
        )
    image = render(prediction, slide_path, mpp)
    note = weights_note(prediction.get("weights"))
    if note:
        image = captioned(image, note)
    suffix = Path(path).suffix.lower()
    if note and suffix == ".png":
        data = _png_with_note(image, note)
    else:
        encoded, buffer = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not encoded:
            raise ZoomMILError(f"{path}: cannot encode the heatmap image")
        data = buffer.tobytes()
    # encoded in memory, written by Python: `cv2.imwrite` reported a file cut short by a full
    # disk or a file-size limit as written when the last buffered block was the one lost
    return write_bytes_atomic(path, data)


def _png_with_note(image: np.ndarray, note: str) -> bytes:
    """A PNG with ``note`` as the text chunk ``zoommil.weights_note`` (OpenCV writes none)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("zoommil.weights_note", note)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
