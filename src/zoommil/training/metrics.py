"""Slide-level classification metrics, the same for every model and every table.

Why a module of its own: the paper's tables report weighted F1 and accuracy, the baselines'
papers report AUC, and undefined cases (a class missing from a small test split) must give
``None`` with a reason rather than crash a whole benchmark run.

Why numpy rather than scikit-learn: every training job evaluates its validation split each
epoch and its test split at the end. Importing ``sklearn.metrics`` cost ~2 s per job and its
argument checks ~50 ms per call (~4 s of a 17 s job; the demo runs 45 of them). The formulas
are scikit-learn's (``tests/test_metrics.py`` checks them against it on random splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError, first_few


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] (scikit-learn's ``confusion_matrix`` layout)."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def f1_per_class(counts: np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN) per class, 0 where a class is neither true nor predicted
    (``f1_score(average=None, zero_division=0)``)."""
    denominator = counts.sum(axis=0) + counts.sum(axis=1)
    tp2 = 2 * np.diag(counts)
    return np.divide(tp2, denominator, out=np.zeros(len(counts)), where=denominator > 0)


def cohen_kappa(counts: np.ndarray, weights: str | None = None) -> float | None:
    """Cohen's kappa from the confusion counts (``weights="quadratic"``: disagreement weighted
    by the squared distance of the class indices, for ordered classes); None when undefined
    (one class only)."""
    sum0, sum1 = counts.sum(axis=0), counts.sum(axis=1)
    expected = np.outer(sum1, sum0) / sum0.sum()
    index = np.arange(len(counts))
    if weights == "quadratic":
        disagree = (index[:, None] - index[None, :]).astype(np.float64) ** 2
    else:
        disagree = 1.0 - np.eye(len(counts))
    denominator = np.sum(disagree * expected)
    if np.isclose(denominator, 0):
        return None
    return float(1 - np.sum(disagree * counts) / denominator)


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with tied scores sharing their average rank:
    equal to the area under scikit-learn's ROC curve, ties included."""
    order = np.argsort(score, kind="stable")
    _, first, count = np.unique(score[order], return_index=True, return_counts=True)
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(first + (count + 1) / 2, count)  # 1-based average ranks
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_score(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[float | None, str | None]:
    """One-vs-rest AUC (macro over classes; binary: AUC of the second class).

    Returns ``(auc, None)`` or ``(None, reason)`` when the AUC is undefined: a class of
    ``classes`` has no sample in ``y_true`` (for binary: only one class present).
    """
    n_classes = len(classes)
    present = set(np.unique(y_true).tolist())
    missing = [classes[c] for c in range(n_classes) if c not in present]
    if n_classes < 2:
        return None, "fewer than two classes"
    if missing:
        return None, f"undefined: no slide of class(es) {', '.join(missing)} in this split"
    if n_classes == 2:
        return binary_auc(y_true == 1, probs[:, 1]), None
    # ranked as reported, not renormalised: float32 softmax rows sum to 1 +- 1e-7, and
    # dividing by those sums would break the exact ties of saturated (p = 1.0) slides
    p = probs.astype(np.float64)
    return float(np.mean([binary_auc(y_true == c, p[:, c]) for c in range(n_classes)])), None


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    classes: Sequence[str],
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics of one split from integer labels and class probabilities [n, C].

    Predictions are the argmax of ``probs``. F1 scores follow scikit-learn: weighted F1 weights
    each class by its support; macro F1 and per-class F1 cover the classes that occur in the
    labels or the predictions (a class that occurs in neither has per-class F1 ``None``).
    ``names`` (slide ids, one per row) name the rows of non-finite probabilities in the error.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    n_classes = len(classes)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError("metrics need at least one sample")
    if probs.shape != (len(y_true), n_classes):
        raise ValueError(f"probs has shape {probs.shape}, expected {(len(y_true), n_classes)}")
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(bad):
        which = [str(names[i]) for i in bad] if names is not None else [f"row {i}" for i in bad]
        raise ZoomMILError(
            f"the model's class probabilities are NaN or infinite for {len(bad)} of "
            f"{len(y_true)} slides ({first_few(which)}): it diverged, or their features are "
            "not finite"
        )
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError("labels out of range of the class list")
    y_pred = probs.argmax(axis=1)
    counts = confusion(y_true, y_pred, n_classes)
    per_class = f1_per_class(counts)
    support = counts.sum(axis=1)
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    auc, auc_reason = auc_score(y_true, probs, classes)
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "weighted_f1": float(np.average(per_class, weights=support)),
        "macro_f1": float(np.mean(per_class[seen])),
        "auc": auc,
        "auc_note": auc_reason,
        "cohen_kappa": cohen_kappa(counts),
        # the official ZoomMIL logger's kappa (BRIGHT's and CRC's classes are ordered)
        "quadratic_kappa": cohen_kappa(counts, weights="quadratic"),
        "per_class_f1": {
            name: (float(per_class[c]) if c in seen else None) for c, name in enumerate(classes)
        },
        "support": {name: int(support[c]) for c, name in enumerate(classes)},
        "confusion_matrix": counts.tolist(),
    }
