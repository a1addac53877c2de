"""Figure 4: the attention of every magnification over the slide, with the regions zoomed into.

Drawn on a `matplotlib.figure.Figure`, not pyplot (see `figure_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from zoommil.io.sheet import read_sheet
from zoommil.recipe import weights_note
from zoommil.reporting import attention, results
from zoommil.reporting.figure_files import save_figure
from zoommil.reporting.table_frames import display_name
from zoommil.reporting.table_notes import encoder_label

log = logging.getLogger(__name__)


def _thumbnail(
    path: str, mpp: float | None = None, max_side: int = 768
) -> tuple[np.ndarray, tuple[int, int]]:
    """The slide's thumbnail and level-0 size, read through `zoommil.wsi.pixels` as the heatmap
    of `zoommil predict` (at the mpp the prediction used)."""
    return attention.slide_thumbnail(path, mpp, max_side=max_side)


def _boxes(ax: Axes, step: Mapping[str, Any], sx: float, sy: float, **style: Any) -> None:
    side = float(step["side0"])
    for x, y in step["xy"]:
        ax.add_patch(Rectangle((x * sx, y * sy), side * sx, side * sy, fill=False, **style))


def attention_layout(predictions: Sequence[Mapping[str, Any]]) -> list[float]:
    """The magnifications that get a column: every one any prediction has attention for."""
    mags = {float(e["mag"]) for p in predictions for e in attention.attention_entries(p)}
    return sorted(mags)


def attention_figure(
    predictions: Sequence[str | Path],
    sheet: str | Path,
    outputs: Sequence[str | Path],
    method: str,
    dataset: str,
    weights: str,
    encoder: str | None = None,
    wanted: int | None = None,
) -> dict[str, Any]:
    """Figure 4: one row per slide: the thumbnail, then the attention of every magnification
    over the thumbnail, with the regions zoomed into outlined, and one colour bar; the title
    names the encoder whose features the model attended over, as Figure 3's and the tables'
    do. Returns the layout (rows, column titles, title, whether there is a colour bar, the
    notes) for checks.

    A slide whose prediction failed (a `zoommil predict --no-fail` marker) or whose thumbnail
    cannot be read is left out, with its whole reason in a note under the figure; with no
    slide left, the note takes the maps' place and says that the chosen slides failed (not
    "no test slides", which is what it says when none was chosen). Fewer slides than
    ``wanted`` (``figures.attention.n_slides``) are noted too: a split with 2 test slides
    drew 2 rows for 3 asked, without a word (review L)."""
    table = read_sheet(sheet).set_index("slide_id")
    predictions, loaded, thumbs, skipped = _usable_predictions(predictions, table)
    mags = attention_layout(loaded)
    n_rows, n_cols = max(1, len(loaded)), 1 + max(1, len(mags))
    fig = Figure(figsize=(3.3 * n_cols + 0.8, 2.7 * n_rows + 0.9))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    empty = None
    if not loaded:
        for ax in axes.ravel():
            ax.axis("off")
        empty = "no test slides to show"
        if skipped:
            empty = "no test slide could be shown: the chosen slides failed\n" + "\n".join(skipped)
        fig.text(0.5, 0.5, empty, ha="center", va="center", fontsize=8, wrap=True)
    image, shown = None, []
    for row, (path, prediction) in enumerate(zip(predictions, loaded, strict=True)):
        slide_id = _prediction_slide_id(Path(path), prediction, table)
        background, size0 = thumbs[row]
        thumb_size = (background.shape[1], background.shape[0])
        sx, sy = thumb_size[0] / size0[0], thumb_size[1] / size0[1]
        label = table.loc[slide_id, "label"] if slide_id in table.index else "?"
        shown.append((slide_id, str(label)))
        predicted = prediction.get("predicted", "?")
        selected = sorted(prediction.get("selected") or [], key=lambda e: float(e["mag"]))
        axes[row, 0].imshow(background)
        axes[row, 0].set_ylabel(f"{slide_id}\nlabel {label}\npredicted {predicted}", fontsize=8)
        for step in selected:
            _boxes(axes[row, 0], step, sx, sy, edgecolor="black", linewidth=0.8)
        by_mag = {float(e["mag"]): e for e in attention.attention_entries(prediction)}
        for col, mag in enumerate(mags, start=1):
            ax = axes[row, col]
            ax.imshow(background)
            entry = by_mag.get(mag)
            if entry is None:
                continue
            heat = attention.attention_map(entry, size0, thumb_size)
            image = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", alpha=0.7, vmin=0, vmax=1)
            for step in selected:
                if float(step["mag"]) <= mag:
                    _boxes(ax, step, sx, sy, edgecolor="cyan", linewidth=0.8)
    zoomed = any(p.get("selected") for p in loaded)  # ZoomMIL's; other models read every patch
    axes[0, 0].set_title("slide (boxes: regions zoomed into)" if zoomed else "slide", fontsize=8)
    archs = {str(p.get("arch")) for p in loaded}
    what = "per-patch probability" if archs == {"maxmil"} else "attention"  # MaxMIL's: no weights
    for col, mag in enumerate(mags, start=1):
        axes[0, col].set_title(f"{what} at {mag:g}x", fontsize=8)
    where = f"at {mags[0]:g}x" if len(mags) == 1 else "at every magnification"
    title = f"{dataset}: {display_name(method)} {what} {where}"
    if encoder is not None:
        title += f"\nencoder {encoder_label(encoder)}"  # its own line: fits 3 columns
    if note := weights_note(weights):
        title += f"\n{note}"
    fig.suptitle(title, fontsize=10)
    # room for the title's lines above the column titles (with one row, the default margin let
    # a three-line title run over them, review H2); before the colour bar, which takes its
    # room from the panels as they are then placed (set after it, the panels spread under it)
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - (0.3 + 0.19 * (title.count("\n") + 1)) / height)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
        # "low"/"high", not 0 and 1: the colours are each map's own min-max, and MaxMIL's 0-1
        # ticks beside "probability" read as probabilities that were 0.3-0.6 (review B)
        bar.set_ticks([0.0, 1.0], labels=["low", "high"], fontsize=7)
        what = attention.score_name(*loaded)
        bar.set_label(
            f"{what}\n(min-max per slide and magnification: relative within one map)", fontsize=8
        )
    footnotes = ["skipped: " + "; ".join(skipped)] if skipped and loaded else []
    if loaded and wanted is not None and len(loaded) < wanted:
        footnotes.append(
            f"{len(loaded)} of the {wanted} slides asked for (figures.attention.n_slides): the "
            "test split has no more that could be shown"
        )
    if footnotes:
        fig.text(0.01, 0.005, "\n".join(footnotes), fontsize=7, wrap=True)
    titles = [ax.get_title() for ax in axes[0]]
    save_figure(fig, outputs)
    panels = [ax.get_position() for ax in axes.ravel()]
    return {
        "rows": n_rows,
        "titles": titles,
        "title": title,
        "colorbar": image is not None,
        "colorbar_label": bar.ax.get_ylabel() if image is not None else None,
        "colorbar_ticks": (
            [t.get_text() for t in bar.ax.get_yticklabels()] if image is not None else []
        ),
        # the bar's box against the panels' (a layout change once put it over the last column)
        "colorbar_overlaps": image is not None
        and any(bar.ax.get_position().overlaps(box) for box in panels),
        "panels_top": max(box.y1 for box in panels),
        "skipped": skipped,
        "footnotes": footnotes,
        "empty": empty,
        "slides": shown,
    }


def _prediction_slide_id(path: Path, prediction: Mapping[str, Any], table: pd.DataFrame) -> str:
    """The sheet id of a prediction JSON: its file name where the sheet has it (the workflow
    writes results/predict/{method}/{slide_id}.json), else the id recorded in it.

    Why not the record first: `zoommil predict` recorded the slide file's name, which differs
    from the sheet id whenever a sheet names its slides (a figure row then showed another
    slide's thumbnail and label, or the file name with label '?')."""
    if path.stem in table.index:
        return path.stem
    return str(prediction.get("slide_id") or path.stem)


def _usable_predictions(
    predictions: Sequence[str | Path], table: pd.DataFrame
) -> tuple[list[Path], list[dict], list[tuple[np.ndarray, tuple[int, int]]], list[str]]:
    """The predictions that can be drawn (paths, loaded JSONs, thumbnails with their level-0
    size) and a note per slide that cannot (failed prediction, unreadable thumbnail)."""
    from zoommil.errors import SlideError
    from zoommil.workflow.failure import read_marker

    paths, loaded, thumbs, skipped = [], [], [], []
    for path in predictions:
        path = Path(path)
        failure = read_marker(path)
        if failure is not None:
            skipped.append(f"{path.stem} ({failure.stage}: {failure.reason})")
            continue
        prediction = results.load_json(path)
        slide_id = _prediction_slide_id(path, prediction, table)
        slide_path = prediction.get("slide")
        if slide_id in table.index:
            slide_path = table.loc[slide_id, "path"]
        try:
            thumb = _thumbnail(slide_path, prediction.get("mpp"))
        except Exception as error:  # any unreadable slide is skipped, noted
            reason = error.reason if isinstance(error, SlideError) else str(error)
            skipped.append(f"{slide_id} (figure: {reason})")
            continue
        paths.append(path)
        loaded.append(prediction)
        thumbs.append(thumb)
    for note in skipped:
        log.warning("attention figure: skipped %s", note)
    return paths, loaded, thumbs, skipped
