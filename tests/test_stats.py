"""Statistics of the tables (reporting.stats) against cases small enough to work out by hand."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from zoommil.reporting import stats, table_format, table_frames, table_notes, tables

CLASSES = ["a", "b", "c"]


def preds(
    labels: list[int], *seed_preds: list[int], seeds: tuple[int, ...] = ()
) -> stats.Predictions:
    """Predictions of one method: one list of predicted classes per seed."""
    return stats.Predictions(
        tuple(f"s{i}" for i in range(len(labels))),
        seeds or tuple(range(len(seed_preds))),
        np.array(labels),
        np.array(seed_preds),
        3,
    )


def test_weighted_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 9))
    predicted = rng.integers(0, 3, (40, 9))
    predicted[0] = 0  # one class predicted only; a class absent from some label sets
    expected = [
        f1_score(y, p, labels=[0, 1, 2], average="weighted", zero_division=0)
        for y, p in zip(labels, predicted, strict=True)
    ]
    assert stats.weighted_f1(labels, predicted, 3) == pytest.approx(expected, abs=1e-12)


def test_metric_is_averaged_over_seeds() -> None:
    # seed 0 right on both slides, seed 1 on one: accuracy (1 + 0.5) / 2
    p = preds([0, 1], [0, 1], [0, 0])
    idx = np.arange(2)
    assert stats.seed_mean_metric(p, "accuracy", idx) == pytest.approx(0.75)
    # weighted F1: seed 0 -> 1; seed 1: class 0 F1 2/3, class 1 F1 0 -> 1/3; mean 2/3
    assert stats.seed_mean_metric(p, "weighted_f1", idx) == pytest.approx(2 / 3)


def test_a_score_at_the_bound_gets_an_exact_interval_or_none() -> None:
    """Every seed right on every slide: every bootstrap resample gives 100%, and the
    percentile "interval" [100, 100] claimed certainty from 5 slides. Accuracy gets the exact
    Clopper-Pearson interval of 5 of 5 (0 of 5 when all are wrong), weighted F1 none."""
    from scipy.stats import binomtest

    labels = [0, 1, 2, 0, 1]
    right = stats.method_ci(preds(labels, labels, labels), "accuracy")
    assert (right.estimate, right.high, right.kind) == (1.0, 1.0, stats.CLOPPER_PEARSON)
    assert right.low == pytest.approx(0.025 ** (1 / 5)) and right.low < 0.5
    exact = binomtest(5, 5).proportion_ci(0.95, method="exact")
    assert (right.low, right.high) == pytest.approx((exact.low, exact.high))
    wrong_preds = [1, 2, 0, 1, 2]
    wrong = stats.method_ci(preds(labels, wrong_preds, wrong_preds), "accuracy")
    assert (wrong.estimate, wrong.low, wrong.kind) == (0.0, 0.0, stats.CLOPPER_PEARSON)
    assert wrong.high == pytest.approx(1 - 0.025 ** (1 / 5))
    for p in (preds(labels, labels, labels), preds(labels, wrong_preds, wrong_preds)):
        f1 = stats.method_ci(p, "weighted_f1")
        assert math.isnan(f1.low) and math.isnan(f1.high) and f1.kind == stats.CONSTANT
    # every slide right for one seed of two: every resample gives 50%, also no interval
    half = stats.method_ci(preds([0, 1], [0, 1], [1, 0]), "accuracy")
    assert half.estimate == 0.5 and math.isnan(half.low) and half.kind == stats.CONSTANT
    # elsewhere the bootstrap, as before
    assert stats.method_ci(preds([0, 1], [0, 0]), "accuracy").kind == stats.BOOTSTRAP


def test_resamples_equal_up_to_float_rounding_have_no_interval() -> None:
    """Every slide right for 2 of 4 seeds, not the same 2: every resample's accuracy is 50%,
    but the seed mean adds the per-seed fractions of each resample in another order and
    left them up to 1e-16 apart, so the zero-width [50.0, 50.0] came back as a bootstrap
    interval. The same for a difference: A's and B's seeds right on the same slides, in
    another seed order."""
    labels = [0, 0, 0]
    right = [[(i + s) % 4 < 2 for i in range(3)] for s in range(4)]
    half = stats.method_ci(preds(labels, *[[1 - r for r in row] for row in right]), "accuracy")
    assert half.estimate == pytest.approx(0.5) and half.kind == stats.CONSTANT
    assert math.isnan(half.low) and math.isnan(half.high)
    a = preds(labels, [0, 0, 0], [0, 0, 0], [0, 1, 1])
    b = preds(labels, [0, 0, 0], [0, 1, 1], [0, 0, 0])
    result = stats.compare(a, b, "accuracy")
    assert result.difference == pytest.approx(0, abs=1e-12) and result.ci_kind == stats.CONSTANT
    assert math.isnan(result.low) and math.isnan(result.high)


def test_ci_of_two_slides_covers_the_bootstrap_distribution() -> None:
    # right on one of two slides: resampled accuracy is 0, 0.5, 1 with probability 1/4, 1/2,
    # 1/4, so the 2.5th and 97.5th percentiles are 0 and 1
    interval = stats.method_ci(preds([0, 1], [0, 0]), "accuracy")
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_ci_is_the_95_percent_percentile_interval_of_an_asymmetric_case() -> None:
    # 11 of 13 slides right: the resampled accuracy is Binomial(13, 11/13) / 13, whose 2.5th
    # and 97.5th percentiles are 8/13 and 1 (cdf >= 0.012 away from both levels, 5 standard
    # errors of 5000 resamples). The percentile interval is [8/13, 1], asymmetric about
    # 11/13; the "basic" one would be [9/13, 14/13] and a 90% one [9/13, 1].
    from scipy.stats import binom

    n, right = 13, 11
    grid = np.arange(n + 1)
    cdf = binom.cdf(grid, n, right / n)
    for level in (0.025, 0.975):
        assert np.abs(cdf - level).min() > 0.012
    low, high = (binom.ppf(q, n, right / n) / n for q in (0.025, 0.975))
    assert (low, high) == (8 / 13, 1.0)
    interval = stats.method_ci(preds([0] * n, [0] * right + [1] * (n - right)), "accuracy")
    assert interval.estimate == pytest.approx(right / n)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize(("n_seeds", "n_classes", "n_slides"), [(1, 2, 1), (3, 3, 40), (5, 6, 17)])
def test_seed_mean_metric_from_slide_counts_equals_the_gathered_metric(
    n_seeds: int, n_classes: int, n_slides: int
) -> None:
    """The counts-based seed mean (one matrix product per resample batch) must give exactly,
    bit for bit, the metric computed on every seed's gathered predictions, so that the
    tables' numbers do not move with the faster path."""
    rng = np.random.default_rng(n_slides)
    pred = stats.Predictions(
        tuple(f"s{i}" for i in range(n_slides)),
        tuple(range(n_seeds)),
        rng.integers(0, n_classes, n_slides),
        rng.integers(0, n_classes, (n_seeds, n_slides)),
        n_classes,
    )
    for idx in (
        np.arange(n_slides),
        rng.integers(0, n_slides, (64, n_slides)),
        rng.integers(0, n_slides, (2, 5, n_slides)),
    ):
        gathered_labels, gathered = pred.labels[idx][None], pred.preds[:, idx]
        expected = {
            "accuracy": stats.accuracy(gathered_labels, gathered).mean(axis=0),
            "weighted_f1": stats.weighted_f1(gathered_labels, gathered, n_classes).mean(axis=0),
        }
        for metric, value in expected.items():
            got = stats.seed_mean_metric(pred, metric, idx)
            assert got.shape == idx.shape[:-1] and np.array_equal(got, value), metric


