"""Operating points fixed on the validation split (reporting.operating_points) against
scikit-learn's roc_curve and by hand, the calibration table's columns at them, their files,
and `zoommil predict --operating-point` (inference.operating_point)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_curve
from slide_factory import KEEP_EVERY_PATCH, write_pyramid_tiff
from test_calibration import BINARY, make_prob, random_probs, run_tables, write_eval

from zoommil.cli import main
from zoommil.inference import operating_point
from zoommil.models import build_model
from zoommil.reporting import operating_points, stats
from zoommil.training.checkpoint import save_checkpoint


def threshold_by_sklearn(labels: np.ndarray, score: np.ndarray, target: float):
    """The smallest of roc_curve's (every, finite) thresholds with specificity >= target,
    with its TPR and specificity; None where only the one above every score (inf) has it."""
    fpr, tpr, thresholds = roc_curve(labels, score, drop_intermediate=False)
    ok = (1 - fpr >= target - 1e-12) & np.isfinite(thresholds)
    if not ok.any():
        return None
    i = np.flatnonzero(ok)[np.argmin(thresholds[ok])]
    return thresholds[i], tpr[i], 1 - fpr[i]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", operating_points.TARGETS)
def test_the_threshold_is_roc_curves_smallest_with_the_target_specificity(seed, target):
    """Scores rounded to 0.01 tie, within and across classes: roc_curve groups them into
    one point, and so does the threshold (a slide at it counts as positive)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    labels[:25] = 0  # at least 25 negatives: both targets resolvable
    score = np.round(rng.random(60) * 100) / 100
    got = operating_points.val_threshold(labels, score, target)
    want = threshold_by_sklearn(labels, score, target)
    if want is None:  # negatives tie at the top score beyond the false positives allowed
        assert got.threshold is None and "tie at the top score" in got.reason
        return
    assert got.reason is None
    assert (got.threshold, got.val_sensitivity, got.val_specificity) == pytest.approx(want)
    assert got.n_negative == (labels == 0).sum() and got.n_positive == (labels == 1).sum()


def test_ties_at_the_threshold_fall_on_the_positive_side_as_in_roc_curve():
    """10 negatives at 90%: one false positive allowed. Two negatives tie with a positive at
    0.5, so 0.5 gives two false positives; the threshold is 0.9 (sensitivity 1/2), not 0.5."""
    labels = np.array([0] * 10 + [1, 1])
    score = np.array([0.1] * 8 + [0.5, 0.5] + [0.5, 0.9])
    got = operating_points.val_threshold(labels, score, 0.90)
    assert (got.threshold, got.val_sensitivity, got.val_specificity) == (0.9, 0.5, 1.0)
    assert got.threshold == threshold_by_sklearn(labels, score, 0.90)[0]
    # one negative at 0.5 instead: 0.5 allowed (1 false positive), both positives caught
    score[8] = 0.1
    got = operating_points.val_threshold(labels, score, 0.90)
    assert (got.threshold, got.val_sensitivity, got.val_specificity) == (0.5, 1.0, 0.9)
    # two negatives tie at the top score: only roc_curve's inf threshold (nothing positive)
    score = np.array([0.1] * 8 + [1.0, 1.0] + [0.5, 1.0])
    got = operating_points.val_threshold(labels, score, 0.90, BINARY)
    assert got.threshold is None and threshold_by_sklearn(labels, score, 0.90) is None
    assert got.reason.startswith("more than 1 validation slides of normal tie at the top score")


def test_too_few_val_negatives_for_the_target_is_na_with_the_reason():
    """12 negatives: 90% allows one false positive, 95% none (a threshold set by the single
    highest negative), so 95% is n/a and says why; no negative at all is n/a too."""
    labels = np.array([0] * 12 + [1] * 5)
    score = np.linspace(0, 1, 17)
    assert operating_points.val_threshold(labels, score, 0.90).threshold is not None
    got = operating_points.val_threshold(labels, score, 0.95, BINARY)
    assert got.threshold is None and math.isnan(got.val_sensitivity)
    assert got.reason == (
        "12 validation slides of normal: 95% specificity needs at least 20 to allow one false "
        "positive"
    )
    assert operating_points.min_negatives(0.90) == 10 and operating_points.min_negatives(0.95) == 20
    none = operating_points.val_threshold(np.ones(5, int), score[:5], 0.9, BINARY)
    assert none.threshold is None and "no validation slide of normal" in none.reason


