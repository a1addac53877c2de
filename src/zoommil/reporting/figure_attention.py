"""Figure 4: the attention of every magnification over the slide, with the regions zoomed into.

Drawn on a `matplotlib.figure.Figure`, not pyplot (see `figure_files`).
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from zoommil.io.sheet import read_sheet
from zoommil.recipe import weights_note
from zoommil.reporting import attention, results
from zoommil.reporting.figure_data import write_source_csv
from zoommil.reporting.figure_files import save_figure, save_pages
from zoommil.reporting.table_frames import display_name
from zoommil.reporting.table_notes import encoder_label

log = logging.getLogger(__name__)

#: A two-column page's text width is ~7.1 in: the figure is drawn at that size with 7-9 pt
#: text, as Figure 3 (an 8.6 in figure printed its 7-8 pt text at ~6 pt).
WIDTH = 6.9  # inches: ~7.0 saved (`save_figure` crops to the drawn and pads 0.1 in)
LABEL_MARGIN = 0.5  # inches left of the maps: the rows' slide labels (3 lines)
TITLE_SIZE = 9  # points
LABEL_SIZE = 8  # points: the column titles
NOTE_SIZE = 7  # points: the row labels, the colour bar and the notes
ROW_GAP = 0.08  # inches: the least room a row label needs beyond its own length
#: A journal page's room for a figure 7 in wide (with its legend below it): more rows go on
#: further pages (`_paginate`).
MAX_HEIGHT = 9.0  # inches, as saved
MIN_WIDTH = 4.5  # inches: the narrowest a figure is drawn to keep its rows on one page
#: Under the cyan boxes over the maps: cyan (L* 91) on inferno's pale yellow top, where the
#: regions zoomed into lie, and on glass was one grey in print; a black casing shows the box
#: on any part of the map, as the heatmap's boxes (`attention.OUTLINE_CASING`).
BOX_CASING = (patheffects.withStroke(linewidth=2.2, foreground="black"),)
#: What Figure 4 says where the config leaves it out.
OFF = "left out: figures.attention.method is null"


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


def _panel_width(n_cols: int, width: float = WIDTH) -> float:
    """Inches one map gets at ``width`` (an estimate before the layout)."""
    return (width - LABEL_MARGIN) / n_cols - 0.08


def _wrap(text: str, chars: int, hyphens: bool = False) -> str:
    """``text`` in lines of at most ``chars`` characters; with ``hyphens`` also after a hyphen
    or an underscore (a slide id: TCGA-CR-7395-01A-01-TS1), a word kept whole."""
    if not hyphens:
        return textwrap.fill(text, chars)
    words = re.split(r"(?<=[-_])|\s+", text)
    lines = [""]
    for word in words:
        joined = lines[-1] + ("" if lines[-1].endswith(("-", "_")) or not lines[-1] else " ")
        if lines[-1] and len(joined + word) > chars:
            lines.append(word)
        else:
            lines[-1] = joined + word
    return "\n".join(lines)


def _fit_text(text: Text, lines: Sequence[str], length: float, upwards: bool = False) -> None:
    """Wrap ``lines`` into ``text`` so that it runs at most ``length`` inches (along its
    width, or its height when written ``upwards``), as far as a word allows: a column title
    wider than its map ran into the next one's, a long slide id past its row's maps into the
    next row's label. Measured: an estimate per character misjudged capitals and digits."""
    chars = max(len(line) for line in lines)
    while True:
        text.set_text("\n".join(_wrap(line, chars, hyphens=upwards) for line in lines))
        box = text.get_window_extent()
        run = (box.height if upwards else box.width) / text.figure.dpi
        if run <= length or chars <= 8:
            return
        chars -= 1


def _first_height(aspects: Sequence[float], n_cols: int, width: float = WIDTH) -> float:
    """Inches: the rows' maps at `_panel_width` plus the title, column titles and colour bar;
    `_fit_height` corrects it once the layout is known."""
    return _panel_width(n_cols, width) * sum(aspects) + 1.6