def test_one_slide_left_has_no_interval_and_no_test() -> None:
    # the other test slides excluded upstream: scipy's permutation test refuses one sample,
    # and a zero-width "interval" would claim certainty; both are NaN, shown as n/a
    a, b = preds([1], [1], [1]), preds([1], [0], [1])
    assert math.isnan(stats.method_ci(a, "accuracy").low)
    result = stats.compare(a, b, "accuracy")
    assert result.difference == 0.5 and result.n_slides == 1
    assert all(math.isnan(v) for v in (result.low, result.high, result.p_value))
    table = table_frames.comparison_table({"a": a, "b": b}, "a", {"b": "baseline"}, {}, {})
    shown = table_format.comparison_display(table, {}, [])
    assert shown.iloc[0]["p (Accuracy)"] == "n/a"
    # the notes say why the cells have no interval (they explained only the constant case)
    assert "Δ [n/a] without a CI: one test slide, nothing to resample" in (
        table_notes.comparison_notes(table, [])
    )
    main = pd.DataFrame({"accuracy_ci_method": [stats.method_ci(a, "accuracy").kind]})
    assert table_notes.ci_notes([], main) == ["no CI: one test slide, nothing to resample"]
    assert "the 1 test slide both" in table_notes.comparison_notes(table, [])[0]