def test_no_val_positive_still_fixes_a_threshold_and_the_notes_say_so():
    """Specificity needs only negatives: 12 negatives and no positive fix a 90% threshold
    (validation sensitivity undefined). The table's note said "n/a ... or no slide of a
    class", which the code never does for a missing positive class."""
    got = operating_points.val_threshold(np.zeros(12, int), np.linspace(0, 1, 12), 0.90, BINARY)
    assert got.threshold == 1.0 and got.reason is None and math.isnan(got.val_sensitivity)
    assert got.val_specificity == pytest.approx(11 / 12)
    note = operating_points.notes(pd.DataFrame({"method": []}), BINARY)[0]
    assert "no slide of a class" not in note
    assert "fewer than 10 (20) normal slides" in note
    assert "a split without tumor slides still fixes one" in note


def test_test_rates_on_a_resample_equal_those_on_its_drawn_slides():
    """The bootstrap's statistic: the seed's rates on a multiset of test slides equal the
    rates computed on the drawn slides (drawn twice: counted twice)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=20)
    probs = random_probs(rng, 2, 20, 2)
    prob = make_prob(probs, labels, BINARY)
    thresholds = np.array([0.4, 0.6])
    idx = np.array([0, 0, 3, 5, 5, 5, 7, 11, 12, 19])
    counts = stats.slide_counts(idx[None], 20)
    for which in ("sens", "spec"):
        got = operating_points._test_rates(prob, thresholds, which)(counts)[:, 0]
        for s in range(2):
            y, p = labels[idx], probs[s, idx, 1] >= thresholds[s]
            want = p[y == 1].mean() if which == "sens" else (~p[y == 0]).mean()
            assert got[s] == pytest.approx(want)


# --- make_tables: the columns and the files ---------------------------------------------------


def write_metrics(folder: Path, seed: int, labels, score) -> tuple[Path, Path]:
    """A training run's metrics.json (its val block) and a stand-in checkpoint file."""
    run = folder / "zoommil" / f"seed~{seed}"
    run.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "slide_id": f"v{i}",
            "label": BINARY[y],
            "probs": {"normal": 1 - float(p), "tumor": float(p)},
        }
        for i, (y, p) in enumerate(zip(labels, score, strict=True))
    ]
    metrics = {"seed": seed, "classes": BINARY, "val": {"split": "val", "predictions": entries}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "checkpoint.pt").write_bytes(f"weights of seed {seed}".encode())
    return run / "metrics.json", run / "checkpoint.pt"


