"""Calibration and operating points per method, from the evaluations' per-slide probabilities.

Why: Tables 1-3 say how often a method is right (accuracy, weighted F1) and how well it ranks
(AUC), not whether its probabilities can be read as probabilities, nor what sensitivity it has
at a specificity a clinic would set (CAMELYON16 is a screening task). The numbers come from the
``probs`` every `zoommil evaluate` record (and the train job's ``--eval-out``) holds per test
slide, so nothing is retrained.

- Brier score: the mean over slides of sum_c (p_c - y_c)^2 (the one-hot label y); for two
  classes halved, so it is the squared error of the second class's probability, as
  scikit-learn's ``brier_score_loss`` (0-1); with more classes the multi-class Brier (0-2).
- ECE: top-label expected calibration error in `N_BINS` equal-width bins of the top
  probability, (0, 0.1], ..., (0.9, 1]: sum over bins of (slides in bin / slides) x
  |accuracy - mean top probability| of the bin (Guo et al. 2017's definition).
- Sensitivity at a specificity (binary only; the positive class the second, as the AUC's):
  the highest true-positive rate among thresholds of the positive probability whose
  specificity is at least the target, each seed at its own threshold, chosen on the test
  split itself (an optimistic operating point: no threshold was fixed beforehand).

As in `zoommil.reporting.stats`, a method's value on a slide set is the mean over its seeds of
the metric on that set, and its 95% CI is the percentile bootstrap over test slides (or, with
patient ids, patients), `stats.bootstrap_ci` with its resamples, seed and CONSTANT rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.io.atomic import atomic_path
from zoommil.reporting import evalcheck, stats
from zoommil.reporting.table_format import NO_CI, count_text

# the lifting of a metrics.json's `test` block, as the CIs read it (one rule for both)
from zoommil.reporting.table_frames import _test_predictions as test_predictions

N_BINS = 10
#: Target specificities of the sensitivity columns (binary tasks only).
SPECIFICITIES = (0.90, 0.95)
#: The interval kind where some bootstrap resamples hold no slide of a class (sensitivity at a
#: specificity is then undefined for them): no interval, NaN bounds.
UNDEFINED = stats.UNDEFINED
#: How far a slide's probabilities may sum from 1: a float32 softmax is within 1e-6, a file
#: rounded to 4 decimals within 5e-4 for 10 classes. Per-class sigmoids, or a file holding one
#: class's probability twice, are further off, and their Brier and ECE would be wrong numbers.
SUM_TOLERANCE = 1e-3


def sens_key(specificity: float) -> str:
    """`sens_at_spec90` for 0.90."""
    return f"sens_at_spec{round(100 * specificity)}"


@dataclass(frozen=True)
class Probabilities:
    """One method's test probabilities [n_seeds, n_slides, n_classes], beside its
    predictions (`stats.Predictions`: the slides, seeds, labels and patient groups)."""

    pred: stats.Predictions
    probs: np.ndarray
    classes: tuple[str, ...]

    @property
    def slides(self) -> tuple[str, ...]:
        return self.pred.slides

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.pred.seeds

    @property
    def labels(self) -> np.ndarray:
        return self.pred.labels

    def metrics(self) -> list[str]:
        """The metrics this task has: sensitivity columns for two classes only."""
        binary = [sens_key(s) for s in SPECIFICITIES] if len(self.classes) == 2 else []
        return ["brier", "ece", *binary]


def run_probabilities(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], preds: Mapping[str, stats.Predictions]
) -> tuple[dict[str, Probabilities], list[str]]:
    """The probabilities of every method of ``preds`` (`table_frames.run_predictions`: its
    files checked, its patients applied) and the methods whose files have none."""
    out, left_out = {}, []
    for method, pred in preds.items():
        records = [test_predictions(r) for r in runs[method]]
        prob = probabilities_from_evals(records, pred)
        if prob is None:
            left_out.append(method)
        else:
            out[method] = prob
    return out, left_out


def probabilities_from_evals(
    records: Sequence[Mapping[str, Any]], pred: stats.Predictions
) -> Probabilities | None:
    """The ``probs`` of one method's evaluation records (as `table_frames.run_predictions`
    lifted them, already checked by `evalcheck`), in ``pred``'s slide and seed order and with
    its patient groups; None when no record has them (a file written by another tool); an
    error naming the file when some entries have them and others not, or when a slide's
    probabilities miss a class, are not finite numbers or do not sum to 1."""
    entries = [p for r in records for p in r["predictions"]]
    if not any("probs" in p for p in entries):
        return None
    classes = tuple(records[0]["classes"])
    slide_index = {s: i for i, s in enumerate(pred.slides)}
    probs = np.full((len(pred.seeds), len(pred.slides), len(classes)), np.nan)
    for record in records:
        row = pred.seeds.index(int(record["seed"]))
        for entry in record["predictions"]:
            value = entry.get("probs")
            where = f"{evalcheck.source(record)}: slide {entry['slide_id']}"
            if not isinstance(value, Mapping) or set(value) != set(classes):
                raise ZoomMILError(f"{where}: 'probs' does not give one number per class {classes}")
            try:
                numbers = [float(value[c]) for c in classes]
            except (TypeError, ValueError):
                raise ZoomMILError(f"{where}: 'probs' holds a value that is not a number") from None
            if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in numbers):
                raise ZoomMILError(f"{where}: 'probs' {numbers} are not probabilities in [0, 1]")
            if abs(sum(numbers) - 1.0) > SUM_TOLERANCE:
                raise ZoomMILError(
                    f"{where}: 'probs' sum to {sum(numbers):.6g}, not 1 (one probability per "
                    "class, as a softmax gives them)"
                )
            probs[row, slide_index[entry["slide_id"]]] = numbers
    return Probabilities(pred, probs, classes)


# --- the metrics per seed on many slide multisets at once -------------------------------------


def brier_per_slide(prob: Probabilities) -> np.ndarray:
    """[S, n] each slide's squared error, halved for two classes (scikit-learn's binary
    Brier: that of the second class's probability)."""
    onehot = prob.labels[:, None] == np.arange(len(prob.classes))[None, :]
    squared = ((prob.probs - onehot[None]) ** 2).sum(axis=-1)
    return squared / 2 if len(prob.classes) == 2 else squared


