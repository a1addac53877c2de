"""k patient-grouped, class-stratified fold sheets from one sheet.

Why: the workflow trains on one sheet whose `split` column says train/val/test; cohorts without
an official test split are reported as k-fold cross-validation (CLAM's splits_0..k), mean and
spread over folds. This writes one complete sheet per fold, to be run each in its own `-d`
folder: fold i's test slides are the i-th of k parts, its val slides one part of the rest
(split again by patient and class), so no patient is in two splits of a fold and every slide
is a test slide in exactly one fold. Deterministic for a given sheet, k and seed.

    python -m zoommil.cv.folds slides.tsv --folds 5 --seed 0 --out folds/
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.interop.tool import add_version, run_checked
from zoommil.io.sheet import is_missing, read_table, resolve_slide_path, shown

#: The column of `assignments` naming each slide's test fold.
FOLD = "fold"
#: How many inner parts the non-test slides are cut into by default: val is one (~20%).
VAL_PARTS = 5


def groups_of(sheet: pd.DataFrame) -> pd.Series:
    """Each row's patient (stripped, case-folded, as the leakage guard compares them); a slide
    without one (no column, empty, NA) is a group of its own."""
    slides = "slide:" + sheet["slide_id"].astype(str)
    if "patient" not in sheet.columns:
        return slides
    patient = sheet["patient"].astype(str).str.strip()
    keyed = "patient:" + patient.str.casefold()
    return keyed.where(~patient.map(is_missing), slides)


def check_enough_patients(sheet: pd.DataFrame, groups: pd.Series, k: int) -> None:
    """Refuse a class with fewer patients than folds: some fold would test none of it, and a
    class of one or two patients can leave a fold without a train slide of it."""
    per_class = groups.groupby(sheet["label"]).nunique().sort_index()
    short = per_class[per_class < k]
    if len(short):
        listed = ", ".join(f"{shown(c)} ({n})" for c, n in short.items())
        raise ZoomMILError(
            f"{k} folds need at least {k} patients (slides without a patient count one each) "
            f"of every class; too few: {listed}. Use fewer folds, or merge or drop the class"
        )


def _parts(labels: pd.Series, groups: pd.Series, n: int, seed: int) -> list[np.ndarray]:
    """Row positions of ``n`` parts, grouped and stratified (scikit-learn's greedy
    StratifiedGroupKFold: a patient's slides stay together)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    dummy = np.zeros(len(labels))
    with warnings.catch_warnings():  # "least populated class ... less than n_splits": the
        warnings.simplefilter("ignore", UserWarning)  # classes were checked against k before
        splits = splitter.split(dummy, labels.to_numpy(), groups.to_numpy())
        return [test for _, test in splits]


def assignments(sheet: pd.DataFrame, k: int, seed: int = 0) -> pd.Series:
    """Each row's test fold, 0..k-1 (index as ``sheet``'s)."""
    if k < 2:
        raise ZoomMILError(f"--folds must be at least 2, not {k}")
    groups = groups_of(sheet)
    check_enough_patients(sheet, groups, k)
    fold = pd.Series(-1, index=sheet.index, name=FOLD)
    for i, rows in enumerate(_parts(sheet["label"], groups, k, seed)):
        fold.iloc[rows] = i
    return fold


def fold_splits(
    sheet: pd.DataFrame, fold: pd.Series, i: int, seed: int = 0, val_parts: int = VAL_PARTS
) -> pd.Series:
    """train/val/test of every row for fold ``i``: its test part, and val one of ``val_parts``
    grouped, stratified parts of the rest: the first that leaves every class a train slide,
    among them first one with a val slide of every class (with few patients some parts lack a
    class, and model selection on such a val sees only the others)."""
    split = pd.Series("train", index=sheet.index, name="split")
    split[fold == i] = "test"
    rest = sheet.loc[fold != i]
    groups = groups_of(rest)
    # scikit-learn refuses more parts than the largest class has slides, or than there are
    # patients: 3 patients a class with 4 slides each left 4 patients to cut into 5 parts
    largest = int(rest["label"].value_counts().max())
    n = max(2, min(val_parts, largest, groups.nunique()))
    classes = set(sheet["label"])
    vals = [rest.index[part] for part in _parts(rest["label"], groups, n, seed + i)]
    trained = [v for v in vals if classes <= set(rest.loc[rest.index.difference(v), "label"])]
    if not trained:
        raise ZoomMILError(f"fold {i}: no validation part leaves every class a train slide")
    complete = [v for v in trained if classes <= set(rest.loc[v, "label"])]
    split[(complete or trained)[0]] = "val"
    return split


def fold_sheets(sheet: pd.DataFrame, k: int, seed: int = 0) -> list[pd.DataFrame]:
    """The k fold sheets: ``sheet`` with its `split` column (added if absent) per fold."""
    fold = assignments(sheet, k, seed)
    return [sheet.assign(split=fold_splits(sheet, fold, i, seed)) for i in range(k)]


def write(sheet_path: str | Path, out: str | Path, k: int, seed: int = 0) -> list[Path]:
    """Write ``out``/fold_{i}.tsv for each fold and ``out``/folds.tsv (each slide's test
    fold). Slide paths are written absolute (resolved against the input sheet's folder): the
    fold sheets live elsewhere, and one path per slide keeps the feature jobs' params equal
    across the folds' runs."""
    sheet = read_table(sheet_path)
    for column in ("slide_id", "path", "label"):
        if column not in sheet.columns:
            raise ZoomMILError(f"{sheet_path}: slide sheet lacks column {column}")
    sheet["label"] = sheet["label"].str.strip()
    sheet["path"] = [resolve_slide_path(sheet_path, p) if p else p for p in sheet["path"]]
    labels = sorted(set(sheet["label"]))
    if len(labels) < 2:
        listed = ", ".join(map(shown, labels)) or "none"
        raise ZoomMILError(
            f"{sheet_path}: one class only ({listed}): a classifier needs at least two; add "
            "slides of another label"
        )
    try:  # the refusals of too few patients or val slides, said of this sheet
        frames = fold_sheets(sheet, k, seed)
    except ZoomMILError as error:
        raise ZoomMILError(f"{sheet_path}: {error}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = out / f"fold_{i}.tsv"
        frame.to_csv(path, sep="\t", index=False)
        paths.append(path)
    summary = sheet[["slide_id", "label"]].assign(fold=-1)
    for i, frame in enumerate(frames):  # each slide's test fold, as the fold sheets say
        summary.loc[frame["split"] == "test", "fold"] = i
    summary.to_csv(out / "folds.tsv", sep="\t", index=False)
    return paths


def describe(path: Path) -> str:
    """One line per fold sheet: its slides per split and class."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    counts = frame.groupby(["split", "label"]).size()
    parts = []
    for split in ("train", "val", "test"):
        if split in counts.index.get_level_values(0):
            per = ", ".join(f"{label} {n}" for label, n in counts[split].items())
            parts.append(f"{split}: {per}")
    return f"{path}: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoommil.cv.folds", description=__doc__)
    parser.add_argument("sheet", help="slide sheet (TSV/CSV; a split column is replaced)")
    parser.add_argument("--folds", type=int, default=5, help="k (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--out", required=True, help="folder for fold_0.tsv ... and folds.tsv")
    add_version(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    paths = run_checked(
        parser.prog,
        lambda: write(args.sheet, out, args.folds, args.seed),
        [out / "folds.tsv"],
        [("sheet", Path(args.sheet))],
    )
    if paths is None:
        return 2
    for path in paths:
        print(describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