def test_make_tables_adds_test_rates_at_val_thresholds_and_writes_the_files(tmp_path):
    """Per seed the threshold comes from its val slides (roc_curve), the test sensitivity and
    specificity are the test slides' at it; seed mean, std and a CI around the mean; 95% with
    12 val negatives is n/a with the reason, in the CSV, the Markdown and the file."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, size=40)
    probs = random_probs(rng, 2, 40, 2)
    evals = [
        write_eval(tmp_path / "eval" / "zoommil" / f"seed~{s}.json", s, BINARY, labels, probs[s])
        for s in range(2)
    ]
    val_labels = np.array([0] * 12 + [1] * 8)
    val_scores = [np.round(rng.random(20) * 20) / 20 for _ in range(2)]
    made = [write_metrics(tmp_path / "models", s, val_labels, val_scores[s]) for s in range(2)]
    extra = {
        "val_reports": [m for m, _ in made],
        "checkpoints": [c for _, c in made],
        "operating_points": tmp_path / "operating_points",
    }
    _, outputs = run_tables(tmp_path, evals, **extra)
    row = pd.read_csv(outputs["calibration_csv"]).set_index("method").loc["zoommil"]
    sens, spec = [], []
    for s in range(2):
        threshold, _, _ = threshold_by_sklearn(val_labels, val_scores[s], 0.90)
        decided = probs[s, :, 1] >= threshold
        sens.append(decided[labels == 1].mean())
        spec.append((~decided[labels == 0]).mean())
    assert row["test_sens_at_val_spec90_mean"] == pytest.approx(np.mean(sens))
    assert row["test_sens_at_val_spec90_std"] == pytest.approx(np.std(sens, ddof=1))
    assert row["test_spec_at_val_spec90_mean"] == pytest.approx(np.mean(spec))
    for name in ("test_sens_at_val_spec90", "test_spec_at_val_spec90"):
        assert row[f"{name}_ci_low"] <= row[f"{name}_mean"] <= row[f"{name}_ci_high"]
    assert row["n_val"] == 20 and row["n_val_negative"] == 12 and row["n_val_positive"] == 8
    assert math.isnan(row["test_sens_at_val_spec95_mean"])
    assert "95% specificity needs at least 20" in row["val_spec95_na"]
    assert "sens_at_spec90_mean" in row.index  # the optimistic columns keep their names
    markdown = outputs["calibration_md"].read_text()
    assert "Test sensitivity, threshold at 90% val specificity (%)" in markdown
    assert (
        "zoommil, 95% val specificity n/a: seeds 0, 1: 12 validation slides of normal" in markdown
    )

    folder = tmp_path / "operating_points"
    point = json.loads((folder / "zoommil/seed~1/val_spec90.json").read_text())
    threshold, val_sens, val_spec = threshold_by_sklearn(val_labels, val_scores[1], 0.90)
    assert point["threshold"] == pytest.approx(threshold)
    assert point["val_sensitivity"] == pytest.approx(val_sens)
    assert point["val_specificity"] == pytest.approx(val_spec)
    assert point["checkpoint_sha256"] == operating_point.sha256_file(made[1][1])
    assert point["positive_class"] == "tumor" and point["seed"] == 1
    assert point["n_val_slides"] == {"normal": 12, "tumor": 8}
    assert point["target_specificity"] == 0.9 and point["method"] == "zoommil"
    na = json.loads((folder / "zoommil/seed~0/val_spec95.json").read_text())
    assert na["threshold"] is None and "needs at least 20" in na["reason"]
    index = pd.read_csv(folder / "index.tsv", sep="\t")
    assert len(index) == 4 and set(index["file"]) >= {"zoommil/seed~1/val_spec90.json"}


def test_a_val_report_without_probabilities_is_an_error_naming_the_file(tmp_path):
    path, _ = write_metrics(tmp_path / "models", 0, [0, 1], [0.2, 0.8])
    data = json.loads(path.read_text())
    del data["val"]["predictions"][1]["probs"]
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match=r"metrics.json: val slide v1: needs a 'label'"):
        operating_points.val_runs([path])


# --- zoommil predict --operating-point --------------------------------------------------------

MAGS = [5.0, 10.0, 20.0]
PATCH = 64


def _checkpoint(path: Path, classes: list[str]) -> Path:
    """A ZoomMIL checkpoint with a random-weight encoder recipe, as test_predict's."""
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=len(classes), mags=MAGS, k=3).eval()
    recipe = {"patch_size": PATCH, "weights": "random", "weights_seed": 0}
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": 3},
        "classes": classes,
        "mags": MAGS,
        "config_mags": MAGS,
        "in_dim": 1024,
        "preprocessing": {**recipe, "tissue_threshold": KEEP_EVERY_PATCH},
    }
    return save_checkpoint(path, model.state_dict(), config)


def _point(path: Path, checkpoint: Path, classes, threshold=0.5, reason=None) -> Path:
    record = operating_point.make_record(
        method="zoommil",
        seed=0,
        checkpoint=str(checkpoint),
        checkpoint_sha256=operating_point.sha256_file(checkpoint),
        classes=classes,
        target_specificity=0.9,
        threshold=threshold,
        val_sensitivity=0.8,
        val_specificity=0.9,
        n_val={classes[0]: 10, classes[1]: 5},
        val_source="metrics.json",
        reason=reason,
    )
    path.write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("op")
    slide = write_pyramid_tiff(folder / "small.tiff", width=768, height=512)
    binary = _checkpoint(folder / "binary.pt", ["normal", "tumour"])
    return folder, slide, binary


