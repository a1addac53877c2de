"""The main and ablation tables' AUC CI (reporting.roc.auc_interval) against a hand bootstrap."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from test_calibration import BINARY, THREE, make_prob, random_probs, run_tables, write_eval

from zoommil.reporting import roc, stats

#: main.csv's columns before AUC had a CI (dd5e792), which users' scripts may index.
MAIN_COLUMNS = [
    "method", "name", "arch", "mags", "n_seeds",
    "weighted_f1_mean", "weighted_f1_std", "weighted_f1_n",
    "accuracy_mean", "accuracy_std", "accuracy_n", "auc_mean", "auc_std", "auc_n",
    "weighted_f1_ci_low", "weighted_f1_ci_high", "accuracy_ci_low", "accuracy_ci_high",
    "n_test", "n_test_units", "weighted_f1_ci_method", "accuracy_ci_method",
    "tflops", "tflops_sd", "patches_per_slide",
    *[
        f"{d}_{x}"
        for d in ("cpu1", "cpu", "gpu")
        for x in ("s_per_slide", "s_per_slide_sd", "n_slides", "slides_per_hour")
    ],
]  # fmt: skip
ABLATION_COLUMNS = [
    "method", "component", "variant", "n_seeds",
    *[f"{m}_{s}" for m in ("weighted_f1", "accuracy", "auc") for s in ("mean", "std", "n")],
    *[f"{m}_ci_{b}" for m in ("weighted_f1", "accuracy") for b in ("low", "high", "method")],
    "n_test", "n_test_units", "tflops", "tflops_sd",
]  # fmt: skip
NEW = ["auc_ci_low", "auc_ci_high", "auc_ci_method", "auc_ci_dropped"]


def pairwise_auc(labels: np.ndarray, score: np.ndarray, counts: np.ndarray, c: int) -> np.ndarray:
    """[B] one-vs-rest AUC of class ``c`` on slide multisets ``counts`` [B, n], by hand: every
    (positive, negative) pair weighted by how often both are drawn, a tie counted half."""
    pos, neg = labels == c, labels != c
    beats = (score[:, None] > score[None, :]) + 0.5 * (score[:, None] == score[None, :])
    wins = np.einsum("bi,ij,bj->b", counts * pos, beats, counts * neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / ((counts * pos).sum(axis=1) * (counts * neg).sum(axis=1))


def hand_auc(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B] the seed mean of the AUC (binary: of the second class; more: macro one-vs-rest)."""
    n_classes = probs.shape[-1]
    per_seed = []
    for p in probs:
        if n_classes == 2:
            per_seed.append(pairwise_auc(labels, p[:, 1], counts, 1))
        else:
            per_seed.append(
                np.mean([pairwise_auc(labels, p[:, c], counts, c) for c in range(n_classes)], 0)
            )
    return np.mean(per_seed, axis=0)


def reference_bootstrap(labels: np.ndarray, probs: np.ndarray):
    """The percentile bootstrap of `hand_auc` over the slides, as stats.bootstrap_ci draws
    them (scipy's resampling, its seed and resample count): scipy's result."""
    n = len(labels)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(idx, axis, -1)
        lead = idx.shape[:-1]
        flat = idx.reshape(-1, idx.shape[-1])
        counts = np.stack([np.bincount(row, minlength=n) for row in flat]).astype(float)
        return hand_auc(labels, probs, counts).reshape(lead)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN resamples (a class not drawn)
        return scipy_stats.bootstrap(
            (np.arange(n),),
            statistic,
            vectorized=True,
            n_resamples=stats.N_BOOTSTRAP,
            batch=1000,
            confidence_level=stats.CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(stats.SEED),
        )