def test_a_monte_carlo_p_at_its_floor_is_shown_as_a_bound() -> None:
    """With 40 slides (Monte Carlo) and no swap reaching the observed difference, p is the
    floor 2/20001 and was printed as if measured, '0.0001'; it is at most that."""
    labels = [i % 3 for i in range(40)]
    right = preds(labels, labels, labels)
    wrong = preds(labels, *[[(label + 1) % 3 for label in labels]] * 2)
    result = stats.compare(right, wrong, "accuracy")
    assert not result.exact
    assert result.p_value == pytest.approx(2 / (stats.N_PERMUTATIONS + 1))
    assert stats.at_monte_carlo_floor(result.p_value, result.exact)
    assert not stats.at_monte_carlo_floor(result.p_value, True)  # an exact p is measured
    assert not stats.at_monte_carlo_floor(3 / (stats.N_PERMUTATIONS + 1), False)
    table = table_frames.comparison_table({"a": right, "b": wrong}, "a", {"b": "baseline"}, {}, {})
    shown = table_format.comparison_display(table, {}, [])
    assert shown.iloc[0]["p (Accuracy)"] == "≤ 0.0001 (Holm ≤ 0.0001)"
    notes = table_notes.comparison_notes(table, [])
    assert any(n.startswith("≤ p: none of the 20000 swaps reached") for n in notes), notes
    latex = table_format.to_latex(shown, "title", notes, [], "tab:c")
    assert r"$\leq$ 0.0001\\{}(Holm $\leq$ 0.0001)" in latex  # the Holm q under the p
    assert latex.isascii(), {c for c in latex if not c.isascii()}  # pdflatex's text mode


def test_raw_and_holm_p_values_print_to_the_same_digits() -> None:
    """The Holm-adjusted p was printed to 2 significant digits, the raw p to 3."""
    table = pd.DataFrame(
        {
            "reference": ["a", "a"],
            "method": ["b", "c"],
            "kind": ["baseline"] * 2,
            "tflops_ratio": [math.nan] * 2,
            **{
                f"{m}_{x}": values
                for m in stats.METRICS
                for x, values in (
                    ("diff", [0.1, 0.2]),
                    ("ci_low", [0.0, 0.1]),
                    ("ci_high", [0.2, 0.3]),
                    ("p", [0.0625, 0.000977]),
                    ("p_holm", [0.375, 0.0117]),
                )
            },
        }
    )
    shown = table_format.comparison_display(table, {}, [])
    assert list(shown["p (Accuracy)"]) == ["0.0625 (Holm 0.375)", "0.000977 (Holm 0.0117)"]


def test_identical_predictions_differ_by_zero_with_p_one_and_no_interval() -> None:
    """Every resample gives the difference 0: the zero-width [+0.0, +0.0] claimed certainty
    from 4 slides, so there is no interval, printed [n/a] with a note, as for one method."""
    p = preds([0, 1, 2, 1], [0, 2, 2, 1], [1, 1, 2, 1])
    for metric in stats.METRICS:
        result = stats.compare(p, p, metric)
        assert (result.difference, result.p_value, result.ci_kind) == (0, 1.0, stats.CONSTANT)
        assert math.isnan(result.low) and math.isnan(result.high)
        assert result.exact and result.n_slides == 4 and result.n_seeds == 2
    other = preds([0, 1, 2, 1], [0, 1, 2, 0], [0, 1, 2, 1])  # per-slide differences vary
    methods = {"a": p, "b": p, "c": other}
    table = table_frames.comparison_table(methods, "a", {"b": "x", "c": "y"}, {}, {})
    same, varies = table_format.comparison_display(table, {}, [])["Δ Accuracy (pp) [95% CI]"]
    assert same == "+0.0 [n/a]"
    assert re.fullmatch(r"-12\.5 \[-?\d+\.\d, \+?\d+\.\d\]", varies), varies
    assert list(table["accuracy_ci_method"]) == [stats.CONSTANT, stats.BOOTSTRAP]
    notes = " | ".join(table_notes.comparison_notes(table, []))
    assert "Δ [n/a]: no CI, every bootstrap resample of the test slides gives the same" in notes
    assert "Δ [n/a]" not in " | ".join(table_notes.comparison_notes(table.iloc[1:], []))


