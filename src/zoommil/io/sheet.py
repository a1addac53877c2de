"""The one slide-sheet reader and path resolver.

A sheet is a TSV (or CSV) with columns slide_id, path, label, split and optional mpp and
patient; relative paths are relative to the sheet's folder. `read_sheet` is the reader every
command uses (training, evaluation, FLOPs, profiling, the demo); `load_sheet` adds the full
validation the workflow runs before any job, where every error names the offending row
(1-based data row and its slide_id), because users fix sheets by hand. Leakage between splits
is refused here: one file in two rows, or one patient's slides in two splits
(`check_leakage`); `check_splits` refuses, before any preprocessing runs, a cohort without
validation or test slides, with fewer than two classes, or with a class that has no train
slide.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zoommil.errors import ZoomMILError, first_few
from zoommil.wsi.mpp import MPP_RANGE_TEXT, plausible_mpp

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "path", "label", "split")
OPTIONAL_COLUMNS = ("mpp", "mpp_override", "patient")
#: What commands that start from feature files need (their sheet may lack paths).
COMMAND_COLUMNS = ("slide_id", "label", "split")
SPLITS = ("train", "val", "test")
#: Why the workflow refuses a path with braces (the sheet's own, or a slide's).
BRACES_REASON = (
    "Snakemake reads braces in a path as wildcards; rename the file (or link it under a name "
    "without braces)"
)


def read_table(path: str | Path, what: str = "slide sheet") -> pd.DataFrame:
    """Read a TSV or CSV (by extension; `.csv` is comma separated) with every cell a string.

    ``what`` names the table in the errors (an empty or unparsable file is a `ZoomMILError`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        # a relative path: say where it was looked for (the workflow's is its working
        # folder, -d, not where snakemake was started: review C)
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise ZoomMILError(f"{what} not found: {path}{where}")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) must not rename the first column
        frame = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, comment=None, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ZoomMILError(f"{what} {path}: cannot be parsed: {error}") from error
    except UnicodeDecodeError:
        raise ZoomMILError(
            f"{what} {path}: not UTF-8 text (cannot be decoded; a spreadsheet's default export "
            "may be Windows-1252): save it as a UTF-8 CSV or TSV (e.g. Excel's 'CSV UTF-8')"
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    check_separator(frame, path, what)
    check_row_length(frame, path, what)
    return frame


def read_sheet(path: str | Path) -> pd.DataFrame:
    """A slide sheet (slide_id, label, split [, path, mpp]) with every value a string and
    ``path`` (when present) resolved against the sheet's folder."""
    path = Path(path).expanduser()
    sheet = known_columns(read_table(path))
    check_separator(sheet, path)
    missing = [c for c in COMMAND_COLUMNS if c not in sheet.columns]
    if missing:
        raise ZoomMILError(
            f"{path}: slide sheet lacks column(s) {', '.join(missing)} "
            f"(it has {', '.join(sheet.columns)})"
        )
    for column in COMMAND_COLUMNS:
        sheet[column] = sheet[column].str.strip()
    duplicated = sheet.loc[sheet["slide_id"].duplicated(), "slide_id"].tolist()
    if duplicated:
        listed = first_few([shown(slide) for slide in duplicated])
        raise ZoomMILError(f"{path}: duplicated slide_id(s) {listed}")
    empty = sheet.loc[(sheet["slide_id"] == "") | (sheet["label"] == ""), "slide_id"].tolist()
    if empty:
        raise ZoomMILError(f"{path}: {len(empty)} row(s) with an empty slide_id or label")
    bad = sheet.loc[~sheet["split"].isin(SPLITS)]
    if len(bad):
        row = bad.iloc[0]
        raise ZoomMILError(
            f"{path}: slide {shown(row['slide_id'])} has split {shown(row['split'])}; "
            f"allowed: {', '.join(SPLITS)}"
        )
    if "path" in sheet.columns:
        sheet["path"] = [resolve_slide_path(path, p) if p else p for p in sheet["path"]]
    return sheet


def check_separator(frame: pd.DataFrame, path: str | Path, what: str = "slide sheet") -> None:
    """A header read as one column that holds the other separator (a CSV named .tsv, a TSV
    named .csv) or a semicolon (a spreadsheet export in a comma-decimal locale): say so,
    instead of a 'missing column(s)' error that does not show what was read."""
    if len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    csv = Path(path).suffix.lower() == ".csv"
    names = {",": "comma", "\t": "tab", ";": "semicolon"}
    found = next((sep for sep in (";", "\t" if csv else ",") if sep in header), None)
    if found is None:
        return
    expected = "comma-separated (.csv)" if csv else "tab-separated (any name but .csv)"
    raise ZoomMILError(
        f"{what} {path}: looks {names[found]}-separated (header {header!r}), but a "
        f"'{Path(path).suffix or 'tsv'}' {what} must be {expected}; save it with tabs (or "
        "commas and the name .csv)"
    )


def check_row_length(frame: pd.DataFrame, path: str | Path, what: str = "slide sheet") -> None:
    """Rows one field longer than the header (a separator at the end of every row, or R's
    `write.table` row names, which get no header cell): pandas then silently makes the first
    column the index, which shifts every column of a trailing-separator sheet. Refused for
    both causes, since the two cannot be told apart safely."""
    if isinstance(frame.index, pd.RangeIndex):
        return
    sep = "comma" if Path(path).suffix.lower() == ".csv" else "tab"
    raise ZoomMILError(
        f"{what} {path}: its rows have one more field than the header (a trailing {sep} at "
        "the end of each row, or R row names: write it with row.names=FALSE); remove the "
        "extra field"
    )


def shown(value: object) -> str:
    """A sheet value quoted for an error message; escaped (as by `repr`) where it holds a
    character one cannot see (a zero-width space pasted with a label, a tab, a no-break
    space), which would otherwise print as, say, 'normal' beside the allowed 'normal'."""
    text = str(value)
    return f"'{text}'" if text.isprintable() else repr(text)


def known_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with headers that match a sheet column but for case (``Patient``, ``MPP``,
    ``Slide_ID``) renamed to it: read as unknown columns they were ignored, and a ``Patient``
    column silently skipped the patient-leakage check. A header kept as is where the exact
    name is also present."""
    known = {name.lower(): name for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
    renames = {
        column: known[column.lower()]
        for column in frame.columns
        if column.lower() in known and known[column.lower()] not in frame.columns
    }
    return frame.rename(columns=renames) if renames else frame


def _row_name(index: int, row: pd.Series) -> str:
    slide_id = str(row.get("slide_id", "")).strip()
    return f"row {index + 1}" + (f" (slide_id {shown(slide_id)})" if slide_id else "")


#: Cells that mean "no value" in the optional columns (mpp, patient), case-insensitive.
MISSING_MARKERS = frozenset({"", "na", "nan", "none"})


def is_missing(value: object) -> bool:
    """Whether an optional cell (mpp, patient) is empty or NA/NaN/none."""
    return str(value).strip().lower() in MISSING_MARKERS


def parse_mpp(value: object, where: str, sheet: str | Path, column: str = "mpp") -> float | None:
    """A sheet's mpp (or mpp_override) cell: None when empty or NA/NaN/none, else a plausible
    float."""
    value = str(value).strip()
    if is_missing(value):
        return None
    try:
        mpp = float(value)
    except ValueError as error:
        raise ZoomMILError(f"{sheet}: {where}: {column} {shown(value)} is not a number") from error
    if not plausible_mpp(mpp):
        raise ZoomMILError(f"{sheet}: {where}: {column} {mpp} is outside {MPP_RANGE_TEXT}")
    return mpp


def load_sheet(
    path: str | Path,
    classes: list[str] | None = None,
    schema: dict[str, Any] | None = None,
    warn: bool = True,
) -> pd.DataFrame:
    """Validate a slide sheet and return it indexed by slide_id with absolute slide paths.

    Checks, in order: required columns, per-row values (`schema`: JSON schema of one row, e.g.
    workflow/schemas/slides.schema.yaml), split names, known labels (when `classes` is
    given), unique slide ids. Relative paths are resolved against the sheet's folder. The
    returned frame has float `mpp` and `mpp_override` columns (NaN where absent).
    ``warn=False`` keeps the errors but not the warnings: a cluster job loads the workflow
    again, and its log would repeat what the main process said.
    """
    sheet = Path(path).expanduser()
    if has_braces(sheet):
        raise ZoomMILError(f"slide sheet {sheet}: the path contains '{{' or '}}': {BRACES_REASON}")
    frame = known_columns(read_table(sheet))
    headers = list(frame.columns)  # as written: mpp and mpp_override are added below
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ZoomMILError(
            f"{sheet}: missing column(s) {', '.join(missing)} (header: "
            f"{', '.join(map(str, frame.columns))}); a sheet needs "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    if frame.empty:
        raise ZoomMILError(f"{sheet}: the sheet has no rows")
    for column in REQUIRED_COLUMNS:
        frame[column] = frame[column].str.strip()
    validator = _validator(schema)
    seen: dict[str, tuple[int, str]] = {}
    mpps: list[float | None] = []
    overrides: list[float | None] = []
    for index, row in frame.iterrows():
        where = _row_name(index, row)
        for column in REQUIRED_COLUMNS:
            if row[column] == "":
                raise ZoomMILError(f"{sheet}: {where}: empty '{column}'")
        resolved = resolve_slide_path(sheet, row["path"])
        if has_braces(resolved):
            written = row["path"] if has_braces(row["path"]) else resolved
            raise ZoomMILError(
                f"{sheet}: {where}: path {shown(written)} contains '{{' or '}}': {BRACES_REASON}"
            )
        mpp = parse_mpp(row["mpp"], where, sheet) if "mpp" in frame.columns else None
        mpps.append(mpp)
        override = (
            parse_mpp(row["mpp_override"], where, sheet, "mpp_override")
            if "mpp_override" in frame.columns
            else None
        )
        overrides.append(override)
        if validator is not None:
            record = {c: row[c] for c in REQUIRED_COLUMNS}
            if mpp is not None:
                record["mpp"] = mpp
            if override is not None:
                record["mpp_override"] = override
            errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
            if errors:
                field = ".".join(str(p) for p in errors[0].path) or "row"
                if field == "slide_id" and errors[0].validator == "pattern":
                    raise ZoomMILError(f"{sheet}: {where}: {bad_slide_id(row['slide_id'])}")
                raise ZoomMILError(f"{sheet}: {where}: {field}: {errors[0].message}")
        if row["split"] not in SPLITS:
            raise ZoomMILError(
                f"{sheet}: {where}: unknown split {shown(row['split'])}; expected one of "
                f"{', '.join(SPLITS)}"
            )
        if classes is not None and row["label"] not in classes:
            raise ZoomMILError(
                f"{sheet}: {where}: unknown label {shown(row['label'])}; expected one of "
                f"{', '.join(classes)}"
            )
        folded = row["slide_id"].casefold()
        if folded in seen:
            first, first_id = seen[folded]
            if first_id == row["slide_id"]:
                raise ZoomMILError(
                    f"{sheet}: {where}: duplicate slide_id {shown(row['slide_id'])} "
                    f"(first used in row {first + 1})"
                )
            raise ZoomMILError(
                f"{sheet}: {where}: slide_id {shown(row['slide_id'])} differs from row "
                f"{first + 1}'s {shown(first_id)} only in case: on a case-insensitive file "
                "system (macOS, Windows, some network shares) their outputs would be one file; "
                "rename one"
            )
        seen[folded] = (index, row["slide_id"])
    frame["mpp"] = pd.array([float("nan") if m is None else m for m in mpps], dtype=float)
    frame["mpp_override"] = pd.array(
        [float("nan") if m is None else m for m in overrides], dtype=float
    )
    written = list(frame["path"])
    frame["path"] = [resolve_slide_path(sheet, p) for p in written]
    check_leakage(frame, sheet)
    if warn:
        warn_cwd_relative(frame, written, sheet)
        warn_missing_files(frame, written, sheet)
        warn_misspelled_columns(headers, sheet)
    return frame.set_index("slide_id", drop=False)


def warn_missing_files(frame: pd.DataFrame, written: Sequence[str], sheet: str | Path) -> None:
    """Warn where slide files do not exist (those `warn_cwd_relative` names aside): a sheet
    moved away from the relative paths it was written with had every slide 'missing' at
    inspection and the run stopped at QC, while the dry run said nothing. A warning, not an
    error: a missing slide is excluded and the others go on."""
    hits = [
        index
        for index, (entry, path) in enumerate(zip(written, frame["path"], strict=True))
        if not os.path.exists(path)
        and (Path(entry.strip()).expanduser().is_absolute() or not os.path.exists(entry.strip()))
    ]
    if not hits:
        return
    first = hits[0]
    folder = Path(sheet).resolve().parent
    relative = not Path(written[first].strip()).expanduser().is_absolute()
    log.warning(
        "slide sheet %s: %d of %d slide file(s) do not exist (e.g. %s: %s)%s; a slide not yet "
        "encoded is excluded as missing at inspection, one whose features were made stops the "
        "run",
        sheet, len(hits), len(frame), _row_name(first, frame.iloc[first]),
        frame["path"].iloc[first],
        f", relative paths being relative to the sheet's folder {folder}" if relative else "",
    )  # fmt: skip


def warn_misspelled_columns(columns: Sequence[object], sheet: str | Path) -> None:
    """Warn about a header that looks like a sheet column the sheet lacks (``mpp_overide``,
    ``MPP (um)``, ``patient id``): other columns are ignored, so a misspelled mpp_override
    left the slide at its wrong metadata mpp (tiled at the wrong magnification, or excluded)
    and a misspelled patient column skipped the leakage check, without a word."""
    absent = [name for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name not in columns]
    for column in columns:
        if column in REQUIRED_COLUMNS or column in OPTIONAL_COLUMNS:
            continue
        norm = re.sub(r"[^a-z0-9]+", "_", str(column).lower()).strip("_")
        near = difflib.get_close_matches(norm, absent, n=1, cutoff=0.75)
        near = near or [name for name in absent if norm.startswith(name + "_")]
        if near:
            log.warning(
                "slide sheet %s: column %s is not a sheet column and is ignored; did you "
                "mean '%s'? (sheet columns: %s)",
                sheet, shown(column), near[0], ", ".join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)),
            )  # fmt: skip


def bad_slide_id(slide_id: str) -> str:
    """Why ``slide_id`` is refused, in words and with a usable spelling: the schema's own
    message showed only its regular expression ("'H&E 12' does not match '^[A-Za-z0-9]...'")."""
    usable = re.sub(r"[^A-Za-z0-9_.-]+", "_", slide_id).strip("_.-") or "slide_1"
    return (
        f"slide_id {shown(slide_id)} may hold only letters, digits, '_', '.' and '-', starting "
        f"with a letter or digit, as it names the slide's output files (e.g. '{usable}')"
    )


def warn_cwd_relative(frame: pd.DataFrame, written: Sequence[str], sheet: str | Path) -> None:
    """Warn where relative paths are missing from the sheet's folder but exist from the current
    directory: a sheet written relative to where snakemake runs, whose slides would all be
    excluded as missing at inspection with no word on why. Nothing is resolved differently
    (paths are relative to the sheet); `frame` has its row numbers (a RangeIndex) still."""
    folder = Path(sheet).resolve().parent
    cwd = Path.cwd()
    if folder == cwd.resolve():
        return
    hits = [
        index
        for index, (entry, path) in enumerate(zip(written, frame["path"], strict=True))
        if not Path(entry.strip()).expanduser().is_absolute()
        and not os.path.exists(path)
        and os.path.exists(entry.strip())
    ]
    if hits:
        first = hits[0]
        log.warning(
            "slide sheet %s: %d slide path(s) (e.g. %s: %s) do not exist relative to the "
            "sheet's folder %s but do relative to the current directory %s; paths in a sheet "
            "are relative to the sheet's folder (or absolute), so these slides will be "
            "excluded as missing at inspection",
            sheet, len(hits), _row_name(first, frame.iloc[first]), shown(written[first]),
            folder, cwd,
        )  # fmt: skip


def has_braces(path: str | Path) -> bool:
    """Whether a path has `{` or `}`, which a Snakemake input path cannot hold (they are read
    as wildcards, and doubling them does not help in an input function's return value)."""
    return "{" in str(path) or "}" in str(path)


def check_leakage(frame: pd.DataFrame, sheet: str | Path) -> None:
    """Refuse a sheet that would put one slide or one patient in two places.

    - the same file (same resolved path, symlinks followed) in two rows: an error naming both;
    - with a `patient` column: every slide of a patient must be in one split, else an error
      naming the patient and the rows. Copies of one slide under two file names are caught
      later, at inspection (`zoommil.workflow.qc.check_duplicate_slides`).
    """
    frame = frame.reset_index(drop=True)
    seen: dict[str, int] = {}
    for index, path in enumerate(frame["path"]):
        key = str(Path(path).resolve())
        if key in seen:
            first = seen[key]
            raise ZoomMILError(
                f"{sheet}: {_row_name(index, frame.iloc[index])} and "
                f"{_row_name(first, frame.iloc[first])} are the same file ({key}): a slide may "
                "appear in one row only"
            )
        seen[key] = index
    if "patient" not in frame.columns:
        return
    patients = frame["patient"].astype(str).str.strip()
    for patient, rows in frame.groupby(patients, sort=True):
        if is_missing(patient):  # as in the mpp column: no patient, not a patient named 'NA'
            continue
        splits = sorted(set(rows["split"]))
        if len(splits) > 1:
            pairs = zip(rows["slide_id"], rows["split"], strict=True)
            listed = ", ".join(f"{shown(s)} ({p})" for s, p in pairs)
            raise ZoomMILError(
                f"{sheet}: patient {shown(patient)} has slides in {len(splits)} splits "
                f"({', '.join(splits)}): {listed}; every slide of a patient must be in one split"
            )


def check_splits(
    frame: pd.DataFrame,
    sheet: str | Path,
    needed: tuple[str, ...] = SPLITS,
    classes: Sequence[str] | None = None,
    warn: bool = True,
) -> None:
    """Every split in ``needed`` has at least one slide (training needs val, results need
    test), there are at least two classes, and every class has a train slide: a model never
    shown a class cannot predict it, and the tables would not say why.

    ``classes`` are the configured ones; None means the sheet's labels, as training then
    takes them (`zoommil.training.data.resolve_classes`), so the same refusals hold.
    ``warn=False`` keeps the refusals, not the warnings (see `load_sheet`).
    """
    counts = frame["split"].value_counts()
    empty = [s for s in needed if int(counts.get(s, 0)) == 0]
    if empty:
        have = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in SPLITS)
        raise ZoomMILError(
            f"{sheet}: no {' and no '.join(empty)} slides ({have}); model selection needs "
            "validation slides and the results need test slides"
        )
    inferred = classes is None
    names = sorted(set(frame["label"])) if classes is None else list(classes)
    if inferred:  # configured classes: the config's own check (config_checks)
        check_label_case(names, sheet)
    if len(names) < 2:
        listed = ", ".join(map(shown, names)) or "none"
        source = f"the sheet has one label, {listed}" if inferred else f"classes: {listed}"
        raise ZoomMILError(
            f"{sheet}: fewer than two classes ({source}): a classifier needs at least two; "
            + ("add slides of another label" if inferred else "list at least two in classes")
        )
    untrained = _untrained(frame, names)
    if untrained:
        fix = (
            "add train slides of them or remove their rows (the classes are the sheet's "
            "labels, as `classes:` is not set)"
            if inferred
            else "add train slides of them or leave them out of classes"
        )
        raise ZoomMILError(
            f"{sheet}: no train slides of class(es) {'; '.join(untrained)} (classes: "
            f"{', '.join(names)}); {fix}"
        )
    if not warn:
        return
    if "val" in needed and (unvalidated := _absent_in_split(frame, names, "val")):
        log.warning(
            "%s: no val slides of class(es) %s: model selection (val loss or val weighted F1) "
            "cannot see how a model does on them, and with one class left it keeps the epoch "
            "most sure of that class; give every class val slides",
            sheet, ", ".join(unvalidated),
        )  # fmt: skip
    if "test" in needed and (untested := _absent_in_split(frame, names, "test")):
        # said before training: the tables' n/a AUC was the first sign (review L)
        log.warning(
            "%s: no test slides of class(es) %s: the tables' AUC will be n/a, and that "
            "class's F1 undefined (0, and in macro F1, where a model predicts it for a test "
            "slide); give every class test slides",
            sheet, ", ".join(untested),
        )  # fmt: skip


def check_label_case(labels: Sequence[str], where: str | Path) -> None:
    """Labels that differ only in case (``Tumor``, ``tumor``) would be separate classes, a
    binary task silently becoming a three-class one: refuse them, naming both spellings."""
    spellings: dict[str, list[str]] = {}
    for label in labels:
        spellings.setdefault(str(label).casefold(), []).append(str(label))
    clashes = [names for names in spellings.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(map(repr, names)) for names in clashes)
        raise ZoomMILError(
            f"{where}: labels {listed} differ only in case, so they would be separate "
            "classes; write each class one way"
        )


def _absent_in_split(frame: pd.DataFrame, classes: Sequence[str], split: str) -> list[str]:
    present = set(frame.loc[frame["split"] == split, "label"])
    return [name for name in classes if name not in present]


def _untrained(frame: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """Each of ``classes`` without a train slide, with the splits its slides are in, e.g.
    'carcinoma (it has 1 val, 2 test slides)' or 'carcinoma (it has no slides)'."""
    out = []
    for name in classes:
        splits = frame.loc[frame["label"] == name, "split"].value_counts()
        if int(splits.get("train", 0)):
            continue
        has = ", ".join(f"{int(splits[s])} {s}" for s in SPLITS if int(splits.get(s, 0)))
        out.append(f"{name} (it has {has + ' slides' if has else 'no slides'})")
    return out


def _validator(schema: dict[str, Any] | None):
    if schema is None:
        return None
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def resolve_slide_path(sheet: str | Path, path: str | Path) -> str:
    """A sheet's `path` entry as an absolute path: relative entries are relative to the sheet's
    folder (links inside the entry are kept, so the path stays the one the user wrote)."""
    candidate = Path(str(path).strip()).expanduser()
    if not candidate.is_absolute():
        candidate = Path(sheet).resolve().parent / candidate
    return str(candidate)
