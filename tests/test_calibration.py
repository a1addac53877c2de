"""Calibration and operating points (reporting.calibration) against scikit-learn and by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, f1_score, roc_curve

from zoommil.errors import ZoomMILError
from zoommil.reporting import calibration, stats, tables

BINARY = ["normal", "tumor"]
THREE = ["a", "b", "c"]


def make_prob(probs: np.ndarray, labels: np.ndarray, classes: list[str], groups=None):
    """A `calibration.Probabilities` of probs [S, n, C] and labels [n]."""
    n_seeds, n = probs.shape[:2]
    pred = stats.Predictions(
        tuple(f"s{i:03d}" for i in range(n)),
        tuple(range(n_seeds)),
        np.asarray(labels),
        probs.argmax(axis=-1),
        len(classes),
        groups,
    )
    return calibration.Probabilities(pred, probs, tuple(classes))


def random_probs(rng: np.random.Generator, n_seeds: int, n: int, n_classes: int) -> np.ndarray:
    """Probabilities rounded to 0.05, so that scores tie (roc_curve groups ties)."""
    raw = rng.dirichlet(np.ones(n_classes), size=(n_seeds, n))
    raw[..., 0] = np.round(raw[..., 0] * 20) / 20
    raw[..., 1:] *= ((1 - raw[..., 0]) / raw[..., 1:].sum(axis=-1))[..., None]
    return raw


def ece_by_hand(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE with a loop over the bins (k/bins, (k+1)/bins]."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for k in range(bins):
        low, high = k / bins, (k + 1) / bins
        inside = (confidence > low) & (confidence <= high) if k else confidence <= high
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(labels)


def sens_by_sklearn(labels: np.ndarray, score: np.ndarray, specificity: float) -> float:
    fpr, tpr, _ = roc_curve(labels, score, drop_intermediate=False)
    return float(tpr[fpr <= 1 - specificity + 1e-12].max())


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_equal_scikit_learns_per_seed(seed: int) -> None:
    """Brier = brier_score_loss of P(tumor); sensitivity at 90%/95% specificity = the best
    TPR of roc_curve with FPR <= 10% (5%), ties in the scores included; ECE = the loop."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=40)
    labels[:2] = [0, 1]
    probs = random_probs(rng, 3, 40, 2)
    prob = make_prob(probs, labels, BINARY)
    every = np.ones((1, 40))
    brier = calibration.per_seed(prob, "brier", every)[:, 0]
    ece = calibration.per_seed(prob, "ece", every)[:, 0]
    for s in range(3):
        assert brier[s] == pytest.approx(brier_score_loss(labels, probs[s, :, 1]), abs=1e-12)
        assert ece[s] == pytest.approx(ece_by_hand(probs[s], labels), abs=1e-12)
    for specificity in calibration.SPECIFICITIES:
        key = calibration.sens_key(specificity)
        got = calibration.per_seed(prob, key, every)[:, 0]
        want = [sens_by_sklearn(labels, probs[s, :, 1], specificity) for s in range(3)]
        assert got == pytest.approx(want, abs=1e-12)


def test_sensitivity_keeps_a_threshold_at_exactly_the_target_specificity() -> None:
    """1 false positive of 10 negatives is 90% specificity: 1 - 0.9 is 0.0999...98 in floats,
    and a plain comparison left that threshold out."""
    labels = np.array([0] * 10 + [1] * 4)
    score = np.array([0.9] + [0.1] * 9 + [0.8, 0.7, 0.2, 0.05])  # 0.9: the false positive
    probs = np.stack([1 - score, score], axis=-1)[None]
    prob = make_prob(probs, labels, BINARY)
    sens = calibration.per_seed(prob, "sens_at_spec90", np.ones((1, 14)))[0, 0]
    assert sens == 0.75 == sens_by_sklearn(labels, score, 0.9)  # 0.8, 0.7, 0.2 above 0.1
    assert calibration.per_seed(prob, "sens_at_spec95", np.ones((1, 14)))[0, 0] == 0.0