def test_exact_permutation_p_values() -> None:
    # A right on 3 slides, B wrong on all: the 8 swaps give mean differences +-1 (once each)
    # and +-1/3 (three times each); P(|T| >= 1) = 2/8
    a, b = preds([0, 1, 2], [0, 1, 2]), preds([0, 1, 2], [1, 2, 0])
    result = stats.compare(a, b, "accuracy")
    assert result.difference == 1.0 and result.p_value == pytest.approx(0.25)
    # A right on 4, B on the first 2: T = (s3 + s4) / 4 -> +-0.5 with probability 1/4 each
    a, b = preds([0, 1, 2, 0], [0, 1, 2, 0]), preds([0, 1, 2, 0], [0, 1, 0, 1])
    result = stats.compare(a, b, "accuracy")
    assert result.difference == 0.5 and result.p_value == pytest.approx(0.5)
    # B's paired CI: resampling only ever sees differences 0 or 1 per slide
    assert 0.0 <= result.low <= 0.5 <= result.high <= 1.0


def test_a_difference_of_zero_up_to_float_rounding_has_p_one() -> None:
    """A's and B's seeds right on the same slides in another seed order: every swap gives the
    difference 0, but as sums of fractions in another order, up to 1e-16 apart, and scipy's
    tolerance for ties is relative to the observed difference (0): p was 0.5, not 1."""
    labels = [0, 0, 0]
    a = preds(labels, [0, 0, 0], [0, 0, 0], [0, 1, 1])
    b = preds(labels, [0, 0, 0], [0, 1, 1], [0, 0, 0])
    assert stats.permutation_p(a, b, "accuracy") == (1.0, True)
    # Monte Carlo (17 slides): p was 0.26; B is A with its seeds rotated
    wrong = ["00101000101100010", "01000000000000000", "00010001000100000"]
    rows = [[int(c) for c in row] for row in wrong]
    a, b = preds([0] * 17, *rows), preds([0] * 17, *rows[1:], rows[0])
    assert stats.permutation_p(a, b, "accuracy", n_resamples=200) == (1.0, False)
    # ties with a non-zero difference still count: A right on 3 slides, B on none (p 2/8)
    a, b = preds([0, 1, 2], [0, 1, 2]), preds([0, 1, 2], [1, 2, 0])
    assert stats.permutation_p(a, b, "accuracy") == (pytest.approx(0.25), True)


def test_a_difference_of_zero_up_to_float_rounding_prints_as_zero() -> None:
    """The same slides right for the same number of seeds, in another seed order: Δ was
    -1.1e-16 in the CSV and `-0.0 [n/a]` in the tables."""
    a = preds([0, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0])
    b = preds([0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1])
    result = stats.compare(a, b, "accuracy")
    assert (result.difference, result.p_value, result.ci_kind) == (0.0, 1.0, stats.CONSTANT)
    table = table_frames.comparison_table({"a": a, "b": b}, "a", {"b": "baseline"}, {}, {})
    shown = table_format.comparison_display(table, {}, [])["Δ Accuracy (pp) [95% CI]"]
    assert list(shown) == ["+0.0 [n/a]"]


def test_compare_pairs_shared_slides_and_seeds() -> None:
    a = preds([0, 1, 2], [0, 1, 2], [0, 1, 1], seeds=(0, 1))
    b = stats.Predictions(("s2", "s0"), (1, 2), np.array([2, 0]), np.array([[2, 0], [2, 0]]), 3)
    result = stats.compare(a, b, "accuracy")
    # on slides s0, s2 and seed 1: A is right on s0 only (0.5), B on both (1.0)
    assert result.n_slides == 2 and result.n_seeds == 1 and result.difference == -0.5
    with pytest.raises(ValueError, match="share no seed"):
        stats.compare(a, preds([0, 1, 2], [0, 1, 2], seeds=(7,)), "accuracy")


def test_methods_that_label_a_shared_slide_differently_are_not_compared() -> None:
    """Two methods evaluated on differently labelled test sets (a sheet changed between
    runs) would be compared as if on one: the pairing refuses them."""
    a = preds([0, 1, 2], [0, 1, 2])
    b = preds([0, 2, 2], [0, 1, 2])  # slide s1 is class 1 for A, class 2 for B
    with pytest.raises(ValueError, match="disagree on the labels of their test slides"):
        stats.paired(a, b)
    with pytest.raises(ValueError, match="disagree on the labels"):
        stats.compare(a, b, "accuracy")


def test_statistics_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    labels = list(rng.integers(0, 3, 20))
    a = preds(labels, *rng.integers(0, 3, (3, 20)).tolist())
    b = preds(labels, *rng.integers(0, 3, (3, 20)).tolist())
    first, second = stats.compare(a, b, "weighted_f1"), stats.compare(a, b, "weighted_f1")
    assert first == second and not first.exact  # 20 slides: Monte Carlo, seeded


