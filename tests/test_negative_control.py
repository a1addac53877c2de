"""benchmarks/negative_control.py: its permutation is a fair null, its cohort is one the
training reader accepts, and its planted leak is what it says."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "negative_control.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("negative_control", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sheet() -> pd.DataFrame:
    """Splits of different class balance: a shuffle across splits would move counts."""
    rows = [("train", "tumor")] * 7 + [("train", "normal")] * 3
    rows += [("val", "tumor")] * 2 + [("val", "normal")] * 4
    rows += [("test", "tumor")] * 3 + [("test", "normal")] * 3
    return pd.DataFrame(
        {
            "slide_id": [f"s{i:02d}" for i in range(len(rows))],
            "label": [label for _, label in rows],
            "split": [split for split, _ in rows],
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_permutation_keeps_each_splits_class_counts_and_changes_labels(bench, seed) -> None:
    sheet = _sheet()
    shuffled = bench.permute_labels(sheet, np.random.default_rng(seed))
    assert list(shuffled["slide_id"]) == list(sheet["slide_id"])
    assert list(shuffled["split"]) == list(sheet["split"])
    for split, rows in sheet.groupby("split"):
        after = shuffled.loc[rows.index, "label"]
        assert sorted(after) == sorted(rows["label"]), split
        assert (after != rows["label"]).any(), f"{split}: labels left as they were"


def test_permutation_refuses_a_split_of_one_class(bench) -> None:
    sheet = pd.DataFrame({"slide_id": ["a", "b"], "label": ["x", "x"], "split": ["test"] * 2})
    with pytest.raises(ValueError, match="test: one class only"):
        bench.permute_labels(sheet, np.random.default_rng(0))


def test_cohort_is_read_by_training_and_leak_copies_test_slides_into_train(
    bench, tmp_path: Path
) -> None:
    from zoommil.io.featurefile import read_feature_file
    from zoommil.training.data import drop_empty, split_records

    args = argparse.Namespace(
        n_train=4, n_val=2, n_test=2, parents=9, lesions=2, signal=5.0, dim=8, cohort_seed=0
    )
    sheet = bench.make_cohort(tmp_path, args)
    records, _ = split_records(sheet, "train", tmp_path, list(bench.CLASSES), {})
    kept, skipped, dim, _ = drop_empty(records, bench.MAGS)  # the layout check of training
    assert (len(kept), skipped, dim) == (4, [], 8)
    # the planted signal: every tumor slide has lesion patches far out along the first axis
    peak = {r.slide_id: read_feature_file(r.path, bench.MAGS).feats[0][:, 0].max() for r in records}
    labels = dict(zip(sheet["slide_id"], sheet["label"], strict=True))
    assert min(v for s, v in peak.items() if labels[s] == "tumor") > 3
    leaky = bench.with_leak(sheet, tmp_path)
    copies = leaky.loc[leaky["slide_id"].str.startswith("leak_")]
    test = sheet.loc[sheet["split"] == "test"]
    assert list(copies["split"]) == ["train"] * len(test)
    assert list(copies["label"]) == list(test["label"])
    for slide in test["slide_id"]:
        assert (tmp_path / f"leak_{slide}.h5").read_bytes() == (
            tmp_path / f"{slide}.h5"
        ).read_bytes()