def test_multiclass_brier_is_the_sum_over_classes_and_has_no_sensitivity() -> None:
    """BRIGHT's three classes: the multi-class Brier (sum over classes of each class's
    brier_score_loss, 0-2) and top-label ECE; sensitivity at a specificity is binary only."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=30)
    probs = random_probs(rng, 2, 30, 3)
    prob = make_prob(probs, labels, THREE)
    assert prob.metrics() == ["brier", "ece"]
    brier = calibration.per_seed(prob, "brier", np.ones((1, 30)))[:, 0]
    for s in range(2):
        want = sum(brier_score_loss(labels == c, probs[s, :, c]) for c in range(3))
        assert brier[s] == pytest.approx(want, abs=1e-12)
        ece = calibration.per_seed(prob, "ece", np.ones((1, 30)))[s, 0]
        assert ece == pytest.approx(ece_by_hand(probs[s], labels), abs=1e-12)
    with pytest.raises(ValueError, match="unknown metric 'sens_at_spec90' for 3 classes"):
        calibration.per_seed(prob, "sens_at_spec90", np.ones((1, 30)))


def test_a_resample_equals_the_metric_on_its_drawn_slides() -> None:
    """The bootstrap's statistic (counts of each drawn slide) is the metric on the gathered
    slides, drawn twice counted twice: scikit-learn on np.take of the same indices."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=25)
    probs = random_probs(rng, 2, 25, 2)
    prob = make_prob(probs, labels, BINARY)
    idx = rng.integers(0, 25, size=(6, 25))
    for metric in prob.metrics():
        got = calibration._statistic(prob, metric)(idx)
        for b, row in enumerate(idx):
            y, p = labels[row], probs[:, row]
            if metric == "brier":
                per = [brier_score_loss(y, p[s, :, 1]) for s in range(2)]
            elif metric == "ece":
                per = [ece_by_hand(p[s], y) for s in range(2)]
            else:
                spec = 0.9 if metric.endswith("90") else 0.95
                per = [sens_by_sklearn(y, p[s, :, 1], spec) for s in range(2)]
            assert got[b] == pytest.approx(np.mean(per), abs=1e-12), (metric, b)


def test_intervals_cover_the_estimate_and_say_when_there_is_none() -> None:
    """A CI around the seed mean; every slide right at probability 1: Brier and ECE 0 for
    every resample, no interval (`constant`); three slides of which one positive: some
    resamples have no positive, sensitivity's interval `undefined`."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=30)
    prob = make_prob(random_probs(rng, 2, 30, 2), labels, BINARY)
    interval = calibration.method_interval(prob, "brier")
    assert interval.kind == stats.BOOTSTRAP and interval.low < interval.estimate < interval.high
    sure = np.eye(2)[labels][None]
    interval = calibration.method_interval(make_prob(sure, labels, BINARY), "ece")
    assert interval.kind == stats.CONSTANT and interval.estimate == 0 and math.isnan(interval.low)
    few = make_prob(np.array([[[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]]), np.array([0, 0, 1]), BINARY)
    interval = calibration.method_interval(few, "sens_at_spec90")
    assert interval.kind == calibration.UNDEFINED and interval.estimate == 1.0


def test_patients_are_resampled_together() -> None:
    """With patient ids the statistic draws units: a draw of patient P0 twice counts both of
    its slides twice."""
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]])
    groups = ("patient:p0", "patient:p0", "slide:s002", "slide:s003")
    prob = make_prob(probs, labels, BINARY, groups)
    got = calibration._statistic(prob, "brier")(np.array([[0, 0, 2]]))
    keep = [0, 1, 0, 1, 3]
    assert got[0] == pytest.approx(brier_score_loss(labels[keep], probs[0, keep, 1]))


# --- the table written by make_tables ----------------------------------------------------------


def write_eval(path: Path, seed: int, classes: list[str], labels, probs, with_probs=True) -> Path:
    """An evaluation JSON as `zoommil evaluate` writes it: scalars, predictions, probs."""
    preds = [classes[int(np.argmax(p))] for p in probs]
    truth = [classes[y] for y in labels]
    entries = [
        {"slide_id": f"t{i}", "label": t, "pred": p}
        | ({"probs": dict(zip(classes, map(float, q), strict=True))} if with_probs else {})
        for i, (t, p, q) in enumerate(zip(truth, preds, probs, strict=True))
    ]
    record = {
        "seed": seed,
        "classes": classes,
        "accuracy": float(np.mean([a == b for a, b in zip(truth, preds, strict=True)])),
        "weighted_f1": f1_score(truth, preds, average="weighted", zero_division=0),
        "auc": None,
        "predictions": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def run_tables(
    tmp_path: Path, evals: list[Path], kinds: tuple[str, ...] = (), **extra
) -> tuple[dict, dict[str, Path]]:
    """make_tables on ``evals``; ``kinds``: more tables (e.g. comparison, subgroups);
    ``extra``: val_reports, checkpoints and an operating_points output folder
    (test_operating_points), the sheet and subgroup columns (test_subgroups)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    qc_table = tmp_path / "qc.tsv"
    qc_table.write_text("slide_id\tlabel\tsplit\tstatus\treason\nt0\tnormal\ttest\tok\t\n")
    outputs = {
        f"{kind}_{ext}": tmp_path / "tables" / f"{kind}.{ext}"
        for kind in ("main", "ablation", "calibration", *kinds)
        for ext in ("csv", "md", "tex")
    }
    outputs["reliability_csv"] = tmp_path / "tables" / "reliability.csv"
    if "operating_points" in extra:
        outputs["operating_points"] = extra.pop("operating_points")
    made = tables.make_tables(
        qc_table=qc_table,
        evals=evals,
        flops=[],
        timings={},
        outputs=outputs,
        dataset="camelyon16",
        weights="random",
        mags=[5, 10],
        methods={"zoommil": {"arch": "zoommil"}, "abmil": {"arch": "abmil"}},
        **extra,
    )
    return made, outputs


