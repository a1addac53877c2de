"""k-fold cross-validation sheets (`zoommil.cv.folds`) and their combined table
(`zoommil.cv.combine`)."""

from __future__ import annotations

import json
import re
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
    out = tmp_path / "folds"
    assert folds.main([str(tmp_path / "slides.tsv"), "--folds", "5", "--out", str(out)]) == 2
    assert not out.exists()  # the folder made by the check is gone again


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


def test_few_patients_with_many_slides_get_a_val_part(tmp_path: Path) -> None:
    """3 patients per class, 4 slides each, 3 folds: a fold's other 4 patients hold 16 slides,
    and asking scikit-learn for 5 val parts of 4 patients was a ValueError traceback."""
    sheet = cohort(6, slides_per_patient=4)
    sheet["label"] = ["tumor" if int(p[1:]) < 3 else "normal" for p in sheet["patient"]]
    for frame in folds.fold_sheets(sheet, 3, seed=0):
        assert set(frame["split"]) == {"train", "val", "test"}
        assert set(frame.loc[frame["split"] == "train", "label"]) == {"tumor", "normal"}


def test_a_sheet_of_one_class_is_refused_naming_the_file(tmp_path: Path) -> None:
    """One label: nothing to classify. It was written into k fold sheets (or a traceback),
    for the workflow to refuse each fold later."""
    sheet = cohort(12)
    sheet["label"] = "normal"
    path = tmp_path / "slides.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    where = re.escape(str(path))
    with pytest.raises(ZoomMILError, match=rf"^{where}: one class only \('normal'\)"):
        folds.write(path, tmp_path / "out", 3)
    assert not (tmp_path / "out").exists()


def test_a_refusal_names_the_sheet(tmp_path: Path) -> None:
    sheet = cohort(30, slides_per_patient=2)
    sheet.loc[sheet["patient"].isin(["P1", "P5"]), "label"] = "mucinous"
    path = tmp_path / "slides.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    where = re.escape(str(path))
    with pytest.raises(ZoomMILError, match=rf"^{where}: 5 folds need at least 5 patients"):
        folds.write(path, tmp_path / "out", 5)


def test_val_holds_every_class_where_one_of_the_parts_does() -> None:
    """12 slides of 10 patients, 3 classes, 3 folds: each fold's rest was cut into 3 parts of
    which one held every class, and the first part (fold 0: two normal slides) was taken, so
    the workflow warned "no val slides of class(es) atypia, carcinoma" and model selection
    saw one class."""
    sheet = cohort(12)
    sheet["label"] = [CLASSES[i % 3] for i in range(12)]
    sheet.loc[sheet.index[3], "patient"] = "P0"  # the README's tiny test: 10 patients
    sheet.loc[sheet.index[4], "patient"] = "P1"
    sheet.loc[sheet.index[11], "patient"] = "NA"
    for i, frame in enumerate(folds.fold_sheets(sheet, 3, seed=0)):
        val = frame.loc[frame["split"] == "val", "label"]
        assert set(val) == set(CLASSES), (i, sorted(val))


def test_one_fold_is_refused_not_shown_with_a_nan_spread(tmp_path: Path) -> None:
    """`runs/fold_*` matching one folder (the others not run yet) printed "50.0 ± nan" as a
    cross-validation result."""
    _eval(tmp_path / "f0", "m", 0, [("x", "a", "a"), ("y", "b", "a")])
    with pytest.raises(ZoomMILError, match=r"^1 fold folder \(.*f0\): .* at least 2"):
        combine.combine([tmp_path / "f0"])
    out = tmp_path / "cv.csv"
    assert combine.main([str(tmp_path / "f0"), "--out", str(out)]) == 2 and not out.exists()


def test_the_tools_say_a_user_error_in_one_line_naming_the_tool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the interop tools and `zoommil` do: ``PROG: error: ...``, exit 2, and ``--version``;
    an output that names the input is refused before any work."""
    sheet = cohort(30, slides_per_patient=2)
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    args = [str(tmp_path / "slides.tsv"), "--folds", "2"]
    assert folds.main([*args, "--out", str(tmp_path / "slides.tsv" / "sub")]) == 2
    assert folds.main([str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "f")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(
        x.startswith("python -m zoommil.cv.folds: error: ") for x in lines
    )
    assert "missing.tsv" in lines[1]
    _eval(tmp_path / "f0", "m", 0, [("x", "a", "a"), ("y", "b", "a")])
    _eval(tmp_path / "f1", "m", 0, [("z", "a", "a"), ("w", "b", "b")])
    same = tmp_path / "slides.tsv"
    folders = [str(tmp_path / "f0"), str(tmp_path / "f1")]
    assert combine.main([*folders, "--out", str(same), "--sheet", str(same)]) == 2
    assert capsys.readouterr().err.startswith("python -m zoommil.cv.combine: error: ")
    assert (tmp_path / "slides.tsv").read_text().startswith("slide_id")  # not overwritten
    with pytest.raises(SystemExit) as version:
        combine.main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("zoommil ")


def test_a_method_missing_from_a_fold_names_the_fold(tmp_path: Path) -> None:
    for fold in ("f0", "f1"):
        _eval(tmp_path / fold, "m", 0, [(f"{fold}x", "a", "a"), (f"{fold}y", "b", "b")])
    _eval(tmp_path / "f0", "extra", 0, [("f0x", "a", "a"), ("f0y", "b", "b")])
    with pytest.raises(ZoomMILError, match=r"method\(s\) extra not evaluated in .*f1 \("):
        combine.combine([tmp_path / "f0", tmp_path / "f1"])
