"""benchmarks/learning_curve.py: its subsets are nested, class-balanced and the same for a
seed, refused when they cannot be drawn; its summary statistics are the hand-computed ones;
and a tiny real run (`zoommil train`, 1 epoch) writes the JSON it documents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import learning_curve as lc
import pandas as pd
import pytest


def _sheet() -> pd.DataFrame:
    """Unbalanced train split (7 tumor, 5 normal, interleaved), 4 val, 4 test."""
    labels = ["tumor", "normal"] * 5 + ["tumor", "tumor"]
    rows = [("train", label) for label in labels]
    rows += [("val", "tumor"), ("val", "normal")] * 2 + [("test", "tumor"), ("test", "normal")] * 2
    return pd.DataFrame(
        {
            "slide_id": [f"s{i:02d}" for i in range(len(rows))],
            "label": [label for _, label in rows],
            "split": [split for split, _ in rows],
        }
    )


def _labels(sheet: pd.DataFrame, ids: list[str]) -> list[str]:
    return list(sheet.set_index("slide_id").loc[ids, "label"])


@pytest.mark.parametrize("seed", range(6))
def test_subsets_are_nested_class_balanced_train_slides(seed: int) -> None:
    sheet = _sheet()
    train = set(sheet.loc[sheet["split"] == "train", "slide_id"])
    subsets = lc.draw_subsets(sheet, [10, 4, 6], seed)
    assert list(subsets) == [4, 6, 10]
    for n, ids in subsets.items():
        assert len(ids) == len(set(ids)) == n
        assert set(ids) <= train
        labels = _labels(sheet, ids)
        assert labels.count("tumor") == labels.count("normal") == n // 2
        assert ids == [s for s in sheet["slide_id"] if s in set(ids)]  # sheet order
    assert set(subsets[4]) <= set(subsets[6]) <= set(subsets[10])


def test_subsets_are_the_same_for_a_seed_whichever_sizes_are_asked() -> None:
    sheet = _sheet()
    one = lc.draw_subsets(sheet, [4, 6, 10], seed=3)
    assert one == lc.draw_subsets(sheet, [4, 6, 10], seed=3)
    assert lc.draw_subsets(sheet, [6], seed=3) == {6: one[6]}
    assert lc.draw_subsets(sheet, [4, 10], seed=3) == {4: one[4], 10: one[10]}
    others = {tuple(lc.draw_subsets(sheet, [4], seed=s)[4]) for s in range(10)}
    assert len(others) > 1  # the seed does choose the slides


def test_subset_sheet_keeps_val_and_test_as_they_were() -> None:
    sheet = _sheet()
    ids = lc.draw_subsets(sheet, [4], seed=0)[4]
    sub = lc.subset_sheet(sheet, ids)
    assert list(sub.loc[sub["split"] == "train", "slide_id"]) == ids
    fixed = sheet.loc[sheet["split"] != "train"].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub.loc[sub["split"] != "train"].reset_index(drop=True), fixed)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([4, 12], r"n = 12: 6 train slides of class normal needed, the sheet has 5"),
        ([2], r"n = 2: 1 slide\(s\) per class, at least 2 needed"),
        ([0], r"n = 0: 0 slide\(s\) per class"),
        ([5], r"n = 5: not a multiple of the 2 classes"),
    ],
)
def test_subsets_refuse_sizes_the_train_split_cannot_give(sizes: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lc.draw_subsets(_sheet(), sizes, seed=0)


def test_subsets_refuse_labels_outside_the_classes() -> None:
    sheet = _sheet()
    sheet.loc[0, "label"] = "other"
    with pytest.raises(ValueError, match=r"train split: labels \['other'\] not among"):
        lc.draw_subsets(sheet, [4], seed=0)


def test_a_draw_repeating_an_earlier_subset_is_named_once() -> None:
    """Sets, not lists, are compared: draw 2's n 4 is draw 0's in another order."""
    draws = [
        {4: ["a", "b", "c", "d"], 8: list("abcdefgh")},
        {4: ["a", "b", "e", "f"], 8: list("abcdefgh")},
        {4: ["d", "c", "b", "a"], 8: list("hgfedcba")},
    ]
    assert lc.repeated_draws(draws) == {1: {8: 0}, 2: {4: 0, 8: 0}}
    assert lc.repeated_draws(draws[:1]) == {}


def _run(method: str, n: int, seed: int, draw: int, auc: float) -> dict:
    return {"method": method, "n": n, "seed": seed, "draw": draw, "auc": auc, "accuracy": auc}


#: t(0.975, 2) = 4.302652729911275, t(0.975, 3) = 3.182446305284263
HALF_SD_01_N3 = 4.302652729911275 * 0.1 / 3**0.5  # 0.2484138
HALF_SD_005_N3 = HALF_SD_01_N3 / 2  # 0.1242069


def test_summary_is_the_hand_computed_curve_pairs_and_first_n() -> None:
    """zoommil n 8: 0.6, 0.7, 0.8 (mean 0.7, sd 0.1, lower 0.452: not above 0.5); n 16: 0.9,
    0.95, 1.0 (lower 0.826): first n 16. abmil n 8: 0.5, 0.7, 0.6 and a (seed 2, draw 0)
    run zoommil lacks, 0.4: mean 0.55, sd sqrt(0.05 / 3), half width 3.182446 x 0.129099
    / 2 = 0.205426; n 16: 0.7, 0.8, 0.9 (lower 0.552): first n 16. Pairs by (seed, draw),
    not by position (abmil's runs are listed in another order): n 8 differences 0.1, 0.0,
    0.2, n 16 0.2, 0.15, 0.1. meanmil: one run per n, no interval: never."""
    keys = [(0, 0), (0, 1), (1, 0)]
    runs = [_run("zoommil", 8, s, d, a) for (s, d), a in zip(keys, [0.6, 0.7, 0.8], strict=True)]
    runs += [_run("zoommil", 16, s, d, a) for (s, d), a in zip(keys, [0.9, 0.95, 1.0], strict=True)]
    abmil = [_run("abmil", 8, s, d, a) for (s, d), a in zip(keys, [0.5, 0.7, 0.6], strict=True)]
    abmil += [_run("abmil", 16, s, d, a) for (s, d), a in zip(keys, [0.7, 0.8, 0.9], strict=True)]
    runs += [_run("abmil", 8, 2, 0, 0.4)] + abmil[::-1]
    runs += [_run("meanmil", 8, 0, 0, 0.9), _run("meanmil", 16, 0, 0, 0.95)]
    summary = lc.summarise(runs)

    z8, z16 = (summary["curves"]["zoommil"][n]["auc"] for n in ("8", "16"))
    assert (z8["n"], z8["mean"], z8["std"]) == (3, pytest.approx(0.7), pytest.approx(0.1))
    assert z8["ci95"] == pytest.approx([0.7 - HALF_SD_01_N3, 0.7 + HALF_SD_01_N3], abs=1e-6)
    assert z16["ci95"] == pytest.approx([0.95 - HALF_SD_005_N3, 0.95 + HALF_SD_005_N3], abs=1e-6)
    a8 = summary["curves"]["abmil"]["8"]["auc"]
    assert (a8["n"], a8["mean"], a8["std"]) == (4, pytest.approx(0.55), pytest.approx(0.1290994))
    assert a8["ci95"] == pytest.approx([0.55 - 0.205426, 0.55 + 0.205426], abs=1e-6)
    assert list(summary["curves"]["abmil"]) == ["8", "16"]

    paired = summary["paired"]
    assert paired["methods"] == ["zoommil", "abmil"]
    d8, d16 = paired["difference"]["8"], paired["difference"]["16"]
    assert (d8["n"], d8["mean"], d8["std"]) == (3, pytest.approx(0.1), pytest.approx(0.1))
    assert d8["ci95"] == pytest.approx([0.1 - HALF_SD_01_N3, 0.1 + HALF_SD_01_N3], abs=1e-6)
    assert (d16["mean"], d16["std"]) == (pytest.approx(0.15), pytest.approx(0.05))
    assert summary["first_n_above_chance"] == {"zoommil": 16, "abmil": 16, "meanmil": "never"}

    # the draw as the unit: zoommil n 8 draw means 0.7 (0.6, 0.8) and 0.7; abmil 0.5 (0.5,
    # 0.6, 0.4) and 0.7, mean 0.6 (not the runs' 0.55); differences 0.15 (0.1, 0.2) and 0.0:
    # mean 0.075, sd 0.106066, t(0.975, 1) = 12.706205, half width 12.706205 x 0.075
    assert summary["curves"]["zoommil"]["8"]["auc_by_draw"] == {
        "n": 2, "mean": pytest.approx(0.7), "std": pytest.approx(0.0, abs=1e-12),
        "ci95": pytest.approx([0.7, 0.7]),
    }  # fmt: skip
    a8 = summary["curves"]["abmil"]["8"]["auc_by_draw"]
    assert (a8["n"], a8["mean"]) == (2, pytest.approx(0.6))
    d8 = summary["paired"]["by_draw"]["8"]
    assert (d8["n"], d8["mean"], d8["std"]) == (2, pytest.approx(0.075), pytest.approx(0.106066))
    assert d8["ci95"] == pytest.approx([0.075 - 0.9529654, 0.075 + 0.9529654], abs=1e-6)


def test_first_n_is_the_smallest_whose_lower_bound_is_above_chance() -> None:
    def curve(*lows: float | None) -> dict:
        return {str(n): {"auc": {"ci95": None if lo is None else [lo, 1.0]}}
                for n, lo in zip((32, 8, 16), lows, strict=True)}  # fmt: skip

    assert lc.first_above_chance(curve(0.6, 0.4, 0.51)) == 16
    assert lc.first_above_chance(curve(0.6, 0.55, 0.4)) == 8  # the smallest, not the last
    assert lc.first_above_chance(curve(0.5, 0.1, None)) == "never"  # 0.5 is not above


def test_summary_without_both_paired_methods_has_no_pairs() -> None:
    summary = lc.summarise([_run("meanmil", 8, 0, 0, 0.6), _run("meanmil", 8, 1, 0, 0.7)])
    assert summary["paired"] is None
    assert summary["first_n_above_chance"] == {"meanmil": "never"}


@pytest.fixture
def torch_threads_kept() -> Iterator[int]:
    """`zoommil train` sets torch's thread count while it runs; run in-process, the tests
    after this one (test_training checks it) must keep their own, whatever happens here."""
    import torch

    saved = torch.get_num_threads()
    yield saved
    torch.set_num_threads(saved)


def test_tiny_real_run_writes_the_documented_json(tmp_path: Path, torch_threads_kept: int) -> None:
    """--quick on an 18-slide cohort, 1 epoch, ZoomMIL and ABMIL: real `zoommil train` runs
    (about 10 s here; no training is monkeypatched)."""
    import torch

    out = tmp_path / "out"
    argv = ["--quick", "--methods", "zoommil", "abmil", "--sizes", "4", "8", "--n-train", "8",
            "--n-val", "4", "--n-test", "6", "--epochs", "1", "--work", str(tmp_path / "work"),
            "--out", str(out)]  # fmt: skip
    lc.main(argv)
    assert torch.get_num_threads() == torch_threads_kept
    result = json.loads((out / "learning_curve.json").read_text())
    assert set(result) == {"meta", "summary", "subsets", "repeated_draws", "runs"}
    meta = result["meta"]
    assert {"command", "quick", "seconds", "cpu_seconds", "peak_rss_mb", "machine", "versions",
            "cohort", "args"} <= set(meta)  # fmt: skip
    assert meta["command"] == "python benchmarks/learning_curve.py " + " ".join(argv)
    assert "torch" in meta["versions"] and "zoommil" in meta["versions"]
    assert meta["peak_rss_mb"] > 0 and meta["seconds"] > 0

    # 2 methods x 1 seed x (2 draws at n 4 + 1 at n 8: all 8 train slides, draw 1 = draw 0)
    runs = result["runs"]
    assert sorted((r["method"], r["n"], r["draw"], r["seed"]) for r in runs) == sorted(
        (m, n, d, 0) for m in ("zoommil", "abmil") for n, d in ((4, 0), (4, 1), (8, 0))
    )
    assert result["repeated_draws"] == {"1": {"8": 0}}
    assert all(0 <= r["auc"] <= 1 for r in runs)
    subsets = result["subsets"]
    assert set(subsets) == {"0", "1"}
    for draw in subsets.values():
        assert set(draw["4"]) < set(draw["8"]) and len(draw["8"]) == 8

    summary = result["summary"]
    assert set(summary["curves"]) == {"zoommil", "abmil"}
    assert set(summary["curves"]["zoommil"]) == {"4", "8"}
    auc = {(r["method"], r["n"], r["draw"]): r["auc"] for r in runs}
    diff = summary["paired"]["difference"]["4"]
    want = [auc[("zoommil", 4, d)] - auc[("abmil", 4, d)] for d in (0, 1)]
    assert (diff["n"], diff["mean"]) == (2, pytest.approx(sum(want) / 2))
    assert set(summary["first_n_above_chance"]) == {"zoommil", "abmil"}
    assert (
        summary["curves"]["abmil"]["8"]["auc"]["n"]
        == summary["paired"]["difference"]["8"]["n"]
        == 1
    )
    md = (out / "learning_curve.md").read_text()
    assert "| zoommil | 4 | 2 |" in md and "Smallest n whose AUC interval" in md
    assert "Not trained or counted (the subset of an earlier draw): draw 1 at n 8." in md
    assert "SYNTHETIC" in md


def test_sizes_the_cohort_cannot_give_stop_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--sizes", "4", "12", "--n-train", "8", "--n-val", "4", "--n-test", "4",
            "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        lc.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--sizes: n = 12: 6 train slides of class normal needed, the sheet has 4" in err
    assert not (tmp_path / "out" / "learning_curve.json").exists()


def test_no_draws_is_a_usage_error_before_the_cohort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        lc.main(["--draws", "0", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    assert stop.value.code == 2
    assert "error: --draws 0: at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_first_n_over_draws_takes_the_draw_as_the_unit() -> None:
    """Two seeds per draw share its subset: draws 0.70, 0.72 and 0.60, 0.62 give a replicates'
    interval above 0.5 (lower 0.568, first n 8) but per-draw means 0.71 and 0.61 (n 2, half
    width 12.706 x 0.0707 / sqrt 2 = 0.635): never above chance over draws."""
    runs = [_run("meanmil", 8, s, d, a) for s, d, a in [(0, 0, 0.7), (1, 0, 0.72)]]
    runs += [_run("meanmil", 8, s, d, a) for s, d, a in [(0, 1, 0.6), (1, 1, 0.62)]]
    summary = lc.summarise(runs)
    assert summary["first_n_above_chance"] == {"meanmil": 8}
    assert summary["first_n_above_chance_by_draw"] == {"meanmil": "never"}