def test_make_tables_writes_the_calibration_table_and_reliability_bins(tmp_path: Path) -> None:
    """calibration.{csv,md,tex}: Brier, ECE and sensitivity at 90/95% specificity as mean ±
    std [CI] per method; reliability.csv: the bins, whose sum gives each seed's ECE; a method
    whose evaluations have no probabilities is left out, with a note saying so."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=30)
    probs = random_probs(rng, 2, 30, 2)
    evals = [
        write_eval(tmp_path / "eval" / "zoommil" / f"seed~{s}.json", s, BINARY, labels, probs[s])
        for s in range(2)
    ]
    evals.append(
        write_eval(tmp_path / "eval/abmil/seed~0.json", 0, BINARY, labels, probs[0], False)
    )
    made, outputs = run_tables(tmp_path, evals)
    table = pd.read_csv(outputs["calibration_csv"]).set_index("method")
    assert list(table.index) == ["zoommil"]
    row = table.loc["zoommil"]
    briers = [brier_score_loss(labels, probs[s, :, 1]) for s in range(2)]
    assert row["brier_mean"] == pytest.approx(np.mean(briers), rel=1e-5)
    assert row["brier_std"] == pytest.approx(np.std(briers, ddof=1), rel=1e-5)
    sens = [sens_by_sklearn(labels, probs[s, :, 1], 0.95) for s in range(2)]
    assert row["sens_at_spec95_mean"] == pytest.approx(np.mean(sens), rel=1e-5)
    assert row["ece_bins"] == 10 and row["n_test"] == 30
    for metric in ("brier", "ece", "sens_at_spec90", "sens_at_spec95"):
        assert row[f"{metric}_ci_low"] <= row[f"{metric}_mean"] <= row[f"{metric}_ci_high"]
    bins = pd.read_csv(outputs["reliability_csv"])
    assert len(bins) == 2 * 10 and bins.groupby("seed")["n_slides"].sum().tolist() == [30, 30]
    filled = bins[bins["n_slides"] > 0]
    gaps = filled["n_slides"] / filled["n_test"] * (filled["accuracy"] - filled["mean_confidence"])
    per_seed = gaps.abs().groupby(filled["seed"]).sum()
    assert per_seed.mean() == pytest.approx(row["ece_mean"], rel=1e-5)
    markdown = outputs["calibration_md"].read_text()
    header = (
        "| Method | Brier score | ECE, 10 bins (%) | Sensitivity at 90% specificity, threshold on "
        "test (%) | Sensitivity at 95% specificity, threshold on test (%) |"
    )
    assert header in markdown
    cell = f"| ZoomMIL | {np.mean(briers):.3f} ± {np.std(briers, ddof=1):.3f} ["
    assert cell in markdown
    assert "brier_score_loss" in markdown and "optimistic" in markdown
    assert "not shown: abmil (their evaluation JSONs have no per-slide 'probs'" in markdown
    assert r"\label{tab:camelyon16-calibration}" in outputs["calibration_tex"].read_text()
    assert made["calibration"]["method"].tolist() == ["zoommil"]  # returned as the others


def test_reliability_notes_say_only_what_is_true_of_that_csv(tmp_path: Path) -> None:
    """reliability.csv's first note was the tables' generic one: "metrics, their CIs and
    differences are fractions ... (the Markdown and LaTeX tables show them in percent)";
    reliability.csv has no CI, no difference and no Markdown or LaTeX table, and an AUC note
    spoke of a metric it does not hold. Its notes now name its own columns; the encoder,
    weights and QC notes stay."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=12)
    path = write_eval(tmp_path / "eval/zoommil/seed~0.json", 0, BINARY, labels,
                      random_probs(rng, 1, 12, 2)[0])  # fmt: skip
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "auc_note": "one class absent from the test split"}))
    _, outputs = run_tables(tmp_path, [path])
    notes = pd.read_csv(outputs["reliability_csv"])["notes"].iloc[0].split(" | ")
    for word in ("Markdown", "LaTeX", "CI", "differences", "percent", "AUC"):
        assert not any(word in note for note in notes), (word, notes)
    for column in ("bin_low", "bin_high", "mean_confidence", "accuracy"):
        assert column in notes[0]
    assert notes[1] == calibration.RELIABILITY_NOTE
    assert any(n.startswith("patch encoder:") for n in notes)
    assert any("RANDOM initialisation" in n for n in notes)
    assert any("by QC" in n for n in notes)
    # the tables with Markdown and LaTeX versions keep the generic note, and the AUC one
    main_notes = pd.read_csv(outputs["main_csv"])["notes"].iloc[0]
    assert "the Markdown and LaTeX tables show them in percent" in main_notes
    assert "one class absent from the test split" in main_notes


