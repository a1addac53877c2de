"""benchmarks/label_noise.py: its flips touch only the splits asked for, never test, exactly
round(r * n) of them, the same for a seed, keeping class counts; its sheets train; and its
summary statistics are the hand-computed ones."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import label_noise as ln
import negative_control as nc
import pandas as pd
import pytest

from zoommil.io.sheet import check_splits, read_sheet


def _sheet() -> pd.DataFrame:
    """Unbalanced splits of odd sizes: 11 train (7 tumor), 7 val (3 tumor), 6 test."""
    rows = [("train", "tumor")] * 7 + [("train", "normal")] * 4
    rows += [("val", "tumor")] * 3 + [("val", "normal")] * 4
    rows += [("test", "tumor")] * 3 + [("test", "normal")] * 3
    return pd.DataFrame(
        {
            "slide_id": [f"s{i:02d}" for i in range(len(rows))],
            "label": [label for _, label in rows],
            "split": [split for split, _ in rows],
        }
    )


def _flipped(sheet: pd.DataFrame, noisy: pd.DataFrame, split: str) -> set[str]:
    changed = (noisy["label"] != sheet["label"]) & (sheet["split"] == split)
    return set(sheet.loc[changed, "slide_id"])


def test_n_flips_rounds_half_up_and_through_float_error() -> None:
    # 0.5 -> 1 (Python's round gives 0), 0.15 * 10 is 1.4999999999999998 in floats
    assert [ln.n_flips(r, n) for r, n in [(0.5, 1), (0.15, 10), (0.1, 40), (0.3, 20)]] == [
        1,
        2,
        4,
        6,
    ]
    assert [ln.n_flips(r, 11) for r in (0.0, 0.1, 0.2, 0.3, 1.0)] == [0, 1, 2, 3, 11]


#: round(r * n), half up, by hand for the 11 train and 7 val slides of `_sheet`
FLIPS = {0.0: (0, 0), 0.1: (1, 1), 0.2: (2, 1), 0.3: (3, 2), 0.5: (6, 4), 1.0: (11, 7)}


@pytest.mark.parametrize("arm", sorted(ln.ARMS))
@pytest.mark.parametrize("rate", sorted(FLIPS))
def test_flips_exactly_round_r_n_of_the_arms_splits_and_never_test(arm: str, rate: float) -> None:
    sheet = _sheet()
    noisy = ln.flip_labels(sheet, ln.ARMS[arm], rate, seed=3)
    assert list(noisy["slide_id"]) == list(sheet["slide_id"])
    assert list(noisy["split"]) == list(sheet["split"])
    want = dict(zip(("train", "val"), FLIPS[rate], strict=True))
    got = {s: len(_flipped(sheet, noisy, s)) for s in ("train", "val", "test")}
    assert got == {s: want.get(s, 0) if s in ln.ARMS[arm] else 0 for s in got}


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5])
def test_flips_keep_each_splits_class_counts_within_one(rate: float) -> None:
    """Half the flips go each way: an even number keeps the counts, an odd one moves them
    by one (7/4 train with 1 flip: 6/5 or 8/3, never more)."""
    sheet = _sheet()
    for seed, split in itertools.product(range(10), ("train", "val")):
        noisy = ln.flip_labels(sheet, ("train", "val"), rate, seed=seed)
        before = sheet.loc[sheet["split"] == split, "label"].value_counts()
        after = noisy.loc[noisy["split"] == split, "label"].value_counts()
        k = ln.n_flips(rate, int(before.sum()))
        moved = abs(int(after.get("tumor", 0)) - int(before["tumor"]))
        assert moved == k % 2, (seed, split, k, before.to_dict(), after.to_dict())


def test_flips_are_the_same_for_a_seed_nested_over_rates_and_arms() -> None:
    sheet = _sheet()
    one = ln.flip_labels(sheet, ("train",), 0.3, seed=7)
    pd.testing.assert_frame_equal(one, ln.flip_labels(sheet, ("train",), 0.3, seed=7))
    others = [_flipped(sheet, ln.flip_labels(sheet, ("train",), 0.3, s), "train") for s in range(8)]
    assert len({frozenset(f) for f in others}) > 1  # the seed does choose the slides
    # a lower rate flips a subset; the train+val arm flips train as the train arm does
    low = _flipped(sheet, ln.flip_labels(sheet, ("train",), 0.1, seed=7), "train")
    assert low <= _flipped(sheet, one, "train")
    both = ln.flip_labels(sheet, ("train", "val"), 0.3, seed=7)
    assert _flipped(sheet, both, "train") == _flipped(sheet, one, "train")
    assert _flipped(sheet, both, "test") == set()


def test_flipping_refuses_test_and_non_binary_labels() -> None:
    sheet = _sheet()
    with pytest.raises(ValueError, match=r"\['test'\]: only train and val labels"):
        ln.flip_labels(sheet, ("train", "test"), 0.1, seed=0)
    sheet.loc[0, "label"] = "other"
    with pytest.raises(ValueError, match=r"split train: labels \['other'\] not among"):
        ln.flip_labels(sheet, ("train",), 0.1, seed=0)


def test_flipped_sheet_passes_the_sheet_checks_and_trains(tmp_path: Path) -> None:
    """The sheet `zoommil train` reads: written, read back and checked as the workflow
    does, then the --quick path end to end on a small cohort: `zoommil train` takes the
    flipped sheet and the result says what was flipped."""
    noisy = ln.flip_labels(_sheet(), ("train", "val"), 0.3, seed=0)
    noisy.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    check_splits(read_sheet(tmp_path / "sheet.tsv"), tmp_path / "sheet.tsv", classes=nc.CLASSES)

    out = tmp_path / "out"
    argv = ["--quick", "--methods", "meanmil", "--n-train", "8", "--n-val", "4",
            "--n-test", "6", "--epochs", "2", "--out", str(out)]  # fmt: skip
    ln.main(argv)
    result = json.loads((out / "label_noise.json").read_text())
    runs = result["runs"]
    assert [(r["arm"], r["rate"], r["flipped"]) for r in runs] == [
        ("clean", 0.0, "0"),
        ("train", 0.3, "2"),  # round(0.3 * 8)
    ]
    assert set(result["summary"]["meanmil"]) == {"clean", "train"}
    drop = result["summary"]["meanmil"]["train"]["0.3"]["drop"]["mean"]
    assert drop == pytest.approx(runs[0]["auc"] - runs[1]["auc"])
    assert "| meanmil | train | 0.3 | 1 | 2 |" in (out / "label_noise.md").read_text()


def test_interval_is_the_hand_computed_t_interval() -> None:
    # mean 0.9, sd 0.1, t(0.975, 2) = 4.302652729911275: half width 0.248414...
    s = ln.interval([0.8, 0.9, 1.0])
    assert (s["n"], s["mean"], s["std"]) == (3, pytest.approx(0.9), pytest.approx(0.1))
    assert s["ci95"] == pytest.approx([0.9 - 0.2484138, 0.9 + 0.2484138], abs=1e-6)
    assert ln.interval([0.7]) == {"n": 1, "mean": 0.7, "std": 0.0, "ci95": None}


def test_summary_pairs_each_noisy_run_with_its_seeds_clean_run() -> None:
    """Clean AUC 0.9 (seed 0) and 0.8 (seed 1); noisy (seed, draw) AUCs 0.7, 0.8, 0.6, 0.8:
    drops 0.2, 0.1, 0.2, 0.0, mean 0.125, sd sqrt(0.0275 / 3) = 0.0957427, t(0.975, 3)
    = 3.182446: half width 0.152348."""

    def run(seed: int, arm: str, rate: float, auc: float) -> dict:
        return {"method": "m", "seed": seed, "arm": arm, "rate": rate, "auc": auc, "flipped": "4"}

    runs = [run(0, "clean", 0.0, 0.9), run(1, "clean", 0.0, 0.8)]
    runs += [run(0, "train", 0.2, 0.7), run(0, "train", 0.2, 0.8)]
    runs += [run(1, "train", 0.2, 0.6), run(1, "train", 0.2, 0.8)]
    s = ln.summarise(runs)["m"]
    assert s["clean"]["0.0"]["auc"]["mean"] == pytest.approx(0.85)
    noisy = s["train"]["0.2"]
    assert noisy["auc"]["mean"] == pytest.approx(0.725)
    drop = noisy["drop"]
    assert (drop["n"], drop["mean"], drop["std"]) == (
        4,
        pytest.approx(0.125),
        pytest.approx(0.0957427, abs=1e-7),
    )
    assert drop["ci95"] == pytest.approx([0.125 - 0.152348, 0.125 + 0.152348], abs=1e-6)
    assert noisy["flipped"] == ["4"]
