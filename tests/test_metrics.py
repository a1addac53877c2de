"""Metrics against scikit-learn and hand-computed references, including undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

from zoommil.errors import ZoomMILError
from zoommil.training.metrics import classification_metrics


def one_hot_probs(pred: list[int], n_classes: int, confidence: list[float]) -> np.ndarray:
    """Probabilities whose argmax is ``pred``; ``confidence`` orders the slides for the AUC."""
    probs = np.zeros((len(pred), n_classes))
    for i, (p, c) in enumerate(zip(pred, confidence, strict=True)):
        probs[i] = (1 - c) / (n_classes - 1)
        probs[i, p] = c
    return probs


def test_binary_by_hand() -> None:
    # labels 0 0 0 1 1, predictions 0 1 0 1 1 -> TP(1)=2, FP(1)=1, FN(1)=0; TP(0)=2, FN(0)=1
    y = [0, 0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.3, 0.8, 0.9])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ["normal", "tumor"])
    f1_tumor = 2 * 2 / (2 * 2 + 1 + 0)  # 0.8
    f1_normal = 2 * 2 / (2 * 2 + 0 + 1)  # 0.8
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["per_class_f1"] == {
        "normal": pytest.approx(f1_normal),
        "tumor": pytest.approx(f1_tumor),
    }
    assert m["weighted_f1"] == pytest.approx((3 * f1_normal + 2 * f1_tumor) / 5)
    assert m["macro_f1"] == pytest.approx((f1_normal + f1_tumor) / 2)
    assert m["confusion_matrix"] == [[2, 1], [0, 2]]
    assert m["auc"] == pytest.approx(1.0)  # every tumor scores above every normal
    assert m["auc_note"] is None
    assert m["support"] == {"normal": 3, "tumor": 2}
    assert m["n"] == 5


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=60)
    logits = rng.normal(size=(60, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs.astype(np.float32), list("abcd"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(y == pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
    per_class = f1_score(y, pred, average=None)
    assert [m["per_class_f1"][c] for c in "abcd"] == pytest.approx(per_class.tolist())
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 60
    assert np.trace(cm) == np.sum(y == pred)
    assert cm[2].sum() == np.sum(y == 2)  # rows are true classes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_every_metric_equals_sklearn_on_small_splits_with_ties(seed: int, n_classes: int):
    """The numpy formulas against scikit-learn's on splits like the demo's (15 slides):
    probabilities rounded so that scores tie, and classes that are never predicted."""
    rng = np.random.default_rng(seed)
    n = 15
    y = np.arange(n) % n_classes  # every class present
    rng.shuffle(y)
    logits = rng.normal(size=(n, n_classes)) + (seed % 3) * np.eye(n_classes)[y]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1) + 1e-3
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, [f"c{c}" for c in range(n_classes)])
    labels = list(range(n_classes))
    kw = {"labels": labels, "zero_division": 0}
    assert m["accuracy"] == pytest.approx(np.mean(y == pred), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted", **kw), abs=1e-12)
    macro = f1_score(y, pred, average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    if n_classes == 2:
        auc = roc_auc_score(y, probs[:, 1])
    else:
        auc = roc_auc_score(y, probs, multi_class="ovr", labels=labels)
    assert m["auc"] == pytest.approx(auc, abs=1e-12)
    for key, weights in (("cohen_kappa", None), ("quadratic_kappa", "quadratic")):
        kappa = cohen_kappa_score(y, pred, labels=labels, weights=weights)
        if np.isnan(kappa):
            assert m[key] is None
        else:
            assert m[key] == pytest.approx(kappa, abs=1e-12)


def test_tied_scores_share_their_rank_in_the_auc() -> None:
    # positives score 0.5 and 0.9, negatives 0.5 and 0.1: pairs (0.5 vs 0.5) count 1/2, so
    # AUC = (1/2 + 1 + 1 + 1) / 4
    y = [1, 1, 0, 0]
    p1 = np.array([0.5, 0.9, 0.5, 0.1])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ["a", "b"])
    assert m["auc"] == pytest.approx(3.5 / 4)


def test_multiclass_auc_keeps_the_ties_of_saturated_float32_softmax_rows() -> None:
    """Two slides at p = 1.0 for class 0 (one of them truly class 1) tie in scikit-learn's
    one-vs-rest AUC; their float32 rows sum to 1 within 1e-7 but not equally, so
    renormalising them first would rank one above the other."""
    import torch

    logits = torch.tensor([[30.0, 0, 5], [30, 12, 0], [0, 9, 1], [1, 8, 0], [0, 1, 7], [2, 0, 9]])
    probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
    y = np.array([0, 1, 1, 1, 2, 2])
    assert probs[0, 0] == probs[1, 0] == 1.0
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)


def test_kappa_is_null_when_everything_is_one_class() -> None:
    m = classification_metrics([0, 0, 0], np.array([[0.9, 0.1]] * 3), ["a", "b"])
    assert m["cohen_kappa"] is None
    assert m["accuracy"] == 1.0


def test_auc_is_null_with_a_reason_when_a_class_is_missing() -> None:
    y = [0, 0, 2, 2]
    probs = one_hot_probs([0, 1, 2, 2], 3, [0.9, 0.6, 0.8, 0.7])
    m = classification_metrics(y, probs, ["normal", "atypia", "carcinoma"])
    assert m["auc"] is None
    assert "atypia" in m["auc_note"]
    assert m["per_class_f1"]["atypia"] == 0.0  # predicted once but never true: defined, 0
    m = classification_metrics([0, 0], one_hot_probs([0, 0], 3, [0.9, 0.9]), ["a", "b", "c"])
    assert m["per_class_f1"] == {"a": 1.0, "b": None, "c": None}
    assert m["macro_f1"] == 1.0  # over the classes that occur, as in scikit-learn
    assert m["auc"] is None
    assert m["cohen_kappa"] is None  # undefined with one class only


def test_binary_auc_with_one_class_present_is_null() -> None:
    m = classification_metrics([1, 1, 1], one_hot_probs([1, 0, 1], 2, [0.7, 0.8, 0.9]), ["n", "t"])
    assert m["auc"] is None and "n" in m["auc_note"]
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["cohen_kappa"] == pytest.approx(0.0)  # observed = chance agreement


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 3)) / 3, ["a", "b"])
    nan = np.array([[np.nan, 1], [0.5, 0.5], [np.inf, 0]])
    with pytest.raises(ZoomMILError, match=r"NaN or infinite for 2 of 3 slides \(row 0, row 2\)"):
        classification_metrics([0, 1, 1], nan, ["a", "b"])
    with pytest.raises(ZoomMILError, match=r"\(s0, s2\)"):
        classification_metrics([0, 1, 1], nan, ["a", "b"], ["s0", "s1", "s2"])
    with pytest.raises(ValueError, match="at least one"):
        classification_metrics([], np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        classification_metrics([0, 2], np.ones((2, 2)) / 2, ["a", "b"])
