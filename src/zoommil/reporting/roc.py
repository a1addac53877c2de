"""ROC AUC of a method's seeds on many slide multisets at once, and its bootstrap CI.

Why a module of its own: the main table's AUC CI (`table_frames`) and the subgroup table
(`subgroups`) resample the same AUC, and `calibration`, which holds the per-slide
probabilities, imports `table_frames`; here both can import it. The AUC is the evaluations':
binary, of the second class; more classes, the macro mean of the one-vs-rest AUCs (NaN where
a class has no slide).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from zoommil.reporting import stats

if TYPE_CHECKING:  # calibration imports table_frames, which imports this module
    from zoommil.reporting.calibration import Probabilities


def binary_auc(positive: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B] ROC AUC of ``score`` [n] for ``positive`` [n] on each slide multiset ``counts``
    [B, n] (how often each slide is drawn): the Mann-Whitney statistic, a tie counted half,
    as `zoommil.training.metrics.binary_auc` on the drawn slides; NaN without a positive or a
    negative slide.

    A positive slide's credit is the drawn negatives scored below it plus half those tied
    with it: two lookups into one cumulative sum over the negatives in score order. That
    touches [B, n] once where a ranking of every slide took 6x the time (8.8 against 1.4 ms
    for 1000 resamples of 300 slides), and the AUC CI of the main table is 45 of these per
    method (3 seeds, 3 classes, 5 batches)."""
    negatives, positives = np.flatnonzero(~positive), np.flatnonzero(positive)
    order = negatives[np.argsort(score[negatives], kind="stable")]
    ranked = score[order]
    below = np.searchsorted(ranked, score[positives], side="left")  # negatives scored lower
    upto = np.searchsorted(ranked, score[positives], side="right")  # ... lower or tied
    drawn = np.zeros((counts.shape[0], len(order) + 1))
    np.cumsum(counts[:, order], axis=1, out=drawn[:, 1:])  # [B, negatives + 1]
    credit = 0.5 * (drawn[:, below] + drawn[:, upto])  # [B, positives]
    pos_w = counts[:, positives]
    n_pos, n_neg = pos_w.sum(axis=1), drawn[:, -1]
    wins = (pos_w * credit).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def auc(prob: Probabilities, counts: np.ndarray) -> np.ndarray:
    """[S, B] the AUC of each seed (binary: of the second class; more: the macro mean of the
    one-vs-rest AUCs, NaN where a class has no slide), as the evaluations' ``auc``."""
    n_classes = len(prob.classes)
    out = np.empty((prob.probs.shape[0], counts.shape[0]))
    for s, p in enumerate(prob.probs):
        if n_classes == 2:
            out[s] = binary_auc(prob.labels == 1, p[:, 1], counts)
        else:
            per = [binary_auc(prob.labels == c, p[:, c], counts) for c in range(n_classes)]
            out[s] = np.mean(per, axis=0)  # NaN where any class is absent
    return out


def auc_interval(prob: Probabilities) -> stats.Interval:
    """The seed-mean AUC on all test slides with its 95% bootstrap CI over them (or their
    patients), as the main table's other metrics (`stats.bootstrap_ci`: its resamples, seed
    and `stats.CONSTANT` rule: no interval, NaN, where every resample agrees). The bootstrap
    does not stratify by class, so a resample may hold no slide of some class, where the AUC
    is undefined: it is left out and counted (`stats.Interval.dropped`; the table's note
    gives the count: with 15 test slides of 3 classes about 0.7% of the resamples, with one
    slide of a class in 30, 36%; no interval where none is left). Without a slide of every
    class the AUC itself is undefined: NaN, kind ""."""
    if np.isnan(auc(prob, np.ones((1, len(prob.slides))))).any():
        return stats.Interval(math.nan, math.nan, math.nan, "")
    statistic = stats.counts_statistic(
        lambda counts: auc(prob, counts).mean(axis=0),
        stats.unit_of_slide(prob.pred),
        len(prob.slides),
    )
    with warnings.catch_warnings():  # scipy warns of the NaN resamples, dropped and counted
        warnings.simplefilter("ignore")
        interval = stats.bootstrap_ci(statistic, stats.n_units(prob.pred), drop_undefined=True)
    if interval.kind == stats.CONSTANT:
        return stats.Interval(
            interval.estimate, math.nan, math.nan, stats.CONSTANT, interval.dropped
        )
    if interval.kind == stats.BOOTSTRAP and math.isnan(interval.low):  # every one dropped
        return stats.Interval(
            interval.estimate, math.nan, math.nan, stats.UNDEFINED, interval.dropped
        )
    return interval
