"""Slide-level classification metrics, the same for every model and every table.

Why a module of its own: the paper's tables report weighted F1 and accuracy, the baselines'
papers report AUC, and undefined cases (a class missing from a small test split) must give
``None`` with a reason rather than crash a whole benchmark run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)


def _none_if_nan(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


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
        return float(roc_auc_score(y_true == 1, probs[:, 1])), None
    p = probs.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    auc = roc_auc_score(
        y_true, p, multi_class="ovr", average="macro", labels=list(range(n_classes))
    )
    return float(auc), None


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """All metrics of one split from integer labels and class probabilities [n, C].

    Predictions are the argmax of ``probs``. F1 scores follow scikit-learn: weighted F1 weights
    each class by its support; macro F1 and per-class F1 cover the classes that occur in the
    labels or the predictions (a class that occurs in neither has per-class F1 ``None``).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    n_classes = len(classes)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError("metrics need at least one sample")
    if probs.shape != (len(y_true), n_classes):
        raise ValueError(f"probs has shape {probs.shape}, expected {(len(y_true), n_classes)}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or infinite values")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError("labels out of range of the class list")
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    seen = set(y_true.tolist()) | set(y_pred.tolist())
    auc, auc_reason = auc_score(y_true, probs, classes)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (one class only) becomes None
        kappa = cohen_kappa_score(y_true, y_pred, labels=labels)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auc": auc,
        "auc_note": auc_reason,
        "cohen_kappa": _none_if_nan(kappa),
        "per_class_f1": {
            name: (float(per_class[c]) if c in seen else None) for c, name in enumerate(classes)
        },
        "support": {name: int((y_true == c).sum()) for c, name in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
