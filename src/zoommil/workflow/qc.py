"""Slide QC tables: which slides continue, and why the others were left out.

Two tables, because slides fail at two points: inspection (unreadable file, implausible or
missing mpp, not brightfield) and the per-slide stages after it (tissue, tile, features: a
failure marker, see `zoommil.workflow.failure`, or no tissue). Each table has one row per
slide of the sheet with the `stage` that excluded it and the `reason`, so the tables can say
how many slides were excluded and why. Inspection also records OpenSlide's quickhash, so one
slide listed under two names (train/test leakage) stops the run before any training.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import pandas as pd

from zoommil.errors import ZoomMILError, first_few
from zoommil.io.atomic import atomic_path
from zoommil.io.featurefile import decode_attr, listed_mags, patch_mags
from zoommil.io.featurefile import layout_problem as file_layout_problem
from zoommil.io.sheet import SPLITS
from zoommil.workflow.failure import read_marker
from zoommil.workflow.params import run_path
from zoommil.wsi.mpp import differs_from_metadata

#: The slides table kept when QC stops the run (`check_usable_splits_keeping`)
FAILED_TABLE = "slides.failed.tsv"

INSPECT_COLUMNS = [
    "slide_id",
    "label",
    "split",
    "status",
    "stage",
    "reason",
    "mpp",
    "mpp_source",
    "mpp_note",
    "quickhash",
]


def _reason(record: Mapping[str, Any]) -> str:
    for key in ("reason", "error", "message"):
        if record.get(key):
            return str(record[key])
    return ""


def inspection_table(sheet: pd.DataFrame, status_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per sheet slide from the `zoommil inspect` status JSONs ({slide_id}.json)."""
    by_id: dict[str, dict[str, Any]] = {}
    for path in status_files:
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            record = {"status": "error", "reason": f"unreadable status file: {error}"}
        by_id[path.stem] = record
    rows = []
    for slide_id, row in sheet.iterrows():
        record = by_id.get(str(slide_id), {"status": "missing", "reason": "not inspected"})
        status = str(record.get("status") or "error")
        rows.append(
            {
                "slide_id": slide_id,
                "label": row["label"],
                "split": row["split"],
                "status": status,
                "stage": "" if status == "ok" else "inspect",
                "reason": "" if status == "ok" else _reason(record) or status,
                "mpp": record.get("mpp"),
                "mpp_source": _mpp_source(record, row),
                "mpp_note": _mpp_note(record, row),
                "quickhash": record.get("quickhash") or "",
            }
        )
    table = pd.DataFrame(rows, columns=INSPECT_COLUMNS)
    check_duplicate_slides(table)
    return table


def _mpp_source(record: dict[str, Any], row: pd.Series) -> str:
    """Where the slide's mpp came from: `zoommil inspect`'s source, except that a fallback
    ("default") taken from the sheet's mpp column is "sheet" (the workflow passes both the
    sheet's value and the config's `default_mpp` as `--default-mpp`)."""
    source = str(record.get("mpp_source") or "")
    sheet_mpp = row.get("mpp") if "mpp" in row.index else None
    if source == "default" and sheet_mpp is not None and not pd.isna(sheet_mpp):
        return "sheet"
    return source


def _mpp_note(record: dict[str, Any], row: pd.Series) -> str:
    """Why the slide's mpp may be wrong: `zoommil inspect`'s note (an objective-power
    estimate), or a sheet mpp that the slide's metadata outranks (DESIGN's order) but that
    differs from it: the user's correction was silently dropped."""
    notes = [str(record["mpp_note"])] if record.get("mpp_note") else []
    sheet_mpp = row.get("mpp") if "mpp" in row.index else None
    mpp, source = record.get("mpp"), str(record.get("mpp_source") or "")
    if (
        sheet_mpp is not None
        and not pd.isna(sheet_mpp)
        and mpp is not None
        and source not in ("default", "override")
        and differs_from_metadata(sheet_mpp, mpp)
    ):
        notes.append(
            f"the sheet's mpp {float(sheet_mpp):.4g} is not used: the metadata's "
            f"{float(mpp):.4g} um/px ({source}) comes first; if the metadata is wrong, give "
            "the slide's true pixel size as the sheet's mpp_override"
        )
    return "; ".join(notes)