def test_holm() -> None:
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_predictions_from_evals_checks_slides() -> None:
    record = {
        "seed": 0,
        "classes": CLASSES,
        "predictions": [{"slide_id": "x", "label": "a", "pred": "b"}],
    }
    other = {**record, "seed": 1, "predictions": [{"slide_id": "y", "label": "a", "pred": "a"}]}
    p = stats.predictions_from_evals([record])
    assert p.labels.tolist() == [0] and p.preds.tolist() == [[1]]
    with pytest.raises(ValueError, match="seed 1: test slides differ"):
        stats.predictions_from_evals([record, other])


def test_predictions_from_evals_checks_classes() -> None:
    """A class renamed for one seed (a config edited between runs) was a KeyError traceback
    on the new name; it is one line naming the seed."""
    record = {
        "seed": 0,
        "classes": CLASSES,
        "predictions": [{"slide_id": "x", "label": "c", "pred": "a"}],
    }
    renamed = {
        "seed": 1,
        "classes": ["a", "b", "carcinoma"],
        "predictions": [{"slide_id": "x", "label": "carcinoma", "pred": "a"}],
    }
    with pytest.raises(ValueError, match=r"^seed 1: class list differs from the other seeds'$"):
        stats.predictions_from_evals([record, renamed])


def write_eval(path: Path, seed: int, labels: list[str], predicted: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    correct = [a == b for a, b in zip(labels, predicted, strict=True)]
    path.write_text(
        json.dumps(
            {
                "seed": seed,
                "classes": CLASSES,
                "accuracy": float(np.mean(correct)),
                "weighted_f1": f1_score(labels, predicted, average="weighted", zero_division=0),
                "auc": None,
                "predictions": [
                    {"slide_id": f"t{i}", "label": y, "pred": p}
                    for i, (y, p) in enumerate(zip(labels, predicted, strict=True))
                ],
            }
        )
    )
    return path


def write_evals(tmp_path: Path, labels: list[str], runs: dict[str, list]) -> list[Path]:
    """One `write_eval` per method and seed of ``runs`` (method -> predictions per seed)."""
    return [
        write_eval(tmp_path / "eval" / method / f"seed~{seed}.json", seed, labels, predicted)
        for method, per_seed in runs.items()
        for seed, predicted in enumerate(per_seed)
    ]


def make_demo_tables(tmp_path: Path, evals: list[Path], **kwargs: Any) -> dict[str, Path]:
    """`tables.make_tables` of ZoomMIL (the reference) and MaxMIL on ``evals`` with a
    one-slide QC table and no timings (``kwargs``: flops, ablations, sheet); its outputs."""
    qc_table = tmp_path / "qc.tsv"
    qc_table.write_text("slide_id\tlabel\tsplit\tstatus\treason\nt0\ta\ttest\tok\t\n")
    outputs = {
        f"{kind}_{ext}": tmp_path / "tables" / f"{kind}.{ext}"
        for kind in ("main", "ablation", "comparison")
        for ext in ("csv", "md", "tex")
    }
    tables.make_tables(
        qc_table=qc_table,
        evals=evals,
        timings={},
        outputs=outputs,
        dataset="demo",
        weights="random",
        mags=[5, 10],
        methods={"zoommil": {"arch": "zoommil"}, "maxmil": {"arch": "maxmil"}},
        reference="zoommil",
        **kwargs,
    )
    return outputs


def test_tables_carry_intervals_and_comparisons(tmp_path: Path) -> None:
    labels = ["a", "b", "c", "a", "b", "c"]
    runs = {
        "zoommil": [labels, labels],
        "maxmil": [["a", "a", "a", "a", "a", "a"], ["a", "b", "a", "a", "a", "a"]],
        "zoommil_random": [labels, labels],
    }
    evals = write_evals(tmp_path, labels, runs)
    flops = []
    for method, tflops in (("zoommil", 0.1), ("maxmil", 0.4), ("zoommil_random", 0.1)):
        path = tmp_path / "efficiency" / method / "flops.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"mean_tflops": tflops}))
        flops.append(path)
    outputs = make_demo_tables(
        tmp_path,
        evals,
        flops=flops,
        ablations={"zoommil_random": {"arch": "zoommil", "selection": "random"}},
    )
    main = pd.read_csv(outputs["main_csv"]).set_index("method")
    # ZoomMIL is right on all 6 slides for both seeds: no zero-width [100, 100] but the
    # exact interval for accuracy (marked) and none for weighted F1, each with a note
    low = 0.025 ** (1 / 6)
    assert main.loc["zoommil", "accuracy_ci_low"] == pytest.approx(low, abs=1e-6)
    assert main.loc["zoommil", "accuracy_ci_high"] == 1.0
    assert main.loc["zoommil", "accuracy_ci_method"] == "clopper_pearson"
    assert math.isnan(main.loc["zoommil", "weighted_f1_ci_low"])
    assert main.loc["zoommil", "weighted_f1_ci_method"] == "constant"
    assert main.loc["maxmil", "accuracy_ci_method"] == "bootstrap"
    assert main.loc["maxmil", "accuracy_mean"] == pytest.approx(0.5 * (2 / 6 + 3 / 6))
    assert main.loc["maxmil", "accuracy_ci_low"] < 5 / 12 < main.loc["maxmil", "accuracy_ci_high"]
    markdown = outputs["main_md"].read_text()
    row = f"| **ZoomMIL** | 5x -> 10x | 100.0 ± 0.0 [n/a] | 100.0 ± 0.0 [{100 * low:.1f}, 100.0]† |"
    assert row in markdown and "[100.0, 100.0]" not in markdown
    assert "†: accuracy 100% (or 0%)" in markdown and "Clopper-Pearson" in markdown
    assert "[n/a]: no CI, every bootstrap resample" in markdown
    assert "right for the same number of seeds" in markdown  # not only weighted F1 at 0 or 100%
    assert r"100.0]$^\dagger$" in outputs["main_tex"].read_text()

    comparisons = pd.read_csv(outputs["comparison_csv"]).set_index("method")
    assert list(comparisons.index) == ["maxmil", "zoommil_random"]
    assert list(comparisons["kind"]) == ["baseline", "ablation"]
    assert comparisons.loc["maxmil", "accuracy_diff"] == pytest.approx(1 - 5 / 12)
    assert comparisons.loc["maxmil", "tflops_ratio"] == pytest.approx(0.25)
    same = comparisons.loc["zoommil_random"]
    assert (same["accuracy_diff"], same["accuracy_p"], same["weighted_f1_p"]) == (0, 1, 1)
    markdown = outputs["comparison_md"].read_text()
    assert "| ZoomMIL vs MaxMIL | baseline | +" in markdown and "0.25x" in markdown
    assert r"$\Delta$" in outputs["comparison_tex"].read_text()


def test_holm_adjusts_baselines_and_ablations_as_separate_families() -> None:
    """One family over both gave a baseline's adjusted p that changed with the number of
    ablations configured (review T: ZoomMIL vs DSMIL Holm 0.047 alone, 0.078 beside six)."""
    labels = [i % 3 for i in range(8)]
    right = preds(labels, labels, labels)
    worse = preds(labels, *[[(v + (i < 4)) % 3 for i, v in enumerate(labels)]] * 2)
    methods = {"ref": right, "base": worse, **{f"abl{i}": worse for i in range(4)}}
    alone = table_frames.comparison_table(methods, "ref", {"base": "baseline"}, {}, {})
    others = {"base": "baseline", **{f"abl{i}": "ablation" for i in range(4)}}
    beside = table_frames.comparison_table(methods, "ref", others, {}, {})
    p = float(alone["accuracy_p"].iloc[0])
    assert p == pytest.approx(2 / 16)  # 4 slides differ, all one way: exact 2/2^4
    assert float(alone["accuracy_p_holm"].iloc[0]) == pytest.approx(p)
    assert float(beside["accuracy_p_holm"].iloc[0]) == pytest.approx(p)  # not 5p
    assert list(beside["accuracy_p_holm"].iloc[1:]) == pytest.approx([min(1.0, 4 * p)] * 4)
    notes = " | ".join(table_notes.comparison_notes(beside, []))
    assert "over the baselines' rows and over the ablations' rows apart" in notes
    assert "seed-to-seed variation is in neither" in notes


def test_a_difference_over_fewer_seeds_says_so() -> None:
    """Δ over the seeds both methods share differs from the main table's difference of
    means when one method lacks a seed; the comparison table did not show it."""
    labels = [0, 1, 2, 1]
    full = preds(labels, labels, labels, labels)
    short = preds(labels, [0, 1, 2, 0], [0, 1, 1, 1], seeds=(0, 1))
    table = table_frames.comparison_table(
        {"a": full, "b": full, "c": short}, "a", {"b": "baseline", "c": "baseline"}, {}, {}
    )
    assert list(table["n_seeds"]) == [3, 2]
    shown = list(table_format.comparison_display(table, {}, [])["Δ Accuracy (pp) [95% CI]"])
    assert not shown[0].endswith("seeds)") and shown[1].endswith(" (2 seeds)"), shown
    assert table_notes.seeds_note(table)[0].startswith("(k seeds): Δ, CI and p over the k")
    assert table_notes.seeds_note(table.iloc[:1]) == []
    # a reference short of a seed: every row shares 2 of the baselines' 3, all are marked
    # (compared with the table's most, 2, none was: review G)
    table = table_frames.comparison_table(
        {"a": short, "b": full, "c": full}, "a", {"b": "baseline", "c": "baseline"}, {}, {}
    )
    shown = list(table_format.comparison_display(table, {}, [])["Δ Accuracy (pp) [95% CI]"])
    assert all(cell.endswith(" (2 seeds)") for cell in shown), shown
    assert table_notes.seeds_note(table)


# --- several slides per patient: the patient is the unit (stats.with_patients) -------------


def test_patient_ids_ignore_case_and_spaces_and_a_missing_one_is_its_own_cluster() -> None:
    p = stats.with_patients(
        preds([0, 1, 2, 0], [0, 1, 2, 0]),
        {"s0": "TCGA-AB-1234 ", "s1": "tcga-ab-1234", "s2": "NA"},  # s3: not in the sheet
    )
    assert p.groups is not None and p.groups[0] == p.groups[1]
    assert stats.n_units(p) == 3
    units = stats.unit_of_slide(p)
    assert units is not None and units.tolist() == [0, 0, 1, 2]


def test_the_patient_bootstrap_is_scipys_bootstrap_of_patients() -> None:
    """Reference: scipy's percentile bootstrap over patient indices (same seed) with the
    metric computed on the concatenated slides of each resample, seed by seed (sklearn)."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    sizes = [1, 3, 2, 4, 1, 2, 3]
    patients = np.repeat(np.arange(len(sizes)), sizes)
    labels = rng.integers(0, 3, len(patients))
    seed_preds = np.where(rng.random((2, len(patients))) < 0.6, labels, rng.integers(0, 3))
    pred = stats.with_patients(
        preds(list(labels), *seed_preds.tolist()),
        {f"s{i}": f"P{g}" for i, g in enumerate(patients)},
    )
    members = [np.flatnonzero(patients == g) for g in range(len(sizes))]

    def reference(metric: str, units: np.ndarray) -> float:
        idx = np.concatenate([members[u] for u in units])
        y, per_seed = labels[idx], seed_preds[:, idx]
        if metric == "accuracy":
            return float(np.mean([(p == y).mean() for p in per_seed]))
        return float(
            np.mean([f1_score(y, p, average="weighted", zero_division=0) for p in per_seed])
        )

    for metric in stats.METRICS:
        expected = bootstrap(
            (np.arange(len(sizes)),),
            lambda u, metric=metric: reference(metric, u),
            vectorized=False,
            n_resamples=300,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(stats.SEED),
        ).confidence_interval
        got = stats.method_ci(pred, metric, n_resamples=300)
        assert got.estimate == pytest.approx(reference(metric, np.arange(len(sizes))), abs=1e-12)
        assert (got.low, got.high) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_patients_are_swapped_and_counted_whole() -> None:
    """3 slides, s0 and s1 of one patient: A right on all, B wrong on all (one seed). By
    slide, 2 of the 2^3 swaps reach |difference| 1: p = 0.25. By patient the swaps are 4:
    none (+1), all (-1), the patient of two slides (A right on 1 of 3, B on 2: -1/3) and s2
    (+1/3): p = 2/4. Accuracy 100% on 4 slides of 2 patients: Clopper-Pearson of 2 of 2."""
    by_patient = {"s0": "P", "s1": "P", "s2": "Q"}
    a, b = preds([0, 1, 2], [0, 1, 2]), preds([0, 1, 2], [1, 2, 0])
    assert stats.permutation_p(a, b, "accuracy") == (pytest.approx(0.25), True)
    a, b = stats.with_patients(a, by_patient), stats.with_patients(b, by_patient)
    assert stats.permutation_p(a, b, "accuracy") == (pytest.approx(0.5), True)
    result = stats.compare(a, b, "accuracy")
    assert (result.n_slides, result.n_units, result.difference) == (3, 2, 1.0)
    four = stats.with_patients(preds([0, 1, 2, 0], [0, 1, 2, 0]), {**by_patient, "s3": "q"})
    interval = stats.method_ci(four, "accuracy")
    assert interval.kind == stats.CLOPPER_PEARSON
    assert interval.low == pytest.approx(0.025 ** (1 / 2))


def test_one_slide_per_patient_gives_the_slide_statistics_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    labels = list(rng.integers(0, 3, 12))
    a = preds(labels, *rng.integers(0, 3, (3, 12)).tolist())
    b = preds(labels, *rng.integers(0, 3, (3, 12)).tolist())
    ids = {f"s{i}": f"P{i}" for i in range(12)}
    a_p, b_p = stats.with_patients(a, ids), stats.with_patients(b, ids)
    for metric in stats.METRICS:
        assert stats.method_ci(a_p, metric) == stats.method_ci(a, metric)
        assert stats.compare(a_p, b_p, metric) == stats.compare(a, b, metric)


def test_tables_resample_patients_from_the_sheet(tmp_path: Path) -> None:
    labels = ["a", "b", "c", "a", "b", "c"]
    runs = {"zoommil": [labels, labels], "maxmil": [["a"] * 6, ["a", "b", "a", "a", "a", "a"]]}
    evals = write_evals(tmp_path, labels, runs)
    sheet = tmp_path / "slides.tsv"
    patients = ["P1", "P1", "P2", "p2 ", "P3", "NA"]  # 4 units: P1, P2, P3 and t5 alone
    rows = [
        f"t{i}\tt{i}.svs\t{y}\ttest\t{p}"
        for i, (y, p) in enumerate(zip(labels, patients, strict=True))
    ]
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tpatient\n" + "\n".join(rows) + "\n")
    outputs = make_demo_tables(tmp_path, evals, flops=[], sheet=sheet)
    main = pd.read_csv(outputs["main_csv"]).set_index("method")
    assert main.loc["zoommil", "n_test"] == 6 and main.loc["zoommil", "n_test_units"] == 4
    # 100% on 6 slides of 4 units: Clopper-Pearson of 4 of 4, not of 6 of 6
    assert main.loc["zoommil", "accuracy_ci_low"] == pytest.approx(0.025 ** (1 / 4), abs=1e-6)
    assert "4 patients of 6 test slides" in outputs["main_md"].read_text()
    comparisons = pd.read_csv(outputs["comparison_csv"]).set_index("method")
    assert comparisons.loc["maxmil", "n_units"] == 4
    assert "4 patients of 6 test slides" in outputs["comparison_md"].read_text()


def test_readme_patient_level_snippet(tmp_path: Path, monkeypatch, capsys) -> None:
    """README (Statistics, several slides per patient): the patient-level metrics snippet
    against a hand-worked case: P1's slides average to b (right), P2's to a (wrong), t4
    without a patient is its own (right): accuracy 2/3."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("**Several slides per patient**") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    sheet = "slide_id\tpath\tlabel\tsplit\tpatient\n"
    sheet += "t0\tx\tb\ttest\tP1\nt1\tx\tb\ttest\tP1 \nt2\tx\tc\ttest\tP2\n"
    sheet += "t3\tx\tc\ttest\tP2\nt4\tx\ta\ttest\t\n"
    (tmp_path / "slides.tsv").write_text(sheet)
    probs = {
        "t0": [0.6, 0.4, 0.0],  # a alone, but P1's mean is (0.3, 0.7, 0): b
        "t1": [0.0, 1.0, 0.0],
        "t2": [0.9, 0.0, 0.1],  # P2's mean (0.6, 0.1, 0.3): a, wrong
        "t3": [0.3, 0.2, 0.5],
        "t4": [0.8, 0.1, 0.1],
    }
    labels = {"t0": "b", "t1": "b", "t2": "c", "t3": "c", "t4": "a"}
    run = {
        "seed": 0,
        "classes": CLASSES,
        "predictions": [
            {
                "slide_id": s,
                "label": labels[s],
                "pred": CLASSES[int(np.argmax(p))],
                "probs": dict(zip(CLASSES, p, strict=True)),
            }
            for s, p in probs.items()
        ],
    }
    (tmp_path / "results" / "eval" / "zoommil").mkdir(parents=True)
    (tmp_path / "results" / "eval" / "zoommil" / "seed~0.json").write_text(json.dumps(run))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README", "exec"), {})
    out = capsys.readouterr().out
    assert "3 patients: accuracy 0.666" in out