def test_a_slide_with_probabilities_missing_a_class_is_an_error_naming_it(tmp_path: Path) -> None:
    labels = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    path = write_eval(tmp_path / "eval" / "zoommil" / "seed~0.json", 0, BINARY, labels, probs)
    record = json.loads(path.read_text())
    record["predictions"][1]["probs"] = {"normal": 0.3}
    path.write_text(json.dumps(record))
    with pytest.raises(ZoomMILError, match=r"seed~0.json: slide t1: 'probs' does not give"):
        run_tables(tmp_path, [path])


def test_probabilities_that_do_not_sum_to_one_are_an_error_naming_the_slide(
    tmp_path: Path,
) -> None:
    """Brier is that of P(tumor) only where P(normal) = 1 - P(tumor): {0.3, 0.3} for a tumor
    slide gave (0.09 + 0.49) / 2 = 0.29, where brier_score_loss gives 0.49, and the top-label
    ECE of a file of per-class sigmoids is no calibration error at all."""
    labels = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    path = write_eval(tmp_path / "eval" / "zoommil" / "seed~0.json", 0, BINARY, labels, probs)
    record = json.loads(path.read_text())
    record["predictions"][1]["probs"] = {"normal": 0.3, "tumor": 0.3}
    record["predictions"][1]["pred"] = "normal"
    record["accuracy"] = 2 / 3
    record["weighted_f1"] = f1_score([0, 1, 0], [0, 0, 0], average="weighted")
    path.write_text(json.dumps(record))
    with pytest.raises(ZoomMILError, match=r"seed~0.json: slide t1: 'probs' sum to 0.6, not 1"):
        run_tables(tmp_path, [path])


def test_float32_softmax_rounding_is_not_refused(tmp_path: Path) -> None:
    labels = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32).astype(float)
    probs[1] += 3e-8
    path = write_eval(tmp_path / "eval" / "zoommil" / "seed~0.json", 0, BINARY, labels, probs)
    run_tables(tmp_path, [path])