def check_duplicate_slides(table: pd.DataFrame) -> None:
    """One slide under two slide ids (same OpenSlide quickhash) is an error naming both.

    Copies of one scan in two rows would put the same pixels in training and test (or count
    one patient twice); the sheet check only catches the same path, this catches copies.
    """
    first: dict[str, tuple[str, str]] = {}
    for slide_id, split, digest in zip(
        table["slide_id"], table["split"], table["quickhash"], strict=True
    ):
        if not digest:
            continue
        if digest in first:
            other, other_split = first[digest]
            raise ZoomMILError(
                f"slides '{other}' ({other_split}) and '{slide_id}' ({split}) are the same slide "
                f"(identical OpenSlide quickhash {digest[:16]}...): remove one of them from the "
                "sheet (a slide in two rows leaks between splits or counts twice)"
            )
        first[digest] = (str(slide_id), str(split))


def feature_counts(handle: h5py.File) -> tuple[dict[str, int], bool]:
    """Rows per magnification of an open feature file, and whether tiling found no tissue.

    `zoommil tile --no-tissue all` keeps every patch of a slide without tissue and records
    `no_tissue_applied` (copied into the feature file), so the workflow can decide here.
    """
    counts = {mag: int(handle[f"{mag}_patches"].shape[0]) for mag in patch_mags(handle)}
    applied = handle.attrs.get("no_tissue_applied", False)
    if isinstance(applied, bytes):
        applied = applied.decode()
    if isinstance(applied, str):
        applied = applied.strip().lower() in ("1", "true", "yes")
    return counts, bool(applied)


def layout_problem(handle: h5py.File, mags: Sequence[float] | None = None) -> str | None:
    """Why an open feature file breaks the contract training relies on, else None.

    Checks, as training does (`file_layout_problem`), that its ``mags``
    attribute lists numbers, that every magnification in ``mags`` (the recipe's; default: the
    file's own ``mags`` attribute, else its ``*x_patches`` datasets) has its patches, coords
    and xy datasets with one row count, and that neighbouring magnifications keep the
    descendant layout: ``N_next = 4^d N_prev``, rows in depth-first order. Ragged slide edges
    cannot break that: every child of a kept parent is kept, read as white outside the slide
    (DESIGN.md). Cheap for large cohorts: a file's shapes, attributes and coords are read (16
    bytes a row), never its features.
    """
    path = handle.filename
    try:
        listed = listed_mags(decode_attr(handle.attrs.get("mags")), path)
    except ZoomMILError as error:
        return f"feature file {error}"
    if mags is None:
        mags = listed or [float(m[:-1]) for m in patch_mags(handle)]
    problem = file_layout_problem(handle, sorted(float(m) for m in mags))
    return None if problem is None else f"feature file {path}: {problem}"


def lock_failure(path: str | Path, error: OSError) -> ZoomMILError | None:
    """The error for an HDF5 file that could not be locked for reading, else None.

    Why not the slide's failure: HDF5 locks every file it opens, and a file system without
    working locks (NFS without its lock daemon: errno 37) refuses it for every file, or for
    some while the lock daemon struggles. Read as a damaged file, that excluded the slides
    (`failed at features`), and the QC table kept them out after the file system was fixed.
    """
    match = re.search(r"unable to lock file, errno = (\d+)", str(error))
    if match is None:
        return None
    if int(match[1]) == errno.EAGAIN:
        why = "another process holds a lock on it (has it open for writing): close that"
    else:
        why = (
            f"the file system refuses file locks ({os.strerror(int(match[1]))}, e.g. NFS "
            "without its lock daemon): export HDF5_USE_FILE_LOCKING=FALSE (safe here: zoommil "
            "writes no file in place)"
        )
    return ZoomMILError(f"cannot read {path}: HDF5 could not lock it; {why} and run again")