def test_predict_prints_and_writes_the_decision_at_the_threshold(setup, tmp_path, capsys):
    folder, slide, binary = setup
    out = tmp_path / "pred.json"
    args = ["predict", str(slide), "--checkpoint", str(binary), "--no-progress"]
    assert main([*args, "--json", str(out)]) == 0
    p = json.loads(out.read_text())["probabilities"]["tumour"]
    for threshold in (p - 1e-6, p + 1e-6):  # just below: tumour; just above: normal
        point = _point(tmp_path / "op.json", binary, ["normal", "tumour"], threshold)
        capsys.readouterr()
        assert main([*args, "--json", str(out), "--operating-point", str(point)]) == 0
        want = "tumour" if p >= threshold else "normal"
        assert f"; decision {want} (P(tumour) {p:.3f} " in capsys.readouterr().out
        written = json.loads(out.read_text())
        assert written["decision"] == want
        assert written["operating_point"]["threshold"] == pytest.approx(threshold)
    many = tmp_path / "many"
    point = _point(tmp_path / "op.json", binary, ["normal", "tumour"], p - 1e-6)
    assert main([*args, "--out-dir", str(many), "--operating-point", str(point)]) == 0
    table = pd.read_csv(many / "predictions.tsv", sep="\t")
    assert list(table.columns[:6]) == [
        "slide_id", "status", "predicted", "p_normal", "p_tumour", "threshold"
    ]  # fmt: skip
    assert table["decision"].tolist() == ["tumour"]


def test_predict_refuses_another_checkpoints_file(setup, tmp_path, capsys):
    folder, slide, binary = setup
    other = tmp_path / "other.pt"
    other.write_bytes(b"another checkpoint")
    point = _point(tmp_path / "op.json", other, ["normal", "tumour"])
    args = ["predict", str(slide), "--checkpoint", str(binary), "--operating-point", str(point)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"zoommil predict: error: --operating-point {point}: made for ")
    assert f"(zoommil seed 0), not {binary} (sha256 " in err and "\n" not in err


def test_predict_refuses_a_model_that_is_not_binary(setup, tmp_path, capsys):
    folder, slide, _ = setup
    three = _checkpoint(tmp_path / "three.pt", ["a", "b", "c"])
    point = _point(tmp_path / "op.json", three, ["a", "b"])
    args = ["predict", str(slide), "--checkpoint", str(three), "--operating-point", str(point)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"zoommil predict: error: --operating-point {point}: {three} has 3 classes (a, b, c); "
        "an operating point thresholds a binary model's P(positive)"
    )


def test_predict_refuses_a_file_without_threshold_or_not_one(setup, tmp_path, capsys):
    folder, slide, binary = setup
    reason = "12 validation slides of normal: 95% specificity needs at least 20"
    na = _point(tmp_path / "na.json", binary, ["normal", "tumour"], None, reason)
    args = ["predict", str(slide), "--checkpoint", str(binary), "--no-progress"]
    assert main([*args, "--operating-point", str(na)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"zoommil predict: error: --operating-point {na}: no threshold: {reason}"
    )
    junk = tmp_path / "junk.json"
    junk.write_text('{"threshold": 0.5}')
    assert main([*args, "--operating-point", str(junk)]) == 2
    assert "not an operating-point file" in capsys.readouterr().err


def test_the_tables_decision_is_the_exact_probabilitys_not_the_rounded_cells(tmp_path):
    """A slide 4e-8 below the threshold is normal in the JSON and the printed line; its
    p_tumour cell (6 decimals) rounds up to above the threshold, and the table said tumour."""
    from zoommil.inference.cohort import write_table

    classes = ["normal", "tumour"]
    threshold = 0.41234567
    point = {"classes": classes, "positive_class": "tumour", "threshold": threshold}
    below = {"normal": 1 - (threshold - 4e-8), "tumour": threshold - 4e-8}
    rows = [
        {"slide_id": "a", "slide": "a.svs", "status": "ok", "predicted": "normal",
         "probabilities": below, "patches_encoded": 3, "seconds": 1.0, "reason": ""},
        {"slide_id": "b", "slide": "b.svs", "status": "failed", "predicted": "",
         "probabilities": {}, "patches_encoded": 0, "seconds": 0.0, "reason": "unreadable"},
    ]  # fmt: skip
    table = write_table(tmp_path / "predictions.tsv", rows, classes)
    operating_point.add_to_table(point, table, rows)
    frame = pd.read_csv(table, sep="\t", keep_default_na=False, dtype=str)
    assert float(frame["p_tumour"][0]) >= threshold  # the rounded cell is above it
    assert (
        frame["decision"].tolist() == [operating_point.decide(point, below), ""] == ["normal", ""]
    )
    assert float(frame["threshold"][0]) == threshold and frame["threshold"][1] == ""
