"""k-fold cross-validation sheets (`zoommil.cv.folds`) and their combined table
(`zoommil.cv.combine`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from zoommil.cv import combine, folds
from zoommil.errors import ZoomMILError

CLASSES = ("normal", "atypia", "carcinoma")


def cohort(n_patients: int = 20, slides_per_patient: int = 1) -> pd.DataFrame:
    """Patients of three unequal classes (half normal), each with its slides."""
    rows = []
    for p in range(n_patients):
        label = CLASSES[0] if p % 2 == 0 else CLASSES[1 + (p // 2) % 2]
        for s in range(slides_per_patient):
            rows.append({"slide_id": f"s{p}_{s}", "path": f"slides/s{p}_{s}.svs",
                         "label": label, "split": "train", "patient": f"P{p}"})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_test_parts_partition_the_slides() -> None:
    sheet = cohort(20, slides_per_patient=2)
    sheets = folds.fold_sheets(sheet, 5, seed=0)
    tested = [set(f.loc[f["split"] == "test", "slide_id"]) for f in sheets]
    assert sorted(s for t in tested for s in t) == sorted(sheet["slide_id"])  # each once
    for frame in sheets:
        assert list(frame["slide_id"]) == list(sheet["slide_id"])  # every slide in every fold
        assert set(frame["split"]) == {"train", "val", "test"}
        assert set(frame.loc[frame["split"] == "train", "label"]) == set(CLASSES)


def test_no_patient_is_in_two_parts_of_a_fold() -> None:
    sheet = cohort(18, slides_per_patient=3)
    sheet.loc[sheet.index[1], "patient"] = " p0 "  # the leakage guard's spelling of P0
    sheet.loc[sheet.index[4], "patient"] = ""  # no patient: a group of its own
    for frame in folds.fold_sheets(sheet, 3, seed=1):
        key = frame["patient"].str.strip().str.casefold()
        named = frame.loc[key != ""]
        assert (named.groupby(key[key != ""])["split"].nunique() == 1).all()


def test_each_fold_tests_its_share_of_every_class_within_one_slide() -> None:
    sheet = cohort(23)  # one slide per patient: 12 normal, 6 and 5 of the others
    fold = folds.assignments(sheet, 5, seed=3)
    counts = pd.crosstab(fold, sheet["label"])
    for label, n in sheet["label"].value_counts().items():
        assert counts[label].max() - counts[label].min() <= 1, (label, counts[label].tolist())
        assert counts[label].sum() == n


def test_same_sheet_and_seed_same_folds(tmp_path: Path) -> None:
    sheet = cohort(20)
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    a = folds.write(tmp_path / "slides.tsv", tmp_path / "a", 4, seed=7)
    b = folds.write(tmp_path / "slides.tsv", tmp_path / "b", 4, seed=7)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = folds.assignments(sheet, 4, seed=8)
    assert not other.equals(folds.assignments(sheet, 4, seed=7))
    written = pd.read_csv(a[0], sep="\t", dtype=str)
    assert written["path"].iloc[0] == str(tmp_path / "slides" / "s0_0.svs")  # absolute


def test_a_class_with_fewer_patients_than_folds_is_refused_by_name(tmp_path: Path) -> None:
    sheet = cohort(30, slides_per_patient=2)
    rare = sheet["patient"].isin(["P1", "P5"])  # 2 patients (4 slides) of their own class
    sheet.loc[rare, "label"] = "mucinous"
    with pytest.raises(ZoomMILError, match=r"5 patients .*too few: 'mucinous' \(2\)\. Use"):
        folds.assignments(sheet, 5)
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    assert folds.main([str(tmp_path / "slides.tsv"), "--folds", "5", "--out", "x"]) == 1


def _eval(folder: Path, method: str, seed: int, rows: list[tuple[str, str, str]]) -> None:
    """An evaluation JSON of (slide, label, pred) rows, as `zoommil evaluate` writes it."""
    from sklearn.metrics import accuracy_score, f1_score

    labels, preds = [r[1] for r in rows], [r[2] for r in rows]
    record = {
        "classes": ["a", "b"],
        "accuracy": accuracy_score(labels, preds),
        "weighted_f1": f1_score(labels, preds, average="weighted", zero_division=0),
        "predictions": [{"slide_id": s, "label": y, "pred": p} for s, y, p in rows],
    }
    path = folder / "results" / "eval" / method / f"seed~{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_the_spread_is_over_folds_not_over_every_run(tmp_path: Path) -> None:
    """Fold 0 all right, fold 1 half right, each with two seeds: the std over folds is that of
    the two fold means (1.0, 0.5), not of the four runs, and the pooled score counts each
    slide once per seed."""
    right = [("f0a", "a", "a"), ("f0b", "b", "b")]
    for seed in (0, 1):
        _eval(tmp_path / "f0", "m", seed, right)
    _eval(tmp_path / "f1", "m", 0, [("f1a", "a", "a"), ("f1b", "b", "a")])
    _eval(tmp_path / "f1", "m", 1, [("f1a", "a", "b"), ("f1b", "b", "b")])
    row = combine.combine([tmp_path / "f0", tmp_path / "f1"]).iloc[0]
    assert row["accuracy_mean"] == pytest.approx(0.75)
    assert row["accuracy_std_folds"] == pytest.approx(pd.Series([1.0, 0.5]).std())
    assert row["accuracy_std_seeds"] == 0.0  # both folds' seeds agree on accuracy
    assert row["accuracy_pooled"] == pytest.approx(0.75) and row["n_test_slides"] == 4


def test_folds_that_test_one_slide_twice_are_refused(tmp_path: Path) -> None:
    _eval(tmp_path / "f0", "m", 0, [("x", "a", "a"), ("y", "b", "b")])
    _eval(tmp_path / "f1", "m", 0, [("y", "b", "b"), ("z", "a", "a")])
    with pytest.raises(ZoomMILError, match="slide y is a test slide of both"):
        combine.combine([tmp_path / "f0", tmp_path / "f1"])