def slides_table(
    inspection: pd.DataFrame,
    feature_files: Mapping[str, str | Path],
    no_tissue: str = "exclude",
    mags: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Final status per slide: the inspection status, then `no_tissue` after tiling.

    `feature_files` maps slide_id -> feature file for the slides that passed inspection. A
    slide is `no_tissue` when its feature file has no patches, or when no patch passed the
    tissue threshold and the policy `no_tissue` is "exclude" ("all" keeps its patches). A file
    that lacks a magnification of ``mags`` (the recipe's) or breaks the descendant layout
    (`layout_problem`) fails at `features`: training would stop on it, for every method.
    A file HDF5 could not lock is no slide's fault: a `ZoomMILError` (`lock_failure`).
    Adds one `n_<mag>` column per magnification (patch counts).
    """
    if no_tissue not in ("exclude", "all"):
        raise ValueError(f"no_tissue policy must be 'exclude' or 'all', not {no_tissue!r}")
    table = inspection.copy()
    # Read back from the TSV, a column empty for every slide (no slide failed inspection)
    # comes as float NaN, which refuses the stage and reason strings set below.
    for column in ("status", "stage", "reason"):
        if column in table.columns:
            table[column] = table[column].astype(object)
    counts_by_id: dict[str, dict[str, int]] = {}
    if "stage" not in table.columns:
        table["stage"] = ["" if s == "ok" else "inspect" for s in table["status"]]
    for slide_id, path in feature_files.items():
        index = table.index[table["slide_id"] == slide_id]
        failure = read_marker(path)
        if failure is not None:
            table.loc[index, "status"] = failure.status
            table.loc[index, "stage"] = failure.stage
            table.loc[index, "reason"] = failure.reason
            continue
        try:
            with h5py.File(path, "r") as handle:  # one open: shapes and attributes only
                counts, applied = feature_counts(handle)
                problem = layout_problem(handle, mags)
        except OSError as error:  # written atomically: a damaged disk, or a refused lock
            lock = lock_failure(path, error)
            if lock is not None:
                raise lock from None
            problem = f"unreadable feature file {path} ({error})"
        if problem is not None:
            table.loc[index, ["status", "stage", "reason"]] = ["failed", "features", problem]
            continue
        counts_by_id[slide_id] = counts
        if not counts or min(counts.values()) == 0:
            reason = "the feature file has no patches"
        elif applied and no_tissue == "exclude":
            reason = "no patch passed the tissue threshold (no_tissue: exclude)"
        else:
            continue
        table.loc[index, "status"] = "no_tissue"
        table.loc[index, "stage"] = "tile"
        table.loc[index, "reason"] = reason
    mags = sorted({m for c in counts_by_id.values() for m in c}, key=lambda m: float(m[:-1]))
    for mag in mags:
        table[f"n_{mag}"] = [counts_by_id.get(s, {}).get(mag, 0) for s in table["slide_id"]]
    return table


def usable_sheet(
    sheet: pd.DataFrame, table: pd.DataFrame, folder: str | Path | None = None
) -> pd.DataFrame:
    """Sheet rows of the slides whose final status is ok, with the mpp resolved at
    inspection, so later commands read each slide at the same resolution.

    Paths (the sheet's, absolute) of slides inside the run's folder (the working directory)
    are written relative to ``folder``, the table's own (a sheet's paths are read relative to
    its folder): a copied or moved project's timing and Figure 4 jobs then read its own
    slides, not those at the old place (gone after a move)."""
    ok = table.loc[table["status"] == "ok"].set_index("slide_id")
    rows = sheet.loc[sheet["slide_id"].isin(ok.index), ["slide_id", "path", "label", "split"]]
    rows = rows.reset_index(drop=True)
    if folder is not None:
        rows["path"] = [path_from(folder, p) for p in rows["path"]]
    rows["mpp"] = [ok.loc[s, "mpp"] for s in rows["slide_id"]]
    return rows


def path_from(folder: str | Path, path: str | Path) -> str:
    """``path`` relative to ``folder`` when it lies inside the run's folder (the working
    directory), else absolute (`zoommil.workflow.params.run_path`)."""
    named = run_path(path)
    if Path(named).is_absolute():
        return named
    return Path(os.path.relpath(named, run_path(folder))).as_posix()


#: Why each split must keep a usable slide, said with the error of the split that has none.
SPLIT_NEEDS = {
    "train": "training needs train slides",
    "val": "model selection needs validation slides",
    "test": "the results need test slides",
}


def check_usable_splits(sheet: pd.DataFrame, table: pd.DataFrame, shown: int = 5) -> None:
    """Every split keeps a usable slide after QC, else one error naming its excluded slides.

    Why at the QC checkpoint: the sheet check (`sheet.check_splits`) sees the rows, not what
    QC excludes; without this, every train job of every method and seed trains in full and
    only then fails for lack of test slides to evaluate.
    """
    ok = set(table.loc[table["status"] == "ok", "slide_id"])
    status = table.set_index("slide_id")
    for split in SPLITS:
        ids = list(sheet.loc[sheet["split"] == split, "slide_id"])
        if not ids or not ok.isdisjoint(ids):
            continue
        raise ZoomMILError(
            f"no usable {split} slides after QC: all {_excluded(ids, status, shown)}; "
            f"{SPLIT_NEEDS[split]}"
        )


def check_usable_splits_keeping(sheet: pd.DataFrame, table: pd.DataFrame, out: str | Path) -> None:
    """`check_usable_splits`, keeping ``table`` as `FAILED_TABLE` beside ``out`` when it fails
    (the error names the copy), and removing a copy an earlier failure left once it passes.

    Why a copy: Snakemake deletes a failed job's outputs, and this table is what says why
    every slide was left out.
    """
    kept = Path(out).with_name(FAILED_TABLE)
    kept.unlink(missing_ok=True)
    try:
        check_usable_splits(sheet, table)
    except ZoomMILError as error:
        write_tsv(table, kept)
        raise ZoomMILError(f"{error}; every slide and its reason: {kept}") from None


def classes_lost(sheet: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Warnings for labels the sheet has in a split but QC left no usable slide of, e.g.
    'no usable train slides of class carcinoma (1 excluded: ...)': the benchmark still runs,
    but a model never trained on a class, or a test set without it, changes what the
    tables mean."""
    ok = set(table.loc[table["status"] == "ok", "slide_id"])
    status = table.set_index("slide_id")
    out = []
    for (split, label), rows in sheet.groupby(["split", "label"], sort=True):
        ids = list(rows["slide_id"])
        if ok.isdisjoint(ids):
            out.append(f"no usable {split} slides of class {label} ({_excluded(ids, status, 3)})")
    return out


def _excluded(ids: Sequence[str], status: pd.DataFrame, shown: int) -> str:
    """'2 excluded: b (failed at tissue: truncated); c (no_tissue at tile)', the first
    ``shown`` reasons named, then '; and N more'.

    Slides that share a reason are named together under it, 'a, b, c and 2 more (failed at
    tile: 40x is finer ...)': one slide per entry repeated a 250-character reason for each
    slide, and a cohort whose magnifications its scans cannot give read as a wall of repeats.
    """
    groups: dict[str, list[str]] = {}
    for slide_id in ids:
        if slide_id in status.index:
            groups.setdefault(_because(status.loc[slide_id]), []).append(str(slide_id))
    named = [
        f"{first_few(slides, 3)} ({because})" for because, slides in list(groups.items())[:shown]
    ]
    return f"{len(ids)} excluded: {first_of(named, shown, len(groups))}"


def first_of(items: Sequence[str], shown: int, total: int | None = None) -> str:
    """The first ``shown`` of ``items`` joined by '; ', then '; and N more' (of ``total``,
    default all of them): a note that names every one of 300 slides is unreadable."""
    total = len(items) if total is None else total
    more = f"; and {total - shown} more" if total > shown else ""
    return "; ".join(items[:shown]) + more


def _because(row: pd.Series) -> str:
    """'failed at tissue: truncated file', 'no_tissue at tile', 'missing'."""
    stage = row.get("stage", "")
    reason = row.get("reason", "")
    where = f" at {stage}" if isinstance(stage, str) and stage else ""
    why = f": {reason}" if isinstance(reason, str) and reason else ""
    return f"{row['status']}{where}{why}"


def features_manifest(table: pd.DataFrame, feature_files: Mapping[str, str | Path]) -> pd.DataFrame:
    """The usable slides' feature files with their size and mtime (ns).

    Why: training and evaluation depend on this one file instead of listing every feature file
    (Snakemake's scheduler stats the inputs of every ready job each round: N files x N jobs);
    the qc_slides checkpoint rewrites it whenever a feature file changes, so a new feature
    file still reruns training, and the sizes/mtimes record which versions were used.
    """
    ok = table.loc[table["status"] == "ok", "slide_id"]
    rows = []
    for slide_id in sorted(ok):
        path = Path(feature_files[slide_id])
        st = path.stat()
        rows.append(
            {"slide_id": slide_id, "path": str(path), "bytes": st.st_size,
             "mtime_ns": st.st_mtime_ns}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=["slide_id", "path", "bytes", "mtime_ns"])


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A table `write_tsv` wrote, read back as it was: slide ids, labels and reasons such as
    'NA', 'null' or 'None' stay strings (pandas' default would make them NaN, which then sorts
    and compares as a float); only empty cells are missing (NaN), so numeric columns stay
    numeric."""
    return pd.read_csv(
        path, sep="\t", dtype={"slide_id": str}, keep_default_na=False, na_values=[""]
    )


def write_tsv(frame: pd.DataFrame, out: str | Path) -> None:
    """Write a TSV atomically."""
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="")


def exclusion_summary(table: pd.DataFrame) -> str:
    """'2 of 24 slides excluded (1 no_mpp, 1 no_tissue)' or '0 of 24 slides excluded'.

    A slide that failed at a later stage counts as e.g. 'failed at features'.
    """
    excluded = table[table["status"] != "ok"]
    text = f"{len(excluded)} of {len(table)} slides excluded"
    if len(excluded):
        stages = excluded["stage"] if "stage" in excluded.columns else [""] * len(excluded)
        kinds = [
            f"{status} at {stage}" if status == "failed" and stage else str(status)
            for status, stage in zip(excluded["status"], stages, strict=True)
        ]
        counts = pd.Series(kinds).value_counts().sort_index()
        text += " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    return text


def mpp_notes(table: pd.DataFrame, shown: int = 5) -> str | None:
    """One line naming the slides whose metadata mpp may be wrong (`mpp_note`), or None."""
    if "mpp_note" not in table.columns:
        return None
    noted = table.loc[table["mpp_note"].fillna("").astype(str) != ""]
    if noted.empty:
        return None
    ids = [str(s) for s in noted["slide_id"]]
    return (
        f"the mpp of {len(noted)} slide(s) comes from metadata that may be wrong "
        f"({first_of(ids, shown)}): see mpp_note in the QC table; a sheet column "
        "mpp_override replaces it"
    )


def tell(message: str) -> None:
    """Print a line of a QC script to its log (the script points ``sys.stderr`` there) and to
    the terminal (``sys.__stderr__``), so warnings and errors show in Snakemake's output too."""
    for stream in (sys.stderr, sys.__stderr__):
        print(message, file=stream)


@contextmanager
def stop_on_error(step: str) -> Iterator[None]:
    """A `ZoomMILError` inside stops the QC script: ``{step}: error: ...`` on both streams
    (`tell`) and exit status 1, no traceback (a QC failure stops the run before training)."""
    try:
        yield
    except ZoomMILError as error:
        tell(f"{step}: error: {error}")
        raise SystemExit(1) from None