def reference_interval(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    ci = reference_bootstrap(labels, probs).confidence_interval
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize("classes", [BINARY, THREE])
def test_auc_interval_is_the_percentile_bootstrap_of_the_seed_mean_auc(classes) -> None:
    """The estimate is scikit-learn's AUC averaged over the seeds; the bounds those of a
    percentile bootstrap, the same resamples, of a pairwise AUC written out here."""
    rng = np.random.default_rng(7)
    n = 36
    labels = np.arange(n) % len(classes)
    probs = random_probs(rng, 3, n, len(classes))
    interval = roc.auc_interval(make_prob(probs, labels, classes))
    if len(classes) == 2:
        want = np.mean([roc_auc_score(labels, p[:, 1]) for p in probs])
    else:
        want = np.mean([roc_auc_score(labels, p, multi_class="ovr") for p in probs])
    assert interval.estimate == pytest.approx(want, abs=1e-12)
    assert interval.kind == stats.BOOTSTRAP
    low, high = reference_interval(labels, probs)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert low < want < high


def test_resamples_without_a_class_are_left_out_and_counted() -> None:
    """One tumour slide of 30: about a third of the resamples hold none, where AUC is
    undefined; they are left out and counted, the percentiles taken of the others."""
    labels = np.zeros(30, dtype=int)
    labels[4] = 1
    probs = random_probs(np.random.default_rng(1), 2, 30, 2)
    interval = roc.auc_interval(make_prob(probs, labels, BINARY))
    distribution = reference_bootstrap(labels, probs).bootstrap_distribution
    undefined = np.isnan(distribution)
    assert interval.dropped == undefined.sum()
    assert 0.3 < interval.dropped / stats.N_BOOTSTRAP < 0.42  # (29/30)^30 = 0.36
    low, high = np.percentile(distribution[~undefined], [2.5, 97.5])
    assert interval.kind == stats.BOOTSTRAP
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)


def test_no_resample_is_dropped_where_every_class_is_always_drawn() -> None:
    labels = np.arange(40) % 2
    probs = random_probs(np.random.default_rng(5), 2, 40, 2)
    assert roc.auc_interval(make_prob(probs, labels, BINARY)).dropped == 0


def test_without_a_slide_of_a_class_there_is_no_auc_nor_interval() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])  # no slide of THREE's third class
    interval = roc.auc_interval(
        make_prob(random_probs(np.random.default_rng(2), 2, 6, 3), labels, THREE)
    )
    assert interval.kind == "" and math.isnan(interval.estimate) and math.isnan(interval.low)


def write_evals_with_auc(tmp_path: Path, labels: np.ndarray, seeds: int = 2) -> list[Path]:
    """zoommil and abmil, each ``seeds`` evaluations with their probabilities and AUC."""
    rng = np.random.default_rng(3)
    evals = []
    for method in ("zoommil", "abmil"):
        for s in range(seeds):
            probs = random_probs(rng, 1, len(labels), 2)[0]
            path = write_eval(tmp_path / f"eval/{method}/seed~{s}.json", s, BINARY, labels, probs)
            record = json.loads(path.read_text())
            record["auc"] = (
                roc_auc_score(labels, probs[:, 1]) if len(set(labels.tolist())) == 2 else None
            )
            path.write_text(json.dumps(record))
            evals.append(path)
    return evals


def test_main_and_ablation_csvs_keep_their_columns_and_append_the_auc_ci(tmp_path: Path) -> None:
    """The columns users' scripts read keep their names and order; the AUC CI columns come
    after them (then the notes); the Markdown's AUC cell shows its CI as the others do."""
    labels = np.arange(40) % 2
    made, outputs = run_tables(tmp_path, write_evals_with_auc(tmp_path, labels))
    main = pd.read_csv(outputs["main_csv"])
    assert list(main.columns) == [*MAIN_COLUMNS, *NEW, "notes"]
    ablation = pd.read_csv(outputs["ablation_csv"])
    assert list(ablation.columns) == [*ABLATION_COLUMNS, *NEW, "notes"]
    row = main.set_index("method").loc["zoommil"]
    assert row["auc_ci_method"] == stats.BOOTSTRAP
    assert row["auc_ci_low"] < row["auc_mean"] < row["auc_ci_high"]
    cell = f"{100 * row['auc_ci_low']:.1f}, {100 * row['auc_ci_high']:.1f}]"
    assert cell in outputs["main_md"].read_text()


def test_a_rare_class_gives_the_count_of_resamples_left_out_in_a_note(tmp_path: Path) -> None:
    labels = np.zeros(30, dtype=int)
    labels[4] = 1
    made, outputs = run_tables(tmp_path, write_evals_with_auc(tmp_path, labels))
    main = pd.read_csv(outputs["main_csv"], keep_default_na=False, na_values=[""])
    assert set(main["auc_ci_method"]) == {stats.BOOTSTRAP}
    dropped = main.set_index("method")["auc_ci_dropped"]
    assert (dropped > 1000).all()
    markdown = outputs["main_md"].read_text()
    assert "AUC CI: of the 5000 bootstrap resamples, those holding no test slide" in markdown
    assert f"ZoomMIL {dropped['zoommil']}, ABMIL {dropped['abmil']} left out" in markdown