def confidence_bins(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The bin of each top probability: (k / n_bins, (k + 1) / n_bins], 0 in the first.
    The edges are k / n_bins, as the reliability CSV's bin_low and bin_high: linspace's edge
    0.6000000000000001 put a top probability of 0.6000000000000001 (1 - 0.4) in (0.5, 0.6]."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def _ece(prob: Probabilities, counts: np.ndarray, k: np.ndarray) -> np.ndarray:
    confidence = prob.probs.max(axis=-1)  # [S, n]
    correct = prob.probs.argmax(axis=-1) == prob.labels[None]
    members = confidence_bins(confidence)[..., None] == np.arange(N_BINS)  # [S, n, bins]
    gap = (confidence - correct)[..., None] * members
    per_bin = np.einsum("snk,bn->sbk", gap, counts)  # summed gap per seed, set and bin
    return np.abs(per_bin).sum(axis=-1) / k


def _sensitivity(prob: Probabilities, counts: np.ndarray, specificity: float) -> np.ndarray:
    """[S, B] the highest TPR whose FPR is at most 1 - specificity, over the thresholds at each
    distinct positive probability (and above them all: TPR 0), as ``roc_curve`` gives them;
    NaN for a set without a slide of one class.

    The best threshold lies just above s*, the score of the first negative (in descending
    score) at which the drawn negatives exceed the false positives allowed; the TPR is that of
    the positives scored above s*. One cumulative sum over each class's slides per seed (the
    sum over every threshold took 2.3 of 4.2 s at 1000 test slides)."""
    positive = prob.labels == 1
    out = np.empty((prob.probs.shape[0], counts.shape[0]))
    for s, score in enumerate(prob.probs[..., 1]):
        neg = np.flatnonzero(~positive)[np.argsort(-score[~positive], kind="stable")]
        pos = np.flatnonzero(positive)[np.argsort(-score[positive], kind="stable")]
        # slides down the rows: numpy's cumsum down axis 0 is vectorised over the resamples
        fp = np.cumsum(counts.T[neg], axis=0)  # [negatives, B]
        tp = np.cumsum(counts.T[pos], axis=0)  # [positives, B]
        n_neg = fp[-1] if len(neg) else np.zeros(len(counts))
        n_pos = tp[-1] if len(pos) else np.zeros(len(counts))
        # counts are whole numbers: the tolerance keeps 1 of 10 negatives within 10% FPR
        over = fp > (1.0 - specificity) * n_neg + stats.TIES
        first = over.argmax(axis=0)  # the first negative over the budget (n_neg > 0)
        cut = score[neg][first] if len(neg) else np.zeros(len(counts))
        above = np.searchsorted(-score[pos], -cut, side="left")  # positives scored > s*
        hit = tp[np.maximum(above - 1, 0), np.arange(len(counts))] if len(pos) else n_pos
        hit = np.where(above > 0, hit, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s] = np.where((n_pos > 0) & (n_neg > 0), hit / n_pos, np.nan)
    return out


def per_seed(prob: Probabilities, metric: str, counts: np.ndarray) -> np.ndarray:
    """[S, B] ``metric`` of each seed on each slide multiset ``counts`` [B, n] (how often each
    slide is drawn, as `stats.slide_counts`)."""
    k = counts.sum(axis=1)
    if metric == "brier":
        return (brier_per_slide(prob) @ counts.T) / k
    if metric == "ece":
        return _ece(prob, counts, k)
    for specificity in SPECIFICITIES:
        if metric == sens_key(specificity) and len(prob.classes) == 2:
            return _sensitivity(prob, counts, specificity)
    raise ValueError(f"unknown metric {metric!r} for {len(prob.classes)} classes")


def _statistic(prob: Probabilities, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """`stats.bootstrap_ci`'s statistic: unit-index arrays [..., m] -> the seed mean of
    ``metric`` on the slides they hold (a patient's slides drawn together)."""
    return _counts_statistic(prob, lambda counts: per_seed(prob, metric, counts))


def _counts_statistic(
    prob: Probabilities, per_counts: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    return stats.counts_statistic(
        lambda counts: per_counts(counts).mean(axis=0),
        stats.unit_of_slide(prob.pred),
        len(prob.slides),
    )


def method_interval(prob: Probabilities, metric: str) -> stats.Interval:
    """The seed-mean ``metric`` on all test slides with its 95% bootstrap CI; no interval
    (NaN) where every resample agrees (`stats.CONSTANT`) or some resample is undefined
    (`UNDEFINED`: sensitivity on a resample without a positive or a negative slide)."""
    return counts_interval(prob, lambda counts: per_seed(prob, metric, counts))


def counts_interval(
    prob: Probabilities, per_counts: Callable[[np.ndarray], np.ndarray]
) -> stats.Interval:
    """`method_interval` of any per-seed measure ``per_counts``: slide multisets [B, n] ->
    [S, B] (`operating_points` gives the test rates at thresholds fixed on validation)."""
    statistic = _counts_statistic(prob, per_counts)
    with warnings.catch_warnings():  # scipy warns of NaN resamples, which UNDEFINED reports
        warnings.simplefilter("ignore")
        interval = stats.bootstrap_ci(statistic, stats.n_units(prob.pred))
    if interval.kind == stats.CONSTANT:
        return stats.Interval(interval.estimate, math.nan, math.nan, stats.CONSTANT)
    if interval.kind == stats.BOOTSTRAP and math.isnan(interval.low):
        return stats.Interval(interval.estimate, math.nan, math.nan, UNDEFINED)
    return interval


# --- the table, its display and notes, and the reliability diagram's data --------------------


def calibration_table(probs: Mapping[str, Probabilities], order: Sequence[str]) -> pd.DataFrame:
    """One row per method of ``order`` that has probabilities: ``n_seeds``, ``n_test``,
    ``n_test_units``, ``n_classes``, ``ece_bins`` and per metric ``{metric}_mean`` (over
    seeds, on every test slide), ``_std`` (sample std over seeds), ``_ci_low/_high`` and
    ``_ci_method``."""
    rows = []
    for method in order:
        if method not in probs:
            continue
        prob = probs[method]
        n = len(prob.slides)
        row: dict[str, Any] = {
            "method": method,
            "n_seeds": len(prob.seeds),
            "n_test": n,
            "n_test_units": stats.n_units(prob.pred),
            "n_classes": len(prob.classes),
            "ece_bins": N_BINS,
        }
        every = np.ones((1, n))
        for metric in ["brier", "ece", *[sens_key(s) for s in SPECIFICITIES]]:
            if metric not in prob.metrics():
                continue
            values = per_seed(prob, metric, every)[:, 0]
            interval = method_interval(prob, metric)
            row[f"{metric}_mean"] = interval.estimate
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = interval.low, interval.high
            row[f"{metric}_ci_method"] = interval.kind
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["method", "n_seeds"])


HEADERS = {
    "brier": "Brier score",
    "ece": f"ECE, {N_BINS} bins (%)",
    **{
        sens_key(s): f"Sensitivity at {round(100 * s)}% specificity, threshold on test (%)"
        for s in SPECIFICITIES
    },
}


def _cell(row: Mapping[str, Any], metric: str, percent: bool) -> str:
    """`mean ± std [low, high]` (percent to one decimal, or Brier to three), `[n/a]` without
    an interval, `n/a` without a value."""
    mean = row.get(f"{metric}_mean", math.nan)
    if mean is None or pd.isna(mean):
        return "n/a"

    def fmt(v: float) -> str:
        return f"{100 * v:.1f}" if percent else f"{v:.3f}"

    std, low, high = (row.get(f"{metric}_{x}", math.nan) for x in ("std", "ci_low", "ci_high"))
    text = fmt(mean) if pd.isna(std) else f"{fmt(mean)} ± {fmt(std)}"
    if not (pd.isna(low) or pd.isna(high)):
        return f"{text} [{fmt(low)}, {fmt(high)}]"
    return (
        f"{text} {NO_CI}" if row.get(f"{metric}_ci_method") in (stats.CONSTANT, UNDEFINED) else text
    )


def calibration_display(
    table: pd.DataFrame, names: Mapping[str, str], more: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Human-readable rows: the method (its seeds when fewer than the most), then Brier
    score, ECE and, for a binary task, the sensitivity columns, then ``more`` (column ->
    header: the rates at thresholds fixed on validation, in percent)."""
    most = int(table["n_seeds"].max()) if len(table) else 0
    out = pd.DataFrame()
    out["Method"] = [
        names.get(m, m) + (f" ({count_text(str(int(k)), 'seed')})" if k < most else "")
        for m, k in zip(table.get("method", []), table.get("n_seeds", []), strict=True)
    ]
    rows = [r for _, r in table.iterrows()]
    for metric, header in {**HEADERS, **(more or {})}.items():
        if f"{metric}_mean" in table.columns:
            out[header] = [_cell(r, metric, metric != "brier") for r in rows]
    return out


def calibration_notes(
    table: pd.DataFrame, classes: Sequence[str], left_out: Sequence[str]
) -> list[str]:
    """How to read the table: each measure's definition, the CIs, an undefined interval, the
    methods left out (evaluations without per-slide probabilities)."""
    seeds = int(table["n_seeds"].max()) if len(table) else 0
    binary = len(classes) == 2
    brier = (
        f"Brier score: mean over test slides of (p - y)^2 for P({classes[1]}) (scikit-learn's "
        "brier_score_loss; 0 is perfect, 0.25 a constant 0.5)"
        if binary
        else f"Brier score: the multi-class Brier, mean over test slides of the sum over the "
        f"{len(classes)} classes of (p_c - y_c)^2 (0 is perfect, at most 2)"
    )
    notes = [
        f"mean ± std over {count_text(str(seeds), 'seed')} (sample std) [95% bootstrap CI over "
        "test slides, the metric averaged over the seeds on each of 5000 resamples], from the "
        "evaluations' per-slide probabilities; lower Brier and ECE are better",
        brier,
        f"ECE: top-label expected calibration error, {N_BINS} equal-width bins of the top "
        "probability ((0, 0.1], ..., (0.9, 1]): the slide-weighted mean of |accuracy - mean "
        "top probability| over the bins (with few test slides it is biased upwards); the bins "
        "of each seed are in reliability.csv",
    ]
    if binary:
        notes.append(
            f"sensitivity at 90% / 95% specificity, threshold on test: the highest sensitivity "
            f"for {classes[1]} among thresholds on P({classes[1]}) with specificity at least "
            "90% (95%), each seed at its own threshold, chosen on the test slides themselves: "
            "optimistic, as no threshold was fixed beforehand (the columns at a threshold "
            "fixed on validation are the honest ones)"
        )
    kinds = {str(v) for c in table.columns if c.endswith("_ci_method") for v in table[c]}
    if stats.CONSTANT in kinds or UNDEFINED in kinds:
        notes.append(
            f"{NO_CI}: no CI, every bootstrap resample gives the same value, or (sensitivity) "
            "some resamples hold no slide of a class"
        )
    if left_out:
        notes.append(
            f"not shown: {', '.join(left_out)} (their evaluation JSONs have no per-slide "
            "'probs'; rewrite them with `zoommil evaluate`)"
        )
    return notes


RELIABILITY_NOTE = (
    f"a reliability diagram's bins: per method and seed, the test slides whose top probability "
    f"falls in each of {N_BINS} equal-width bins ((bin_low, bin_high]), their mean top "
    "probability (x) and their accuracy (y); a seed's ECE is the sum over its bins of "
    "n_slides / n_test x |accuracy - mean_confidence|, and calibration.csv's ECE the mean over "
    "the seeds"
)


#: reliability.csv's first note, in place of the tables' generic one, which speaks of CIs,
#: differences and the percent of Markdown and LaTeX tables that this CSV does not have.
RELIABILITY_UNITS = (
    "in this CSV, bin_low, bin_high, mean_confidence and accuracy are fractions in [0, 1] "
    "(an empty bin: n_slides 0, no mean_confidence or accuracy)"
)


def write_reliability_csv(path: str | Path, frame: pd.DataFrame, shared: Sequence[str]) -> None:
    """``frame`` (`reliability_frame`) with a ``notes`` column: `RELIABILITY_UNITS`, what its
    rows are, then those of the tables' ``shared`` notes that are true of it (encoder,
    weights, QC), not those on AUC, which it does not hold.

    Why not `table_format.write_csv`: its first note is the tables' (CIs, differences, the
    Markdown and LaTeX tables' percent), and the figure rules import that module, so a change
    there would rerun them."""
    notes = [n for n in shared if not n.startswith("AUC n/a")]
    frame = frame.assign(notes=" | ".join([RELIABILITY_UNITS, RELIABILITY_NOTE, *notes]))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def reliability_frame(probs: Mapping[str, Probabilities], order: Sequence[str]) -> pd.DataFrame:
    """A reliability diagram's source data: per method, seed and bin of the top probability,
    the test slides in it, their mean top probability and their accuracy (empty bins: 0
    slides, no values). A seed's ECE is sum(n_slides / n_test x |accuracy - mean_confidence|)
    over its bins."""
    rows = []
    for method in order:
        if method not in probs:
            continue
        prob = probs[method]
        confidence = prob.probs.max(axis=-1)
        correct = prob.probs.argmax(axis=-1) == prob.labels[None]
        bins = confidence_bins(confidence)
        for s, seed in enumerate(prob.seeds):
            for b in range(N_BINS):
                inside = bins[s] == b
                n = int(inside.sum())
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "bin": b,
                        "bin_low": b / N_BINS,
                        "bin_high": (b + 1) / N_BINS,
                        "n_slides": n,
                        "n_test": len(prob.slides),
                        "mean_confidence": float(confidence[s, inside].mean()) if n else math.nan,
                        "accuracy": float(correct[s, inside].mean()) if n else math.nan,
                    }
                )
    columns = ["method", "seed", "bin", "bin_low", "bin_high", "n_slides", "n_test"]
    return pd.DataFrame(rows, columns=[*columns, "mean_confidence", "accuracy"])
