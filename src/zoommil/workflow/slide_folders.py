"""A slide path that names a folder: say which file to name instead.

DICOM whole-slide images (NCI Imaging Data Commons serves TCGA and other cohorts so) come
as one folder of `.dcm` files per slide, one file per pyramid level, and a folder is what a
user writes. OpenSlide (4.0+) opens such a slide only from one of its `.dcm` files, and
finds the series' other files in the same folder itself; given the folder, it refuses it.
The sheet's folder row was excluded at inspection as `missing` ("not a file"), and
`zoommil predict`'s advice to pass the folder's files classified one slide once per file.
A `.dcm` slide's other files are its pyramid's other levels: `series_inputs` makes them
inputs of the slide's jobs, so that a level file added or removed (a download completed
later) redoes the slide; before, only the named file was watched, and the slide kept
features read from a pyramid it no longer had. Kept out of `zoommil.wsi` (whose code hash
reruns every user's features).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from zoommil.errors import ZoomMILError, first_few


def dicom_advice(folder: str | Path) -> str | None:
    """What to name instead of a folder of `.dcm` files: one of them (all files of one
    series are one slide); None for a folder without any."""
    folder = Path(folder)
    try:
        dicoms = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    except OSError:
        return None
    if not dicoms:
        return None
    return (
        f"it holds {len(dicoms)} DICOM file(s): OpenSlide opens a DICOM whole-slide image from "
        "any one of its .dcm files and finds the series' other files (pyramid levels) in the "
        f"same folder, so name one, e.g. {folder / dicoms[0]}; all the files of one series "
        "are one slide"
    )


def folder_advice(folder: str | Path) -> str:
    """What a sheet should name instead of ``folder``: `dicom_advice`, else the slide file."""
    advice = dicom_advice(folder)
    return advice or "name the slide file (for MIRAX, the .mrxs beside its data folder)"


def series_inputs(path: str, shared: Collection[str] = frozenset()) -> list[str]:
    """``path`` and, for a DICOM file, the other `.dcm` files of its folder (OpenSlide reads
    the series' levels from them). A name with braces is left out: Snakemake reads braces in
    an input as a wildcard, and one such file stopped the whole DAG (the sheet's own paths
    are refused with braces at load). A folder in ``shared`` (`shared_folders`) gives only
    ``path``: its files cannot be told apart by series without reading them, and tying every
    slide to every file made planning grow with slides x files (300 slides of 6 files in one
    folder: a dry run of 51 s and 700 MB against 8.5 s and 190 MB)."""
    if not path.lower().endswith(".dcm"):
        return [path]
    folder = os.path.dirname(path)
    if os.path.abspath(folder or ".") in shared:
        return [path]
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return [path]
    dicoms = [n for n in names if n.lower().endswith(".dcm") and not _has_braces(n)]
    others = [os.path.join(folder, n) for n in dicoms]
    return [path, *(p for p in others if os.path.basename(p) != os.path.basename(path))]


def shared_folders(paths: Sequence[str | Path]) -> frozenset[str]:
    """The folders (absolute) that hold the named `.dcm` file of more than one slide."""
    folders = Counter(
        os.path.dirname(os.path.abspath(path))
        for path in paths
        if str(path).lower().endswith(".dcm")
    )
    return frozenset(folder for folder, slides in folders.items() if slides > 1)


def shared_folders_warning(shared: Collection[str]) -> str | None:
    """One line saying whose level files are not watched (`series_inputs`); None if none."""
    if not shared:
        return None
    named = first_few(sorted(shared))
    return (
        f"zoommil: {len(shared)} folder(s) hold the .dcm files of several slides ({named}): "
        "the other level files of those slides are not inputs of their jobs, so a level "
        "file added or removed there redoes nothing; keep each DICOM series in a folder of "
        "its own to have them watched"
    )


def _has_braces(name: str) -> bool:
    return "{" in name or "}" in name


def folder_rows(paths: Sequence[str | Path]) -> list[int]:
    """Indices of the paths that are folders."""
    return [index for index, path in enumerate(paths) if Path(path).is_dir()]


def first_and_others(slide_ids: Sequence[str], rows: Sequence[int]) -> tuple[int, str]:
    """The first refused row (an index into ``slide_ids``), and " (also 'b', 'c', ...)"
    naming the other refused rows' slides ("" if none): a sheet refusal names the row to fix
    and how many more there are (folders here, URLs in `slide_urls`)."""
    others = [f"'{slide_ids[i]}'" for i in rows[1:]]
    return rows[0], f" (also {first_few(others)})" if others else ""


def check_no_folders(slide_ids: Sequence[str], paths: Sequence[str | Path], sheet: str) -> None:
    """Refuse a sheet whose slide paths include folders, naming the first one's row and what
    to write there: such a row can never be a slide, as a path with braces cannot."""
    rows = folder_rows(paths)
    if not rows:
        return
    first, more = first_and_others(slide_ids, rows)
    raise ZoomMILError(
        f"{sheet}: row {first + 1} (slide_id '{slide_ids[first]}'): path {paths[first]} is a "
        f"folder, not a slide file{more}; {folder_advice(paths[first])}"
    )