def _fit_height(
    fig: Figure,
    axes: np.ndarray,
    aspects: Sequence[float],
    labels: Sequence[Sequence[str]],
    heads: Sequence[str],
    passes: int = 5,
) -> None:
    """Set the figure's height and the rows' heights so that every map fills its panel's width
    (a map of fixed aspect fills either the width or the height of the panel it is given; a
    fixed figsize left empty bands between the rows). The column titles are wrapped to the
    maps' width, each row's label (its lines: slide id, label, prediction) to its maps'
    height; a row is no lower than a label that cannot wrap shorter. Each
    pass corrects by what the last layout left over; margins barely move, so a few passes
    meet to a hundredth of an inch."""
    for _ in range(passes):
        fig.draw_without_rendering()
        height = fig.get_figheight()
        cells = [row[0].get_position(original=True) for row in axes]
        for ax, head in zip(axes[0], heads, strict=False):
            _fit_text(ax.title, [head], cells[0].width * fig.get_figwidth())
        wanted = []
        for cell, aspect, row, lines in zip(cells, aspects, axes, labels, strict=True):
            maps = cell.width * fig.get_figwidth() * aspect
            _fit_text(row[0].yaxis.label, lines, maps, upwards=True)
            wanted.append(max(maps, _label_height(row[0]) + ROW_GAP))
        change = sum(wanted) - sum(cell.height * height for cell in cells)
        axes[0, 0].get_gridspec().set_height_ratios(wanted)
        fig.set_figheight(height + change)
        if abs(change) < 0.01:
            return
    fig.draw_without_rendering()


def _label_height(ax: Axes) -> float:
    """Inches the row label beside ``ax`` runs along it (written upwards: its length)."""
    return ax.yaxis.label.get_window_extent().height / ax.figure.dpi


def attention_layout(predictions: Sequence[Mapping[str, Any]]) -> list[float]:
    """The magnifications that get a column: every one any prediction has attention for."""
    mags = {float(e["mag"]) for p in predictions for e in attention.attention_entries(p)}
    return sorted(mags)


def attention_figure(
    predictions: Sequence[str | Path],
    sheet: str | Path,
    outputs: Sequence[str | Path],
    method: str | None,
    dataset: str,
    weights: str,
    encoder: str | None = None,
    wanted: int | None = None,
    source: str | Path | None = None,
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
    drew 2 rows for 3 asked, without a word (review L). More rows than a page holds go on
    further pages (`_paginate`).

    ``method`` None (``figures.attention.method: null``) draws no maps: the figure says it
    is left out, as the ablation table says "no ablations configured", so that the figure
    an earlier config drew is not left beside the new results.

    ``source``: a CSV of every region drawn (`source_data`), with the title and notes."""
    if method is None:
        title = f"{dataset}: Figure 4 (attention maps)"
        _write_source(source, source_data([], {}, []), [title, OFF])
        return _empty_figure(OFF, [], outputs, title)
    table = read_sheet(sheet).set_index("slide_id")
    predictions, loaded, thumbs, skipped = _usable_predictions(predictions, table)
    if not loaded:
        empty = "no test slides to show: the test split has no slide that QC kept"
        if skipped:
            empty = "no test slide could be shown: the chosen slides failed\n" + "\n".join(skipped)
        title = _title(dataset, method, "attention", encoder, weights)
        _write_source(source, source_data([], {}, []), [title, empty])
        return _empty_figure(empty, skipped, outputs, title)
    mags = attention_layout(loaded)
    zoomed = any(p.get("selected") for p in loaded)  # ZoomMIL's; other models read every patch
    archs = {str(p.get("arch")) for p in loaded}
    what = "per-patch probability" if archs == {"maxmil"} else "attention"  # MaxMIL's: no weights
    heads = ["slide (boxes: regions zoomed into)" if zoomed else "slide"]
    heads += [f"{what} at {mag:g}x" for mag in mags]
    where = f"at {mags[0]:g}x" if len(mags) == 1 else "at every magnification"
    title = _title(dataset, method, f"{what} {where}", encoder, weights)
    footnotes = ["skipped: " + "; ".join(skipped)] if skipped else []
    if wanted is not None and len(loaded) < wanted:
        footnotes.append(
            f"{len(loaded)} of the {wanted} slides asked for (figures.attention.n_slides): the "
            "test split has no more that could be shown"
        )
    rows = [
        (_prediction_slide_id(Path(path), prediction, table), prediction, thumb)
        for path, prediction, thumb in zip(predictions, loaded, thumbs, strict=True)
    ]

    def draw(
        page_rows: Sequence[Row], notes: Sequence[str], width: float = WIDTH
    ) -> tuple[Figure, dict[str, Any]]:
        return _draw_page(page_rows, table, mags, heads, title, notes, width)

    pages = _paginate(rows, 1 + max(1, len(mags)), footnotes, draw)
    save_pages([fig for fig, _ in pages], outputs)
    labels = {i: str(table.loc[i, "label"]) for i, *_ in rows if i in table.index}
    shown = source_data(rows, labels, [page["rows"] for _, page in pages])
    _write_source(source, shown, [title, *footnotes])
    layout = {k: v for k, v in pages[0][1].items() if k not in ("note", "size")}
    return {
        **layout,
        "rows": len(rows),
        "pages": len(pages),
        "page_rows": [page["rows"] for _, page in pages],
        "page_sizes": [page["size"] for _, page in pages],
        "skipped": skipped,
        "slides": [shown for _, page in pages for shown in page["slides"]],
    }


#: One slide's row: its sheet id, its prediction and its thumbnail with the level-0 size.
Row = tuple[str, Mapping[str, Any], tuple[np.ndarray, tuple[int, int]]]


def _paginate(
    rows: Sequence[Row],
    n_cols: int,
    footnotes: Sequence[str],
    draw: Any,
) -> list[tuple[Figure, dict[str, Any]]]:
    """The rows drawn on pages of at most `MAX_HEIGHT` inches, each as many rows as fit (at
    least one), with a note per page saying which slides it holds: 12 slides of the demo's
    4:3 drew one figure 21 in tall at 7 in wide, past any journal page. Rows that fit one
    page at a width of at least `MIN_WIDTH` are drawn so instead (`_narrower`); one page
    needs no note. Shrinking more rows onto a page would leave maps too small to read."""
    fig, layout = draw(rows, footnotes)
    if layout["size"][1] <= MAX_HEIGHT:
        return [(fig, layout)]
    if narrower := _narrower(rows, footnotes, layout["size"][1], draw):
        return [narrower]
    if len(rows) == 1:
        return [(fig, layout)]
    aspects = [thumb.shape[0] / thumb.shape[1] for _, _, (thumb, _) in rows]
    # as long as the note it becomes: on a narrower page (a tall slide's) it takes two lines
    placeholder = _page_note(len(rows), len(rows), len(rows), len(rows), len(rows))

    def split(cap: int) -> list[tuple[Figure, dict[str, Any], int, int]]:
        """Pages of at most ``cap`` rows, each as many as fit (the estimate, then drawn)."""
        pages, start = [], 0
        while start < len(rows):
            count = 1
            while (
                count < cap
                and start + count < len(rows)
                and _first_height(aspects[start : start + count + 1], n_cols) <= MAX_HEIGHT
            ):
                count += 1
            notes = [*footnotes, placeholder]
            while True:
                fig, layout = draw(rows[start : start + count], notes)
                if count == 1 or layout["size"][1] <= MAX_HEIGHT:
                    break
                count -= 1
            if layout["size"][1] > MAX_HEIGHT:  # one row: a slide over ~3.5 times its width
                narrower = _narrower(rows[start : start + 1], notes, layout["size"][1], draw)
                fig, layout = narrower or (fig, layout)
            pages.append((fig, layout, start, count))
            start += count
        return pages

    pages = split(len(rows))
    even = -(-len(rows) // len(pages))  # 20 rows: 7, 7, 6 rather than 9, 9, 2
    if max(count for *_, count in pages) > even:
        pages = split(even)
    out = []
    for number, (fig, layout, first, count) in enumerate(pages, start=1):
        note = _page_note(number, len(pages), first + 1, first + count, len(rows))
        layout["note"].set_text("\n".join([*footnotes, note]))
        out.append((fig, {**layout, "footnotes": [*footnotes, note]}))
    return out


#: Figure 4's source data (`source_data`): one row per region drawn.
SOURCE_COLUMNS = (
    "page",
    "row",
    "slide_id",
    "label",
    "predicted",
    "predicted_probability",
    "method",
    "score_name",
    "mag",
    "x0",
    "y0",
    "side0",
    "score",
    "score_scaled",
    "zoom_step",
    "slide_width0",
    "slide_height0",
    "mpp",
)
#: What the source CSV's columns are: the first of its notes.
SOURCE_NOTE = (
    "one row per region of Figure 4: per slide (its page and row; label, prediction and the "
    "predicted class's probability) and magnification (mag: the map's column), a patch of "
    "side0 level-0 px at level-0 (x0, y0), its top-left corner (the slide: slide_width0 x "
    "slide_height0 px at mpp um/px); score: as zoommil predict recorded it (score_name); "
    "score_scaled: the colour drawn, min-max within the slide and magnification (0 darkest, "
    "1 brightest, 0.5 where all are equal); zoom_step k: a region zoomed into at step k, "
    "boxed on the thumbnail and on the maps at its and higher magnifications (a box with no "
    "score at its magnification: score empty)"
)


def source_data(
    rows: Sequence[Row], labels: Mapping[str, str], page_rows: Sequence[int]
) -> pd.DataFrame:
    """Every region Figure 4 draws: each slide's patches per magnification with the score and
    the colour they are painted (`attention.attention_map`'s scaling), and the regions zoomed
    into by step (the boxes); ``labels``: the sheet's label of each slide id, ``page_rows``:
    the rows of each page in order. Which slides, their predictions and which regions the
    model zoomed into were in the image only."""
    pages = [number for number, count in enumerate(page_rows, start=1) for _ in range(count)]
    records = []
    for index, (slide_id, prediction, (_, size0)) in enumerate(rows):
        probabilities = prediction.get("probabilities") or {}
        predicted = prediction.get("predicted")
        slide = {
            "page": pages[index],
            "row": index + 1,
            "slide_id": slide_id,
            "label": labels.get(slide_id),
            "predicted": predicted,
            "predicted_probability": probabilities.get(predicted),
            "method": attention.model_name(prediction),
            "score_name": attention.score_name(prediction),
            "slide_width0": size0[0],
            "slide_height0": size0[1],
            "mpp": prediction.get("mpp"),
        }
        steps = sorted(prediction.get("selected") or [], key=lambda e: float(e["mag"]))
        boxes = {  # (mag, x0, y0, side0) -> the zoom step of its box
            (float(step["mag"]), int(x), int(y), int(step["side0"])): k
            for k, step in enumerate(steps, start=1)
            for x, y in step["xy"]
        }
        for entry in attention.attention_entries(prediction):
            if not entry.get("weights"):  # no map drawn (`attention.attention_map`)
                continue
            mag, side = float(entry["mag"]), int(entry["side0"])
            weights = np.asarray(entry["weights"], dtype=np.float64)
            for (x, y), score, scaled in zip(
                entry["xy"], weights, attention.scaled_weights(weights), strict=True
            ):
                region = (mag, int(x), int(y), side)
                step = boxes.pop(region, None)
                records.append([*region, score, scaled, step, slide])
        for region, step in boxes.items():  # a box over no scored patch
            records.append([*region, math.nan, math.nan, step, slide])
    regions = ("mag", "x0", "y0", "side0", "score", "score_scaled", "zoom_step")
    frame = pd.DataFrame(
        [{**slide, **dict(zip(regions, values, strict=True))} for *values, slide in records],
        columns=list(SOURCE_COLUMNS),
    )
    frame["zoom_step"] = frame["zoom_step"].astype("Int64")  # 1, not 1.0; empty: no box
    return frame


def _write_source(source: str | Path | None, frame: pd.DataFrame, notes: Sequence[str]) -> None:
    """Figure 4's source CSV, where one is asked for."""
    if source is not None:
        write_source_csv(source, frame, SOURCE_COLUMNS, [SOURCE_NOTE, *notes])


def _page_note(number: int, pages: int, first: int, last: int, total: int) -> str:
    """The note that says which slides a page holds."""
    return (
        f"page {number} of {pages}: slides {first}-{last} of {total} (a page holds the rows "
        f"that fit {MAX_HEIGHT:g} in; the PDF has every page, the PNG the first)"
    )


def _narrower(
    rows: Sequence[Row], footnotes: Sequence[str], height: float, draw: Any
) -> tuple[Figure, dict[str, Any]] | None:
    """All rows on one page `MAX_HEIGHT` tall, drawn narrower (down to `MIN_WIDTH`, the text
    at its size), where that is enough: 3 portrait slides (biopsies) made a page of 2 rows
    and a page of 1. The maps' height goes with the width; the title, column titles and
    colour bar keep theirs (`_first_height`'s 1.6 in and a line per note). A single row,
    which no further page can take, is drawn as narrow as it needs: a slide over ~3.5 times
    its width drew a page taller than `MAX_HEIGHT` (a 5:1 biopsy 12 in)."""
    fixed = 1.6 + 0.15 * len(footnotes)
    width, least = WIDTH, MIN_WIDTH if len(rows) > 1 else 0.0
    for _ in range(3 if len(rows) > 1 else 6):
        width *= (MAX_HEIGHT - 0.05 - fixed) / max(height - fixed, 0.01)
        if width < least:
            return None
        fig, layout = draw(rows, footnotes, width)
        height = layout["size"][1]
        if height <= MAX_HEIGHT:
            return fig, layout
    return None


def _draw_page(
    rows: Sequence[Row],
    table: pd.DataFrame,
    mags: Sequence[float],
    heads: Sequence[str],
    title: str,
    footnotes: Sequence[str],
    width: float = WIDTH,
) -> tuple[Figure, dict[str, Any]]:
    """One page of Figure 4 (`attention_figure`), ``width`` inches wide: its rows, the column
    titles, the title, the colour bar and the notes under it; returns the figure and its
    layout."""
    n_rows, n_cols = len(rows), 1 + max(1, len(mags))
    aspects = [thumb.shape[0] / thumb.shape[1] for _, _, (thumb, _) in rows]
    fig = Figure(figsize=(width, _first_height(aspects, n_cols, width)), layout="constrained")
    grid = fig.add_gridspec(n_rows, n_cols, height_ratios=aspects)
    axes = grid.subplots(squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    image, shown, labels = None, [], []
    for row, (slide_id, prediction, (background, size0)) in enumerate(rows):
        thumb_size = (background.shape[1], background.shape[0])
        sx, sy = thumb_size[0] / size0[0], thumb_size[1] / size0[1]
        label = table.loc[slide_id, "label"] if slide_id in table.index else "?"
        shown.append((slide_id, str(label)))
        predicted = prediction.get("predicted", "?")
        selected = sorted(prediction.get("selected") or [], key=lambda e: float(e["mag"]))
        axes[row, 0].imshow(background)
        labels.append([slide_id, f"label {label}", f"predicted {predicted}"])
        axes[row, 0].set_ylabel("\n".join(labels[-1]), fontsize=NOTE_SIZE)  # `_fit_height` wraps
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
                    _boxes(
                        ax, step, sx, sy, edgecolor="cyan", linewidth=0.8, path_effects=BOX_CASING
                    )
    for ax, head in zip(axes[0], heads, strict=False):
        ax.set_title(head, fontsize=LABEL_SIZE)  # `_fit_height` wraps it to the map's width
    fig.suptitle(title, fontsize=TITLE_SIZE)
    if image is not None:
        # below the maps, not beside them: the width goes to the maps (a two-column page)
        bar = fig.colorbar(
            image, ax=axes.ravel().tolist(), location="bottom", shrink=0.5, aspect=40, pad=0.03
        )
        # "low"/"high", not 0 and 1: the colours are each map's own min-max, and MaxMIL's 0-1
        # ticks beside "probability" read as probabilities that were 0.3-0.6 (review B)
        bar.set_ticks([0.0, 1.0], labels=["low", "high"], fontsize=NOTE_SIZE)
        bar.set_label(
            f"{attention.score_name(*(prediction for _, prediction, _ in rows))}\n"
            "(min-max per slide and magnification: relative within one map)",
            fontsize=NOTE_SIZE,
        )
    _fit_height(fig, axes, aspects, labels, heads)
    fig.draw_without_rendering()
    fig.set_layout_engine("none")  # fixed now: the notes go under what it laid out
    note = None
    if footnotes:
        bottom = min(ax.get_tightbbox().y0 for ax in fig.axes) / fig.bbox.height
        note = fig.text(
            0.01, bottom - 0.01, "\n".join(footnotes), fontsize=NOTE_SIZE, va="top", wrap=True
        )
    titles = list(heads) + [""] * (n_cols - len(heads))  # as written, before wrapping
    panels = [ax.get_position() for ax in axes.ravel()]
    saved = fig.get_tightbbox()  # inches; `save_figure` pads it by 0.1 in on every side
    return fig, {
        "rows": n_rows,
        "titles": titles,
        "title": title,
        "colorbar": image is not None,
        "colorbar_label": bar.ax.get_xlabel() if image is not None else None,
        "colorbar_ticks": (
            [t.get_text() for t in bar.ax.get_xticklabels()] if image is not None else []
        ),
        # the bar's box against the panels' (a layout change once put it over the last column)
        "colorbar_overlaps": image is not None
        and any(bar.ax.get_position().overlaps(box) for box in panels),
        "panels_top": max(box.y1 for box in panels),
        "footnotes": list(footnotes),
        "note": note,
        "empty": None,
        "slides": shown,
        "size": (saved.width + 0.2, saved.height + 0.2),
    }


def _title(dataset: str, method: str, what: str, encoder: str | None, weights: str) -> str:
    """The figure's title: what is drawn, then the encoder and the weights' note each on a
    line of its own (fits 3 columns)."""
    title = f"{dataset}: {display_name(method)} {what}".rstrip()
    if encoder is not None:
        title += f"\nencoder {encoder_label(encoder)}"
    if note := weights_note(weights):
        title += f"\n{note}"
    return title


def _empty_figure(
    empty: str, skipped: Sequence[str], outputs: Sequence[str | Path], title: str
) -> dict:
    """Figure 4 without a slide to draw: its title and one text, ``empty``, saying why, as
    Figure 3's panel without timings says "no timings"; no column titles (a "slide" column
    title was left over the empty figure) and no colour bar."""
    fig = Figure(figsize=(WIDTH, 1.0 + 0.15 * empty.count("\n")), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=LABEL_SIZE, wrap=True)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    save_figure(fig, outputs)
    return {
        "rows": 0,
        "titles": [],
        "title": title,
        "colorbar": False,
        "colorbar_label": None,
        "colorbar_ticks": [],
        "colorbar_overlaps": False,
        "skipped": list(skipped),
        "footnotes": [],
        "empty": empty,
        "slides": [],
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
