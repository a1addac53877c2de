"""Uncertainty of the benchmark's numbers: bootstrap CIs over test slides, paired comparisons.

Why: with a few test slides one slide moves accuracy by several points, and mean +- std over
seeds says nothing about that. Every statistic here treats the *slide* as the unit that is
resampled or permuted, and the seeds of a method as repeated measurements of it. Where the
test slides carry patient ids (`with_patients`: the sheet's `patient` column) the unit is the
*patient* instead: a cluster bootstrap and permutation that move all slides of a patient
together (a slide without a patient is its own cluster). A patient's slides are correlated
(same tissue, same scanner session, the same model errors), and resampling them as
independent made the intervals too narrow: on 30 made-up patients of 1-4 slides, accuracy
CIs ~30% narrower than the patient bootstrap's.

- the metric of a method on a set of slides is the mean over its seeds of the metric computed
  on that set (for accuracy this is the mean over slides of the seed-averaged per-slide
  correctness; for weighted F1 the metric is recomputed on the set for each seed);
- a 95% CI is the percentile bootstrap of that statistic over slides resampled with
  replacement (`scipy.stats.bootstrap`, fixed seed). Where every resample gives the same value
  (every seed right on every test slide, or wrong on every one) the percentile interval is a
  zero-width point that claims certainty: accuracy then gets the exact Clopper-Pearson
  interval of n right (or 0 right) of its n test slides, and weighted F1, which is no
  binomial proportion, no interval (NaN, printed ``[n/a]`` with a note);
- a comparison of A with B uses the slides both were tested on and the seeds both have: the
  paired-bootstrap CI resamples the same slides for both, and the p-value is a paired
  permutation test (`scipy.stats.permutation_test`, "samples"): under the null hypothesis the
  two methods are exchangeable on each slide, so A's and B's predictions of a slide (all seeds)
  are swapped (with patients: a patient's slides, together). It is exact (every one of the
  2^n swaps) up to ``EXACT_MAX_SLIDES`` slides (or patients), else a seeded Monte Carlo.
  Two-sided; p = 1 when the difference is 0 (ties within `TIES`).

Everything is deterministic: the same inputs give the same intervals and p-values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoommil.io.sheet import is_missing

CONFIDENCE = 0.95
N_BOOTSTRAP = 5000
N_PERMUTATIONS = 20000
EXACT_MAX_SLIDES = 16  # 2^16 = 65536 swaps: exact permutation p-values up to here (units)
SEED = 0
METRICS = ("weighted_f1", "accuracy")
#: Values of a statistic closer than this are one value: the seed mean adds each slide set's
#: per-seed fractions in its own order, which leaves equal accuracies up to ~1e-16 apart (a
#: real difference is at least 1 / (slides x seeds), far above it).
TIES = 1e-9


@dataclass(frozen=True)
class Predictions:
    """One method's test predictions: class indices [n_seeds, n_slides] and the labels."""

    slides: tuple[str, ...]
    seeds: tuple[int, ...]
    labels: np.ndarray  # [n_slides] int
    preds: np.ndarray  # [n_seeds, n_slides] int
    n_classes: int
    #: The resampling unit of each slide (`with_patients`); None: every slide its own.
    groups: tuple[str, ...] | None = None

    def subset(self, slides: Sequence[str], seeds: Sequence[int]) -> Predictions:
        """The same predictions restricted to (and ordered by) ``slides`` and ``seeds``."""
        s_index = {s: i for i, s in enumerate(self.slides)}
        k_index = {k: i for i, k in enumerate(self.seeds)}
        cols = [s_index[s] for s in slides]
        rows = [k_index[k] for k in seeds]
        groups = None if self.groups is None else tuple(self.groups[c] for c in cols)
        return Predictions(
            tuple(slides),
            tuple(seeds),
            self.labels[cols],
            self.preds[np.ix_(rows, cols)],
            self.n_classes,
            groups,
        )


def patient_key(value: object) -> str | None:
    """A patient id as the statistics group slides by: stripped and case-folded (a hand-typed
    ``tcga-ab-1234`` is the same patient as ``TCGA-AB-1234 ``; merging two clusters only
    widens an interval); None for an empty or NA/NaN/none cell (no patient), as the sheet's
    own check reads it (`zoommil.io.sheet.is_missing`)."""
    return None if is_missing(value) else str(value).strip().casefold()


def with_patients(pred: Predictions, patients: Mapping[str, object]) -> Predictions:
    """``pred`` resampled by patient: ``patients`` maps slide_id -> patient id (the sheet's
    `patient` column); a slide without one (absent, empty, NA) is its own cluster."""
    groups = []
    for slide in pred.slides:
        key = patient_key(patients.get(slide, ""))
        groups.append(f"slide:{slide}" if key is None else f"patient:{key}")
    return Predictions(
        pred.slides, pred.seeds, pred.labels, pred.preds, pred.n_classes, tuple(groups)
    )


def unit_of_slide(pred: Predictions) -> np.ndarray | None:
    """[n_slides] the resampling unit (patient) of each slide, units numbered in order of
    their first slide; None where every slide is its own unit."""
    if pred.groups is None or len(set(pred.groups)) == len(pred.groups):
        return None
    index = {g: i for i, g in enumerate(dict.fromkeys(pred.groups))}
    return np.array([index[g] for g in pred.groups], dtype=np.int64)


def n_units(pred: Predictions) -> int:
    """How many units the statistics resample: patients (and slides without one), or slides."""
    return len(set(pred.groups)) if pred.groups is not None else len(pred.slides)


def predictions_from_evals(records: Sequence[Mapping[str, Any]]) -> Predictions:
    """Collect the per-slide predictions of one method's evaluation JSONs (one per seed).

    Each record is a `zoommil evaluate` result: ``seed``, ``classes`` and ``predictions`` (a
    list of {slide_id, label, pred}); every seed must cover the same slides.
    """
    if not records:
        raise ValueError("no evaluation records")
    classes = list(records[0]["classes"])
    index = {c: i for i, c in enumerate(classes)}
    first = sorted(p["slide_id"] for p in records[0]["predictions"])
    labels: dict[str, int] = {}
    rows = []
    seeds = []
    for record in sorted(records, key=lambda r: int(r["seed"])):
        if list(record["classes"]) != classes:
            raise ValueError(f"seed {record['seed']}: class list differs from the other seeds'")
        by_slide = {p["slide_id"]: p for p in record["predictions"]}
        if sorted(by_slide) != first:
            raise ValueError(f"seed {record['seed']}: test slides differ from the other seeds'")
        for slide, p in by_slide.items():
            labels.setdefault(slide, index[p["label"]])
        rows.append([index[by_slide[s]["pred"]] for s in first])
        seeds.append(int(record["seed"]))
    return Predictions(
        tuple(first),
        tuple(seeds),
        np.array([labels[s] for s in first], dtype=np.int64),
        np.array(rows, dtype=np.int64).reshape(len(seeds), len(first)),
        len(classes),
    )


# --- metrics on many slide sets at once ---------------------------------------------------


def accuracy(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Accuracy over the last axis: labels [..., n], preds [..., n] -> [...]."""
    return (labels == preds).mean(axis=-1)


def weighted_f1(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's ``f1_score(average="weighted", zero_division=0)`` over the last axis.

    Vectorised so that thousands of resampled slide sets cost one numpy pass.
    """
    labels, preds = np.broadcast_arrays(labels, preds)
    n = labels.shape[-1]
    total = np.zeros(labels.shape[:-1], dtype=np.float64)
    for c in range(n_classes):
        is_true, is_pred = labels == c, preds == c
        support = is_true.sum(axis=-1)
        tp = (is_true & is_pred).sum(axis=-1)
        denominator = support + is_pred.sum(axis=-1)
        f1 = np.divide(2.0 * tp, denominator, out=np.zeros(total.shape), where=denominator > 0)
        total += support * f1
    return total / n


def seed_mean_metric(pred: Predictions, metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric on the slide sets ``idx`` [..., k] (indices into pred.slides), averaged over
    the seeds: one value per slide set.

    Both metrics are functions of confusion counts, so a slide set enters only through how
    often it draws each slide: a [sets, slides] count matrix times per-slide indicators, one
    matrix product, where gathering every seed's predictions for every set took most of
    Table 3's time (53 s at 266 test slides). The counts are exact in float64, so the values
    are those of `accuracy` and `weighted_f1` on the gathered arrays, bit for bit."""
    idx = np.asarray(idx)
    lead, k = idx.shape[:-1], idx.shape[-1]
    counts = slide_counts(idx.reshape(-1, k), len(pred.slides))  # [B, n]
    return seed_mean_from_counts(pred, metric, counts).reshape(lead)


def unit_metric(
    pred: Predictions, metric: str, units: np.ndarray | None
) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic of `bootstrap_ci` over resampling units: unit-index arrays [..., m] ->
    the seed-mean metric of the slides they hold (``units``: `unit_of_slide`; None: slides).
    A slide is drawn as often as its unit: a gather of the unit counts."""
    if units is None:
        return lambda idx: seed_mean_metric(pred, metric, idx)
    return counts_statistic(
        lambda counts: seed_mean_from_counts(pred, metric, counts), units, len(pred.slides)
    )


def counts_statistic(
    of_counts: Callable[[np.ndarray], np.ndarray], units: np.ndarray | None, n_slides: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic of `bootstrap_ci` from ``of_counts``, a value per slide multiset
    (counts [B, n] -> [B]): unit-index arrays [..., m] -> their values. A slide is drawn as
    often as its unit (``units``: `unit_of_slide`; None: each of the ``n_slides`` its own),
    a gather of the unit counts. The tables' metrics and the calibration measures share it."""
    n_units = n_slides if units is None else int(units.max()) + 1

    def statistic(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        lead, m = idx.shape[:-1], idx.shape[-1]
        counts = slide_counts(idx.reshape(-1, m), n_units)
        counts = counts if units is None else counts[:, units]  # [B, n]
        return of_counts(counts).reshape(lead)

    return statistic


def seed_mean_from_counts(pred: Predictions, metric: str, counts: np.ndarray) -> np.ndarray:
    """The seed-mean metric of each slide multiset ``counts`` [B, n] (how often each slide
    is drawn; a row's total is its size, which varies where whole patients are drawn): [B]."""
    k = counts.sum(axis=1)  # [B]
    if metric == "accuracy":
        correct = (pred.preds == pred.labels[None]).astype(np.float64)  # [S, n]
        values = (correct @ counts.T) / k  # [S, B]
    elif metric == "weighted_f1":
        values = _weighted_f1_from_counts(pred, counts, k)
    else:
        raise ValueError(f"unknown metric {metric!r} (use {', '.join(METRICS)})")
    return values.mean(axis=0)


def slide_counts(idx: np.ndarray, n_slides: int) -> np.ndarray:
    """How often each of ``n_slides`` slides is drawn in each row of ``idx`` [B, k]: [B, n]."""
    rows = idx.shape[0]
    flat = (idx + n_slides * np.arange(rows)[:, None]).ravel()
    counts = np.bincount(flat, minlength=rows * n_slides)
    return counts.reshape(rows, n_slides).astype(np.float64)


def _weighted_f1_from_counts(pred: Predictions, counts: np.ndarray, k: np.ndarray) -> np.ndarray:
    """`weighted_f1` per seed and slide set, [S, B], from the slide counts [B, n] and each
    set's size ``k`` [B]."""
    is_true = pred.labels[None, :] == np.arange(pred.n_classes)[:, None]  # [C, n]
    total = np.zeros((pred.preds.shape[0], counts.shape[0]))
    for c in range(pred.n_classes):
        is_pred = (pred.preds == c).astype(np.float64)  # [S, n]
        support = (is_true[c].astype(np.float64) @ counts.T)[None]  # [1, B]
        tp = (is_pred * is_true[c]) @ counts.T  # [S, B]
        denominator = support + is_pred @ counts.T
        f1 = np.divide(2.0 * tp, denominator, out=np.zeros(total.shape), where=denominator > 0)
        total += support * f1
    return total / k


# --- intervals and tests -------------------------------------------------------------------


#: How an interval was made (`Interval.kind`, the tables' ``{metric}_ci_method``).
BOOTSTRAP = "bootstrap"  # the percentile bootstrap over test slides
CLOPPER_PEARSON = "clopper_pearson"  # exact binomial, for accuracy where every resample agrees
CONSTANT = "constant"  # every resample gives the same value: no interval (NaN bounds)
NO_INTERVAL = "none"  # fewer than two slides: nothing to resample
UNDEFINED = "undefined"  # some resample has no value (an AUC without a class): no interval


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    kind: str = BOOTSTRAP
    #: Resamples left out, their statistic undefined (`bootstrap_ci`'s ``drop_undefined``).
    dropped: int = 0


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_slides: int,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    drop_undefined: bool = False,
) -> Interval:
    """Percentile bootstrap CI of ``statistic(idx)`` over slides resampled with replacement.

    ``statistic`` maps slide-index arrays [..., n] to one value per array (or unit-index
    arrays, ``n_slides`` then the number of units: `unit_metric`). One slide has no
    interval (NaN bounds, shown as none), not a zero-width one that would claim certainty.
    Where every resample gives the same value (within `TIES`: float rounding) the
    (zero-width) interval is returned with kind `CONSTANT`, so that the caller can decide
    what to report instead. With ``drop_undefined`` the resamples where the statistic is NaN
    (an AUC without a slide of some class) are left out and counted (`Interval.dropped`),
    the percentiles taken of the others (NaN bounds where none is left).
    """
    # imported on use: scipy.stats is slow to import and probes sys.modules for torch
    from scipy import stats

    idx = np.arange(n_slides)
    estimate = float(statistic(idx))
    if n_slides < 2:
        return Interval(estimate, math.nan, math.nan, NO_INTERVAL)
    result = stats.bootstrap(
        (idx,),
        lambda sample, axis=-1: statistic(np.moveaxis(sample, axis, -1)),
        vectorized=True,
        n_resamples=n_resamples,
        batch=1000,
        confidence_level=confidence,
        method="percentile",
        rng=_rng(seed),
    )
    ci = result.confidence_interval
    distribution = result.bootstrap_distribution
    undefined = np.isnan(distribution)
    if drop_undefined and undefined.any():
        kept = distribution[~undefined]
        dropped = int(undefined.sum())
        if not len(kept):
            return Interval(estimate, math.nan, math.nan, BOOTSTRAP, dropped)
        tail = 100 * (1 - confidence) / 2
        low, high = np.percentile(kept, [tail, 100 - tail])
        kind = CONSTANT if np.ptp(kept) <= TIES else BOOTSTRAP
        return Interval(estimate, float(low), float(high), kind, dropped)
    constant = np.ptp(distribution) <= TIES
    return Interval(estimate, float(ci.low), float(ci.high), CONSTANT if constant else BOOTSTRAP)


def clopper_pearson(right: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) binomial interval of ``right`` successes in ``n`` trials:
    for n of n, [((1 - confidence) / 2) ** (1 / n), 1]."""
    from scipy import stats

    ci = stats.binomtest(right, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def method_ci(pred: Predictions, metric: str, **kwargs: Any) -> Interval:
    """Seed-mean ``metric`` of one method with its 95% CI over test slides.

    The percentile bootstrap, except where every resample gives the same value (all seeds
    right on every test slide, or wrong on every one: the score at 100% or 0%; or every slide
    right for the same number of seeds). Its zero-width interval would claim certainty from a
    handful of slides, so accuracy at 0 or 100% gets the Clopper-Pearson interval of its n
    test slides (the slide is the unit, as in the bootstrap; with patients, n is the number of
    patients: n slides of fewer patients are not n independent trials), and any other case no
    interval (NaN, kind `CONSTANT`): weighted F1 is not a binomial proportion with an exact
    interval. With patient ids (`with_patients`) the bootstrap resamples patients.
    """
    statistic = unit_metric(pred, metric, unit_of_slide(pred))
    interval = bootstrap_ci(statistic, n_units(pred), **kwargs)
    if interval.kind != CONSTANT:
        return interval
    if metric == "accuracy" and interval.estimate in (0.0, 1.0):
        n = n_units(pred)
        confidence = kwargs.get("confidence", CONFIDENCE)
        low, high = clopper_pearson(round(interval.estimate * n), n, confidence)
        return Interval(interval.estimate, low, high, CLOPPER_PEARSON)
    return Interval(interval.estimate, math.nan, math.nan, CONSTANT)


def paired(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """A and B on the slides and seeds they share (an error when they share none)."""
    slides = sorted(set(a.slides) & set(b.slides))
    seeds = sorted(set(a.seeds) & set(b.seeds))
    if not slides:
        raise ValueError("the two methods share no test slide")
    if not seeds:
        raise ValueError("the two methods share no seed")
    a, b = a.subset(slides, seeds), b.subset(slides, seeds)
    if not np.array_equal(a.labels, b.labels):
        raise ValueError("the two methods disagree on the labels of their test slides")
    return a, b


@dataclass(frozen=True)
class Comparison:
    metric: str
    difference: float  # A - B
    low: float
    high: float
    p_value: float
    exact: bool
    n_slides: int
    n_seeds: int
    ci_kind: str = BOOTSTRAP
    n_units: int = 0  # what was resampled and swapped: patients (slides without one), or slides


def at_monte_carlo_floor(p: float, exact: bool, n_resamples: int = N_PERMUTATIONS) -> bool:
    """Whether a Monte Carlo p is the smallest it can be, 2 / (n_resamples + 1) two-sided (no
    swap reached the observed difference): p is then at most that, not measured to be it."""
    return not exact and not math.isnan(p) and p <= 2.0 / (n_resamples + 1) * (1 + 1e-9)


def permutation_p(
    a: Predictions,
    b: Predictions,
    metric: str,
    n_resamples: int = N_PERMUTATIONS,
    seed: int = SEED,
) -> tuple[float, bool]:
    """Two-sided paired permutation p-value of the seed-mean ``metric`` difference A - B.

    A and B must already be paired (same slides, seeds, labels). The slides (with patient
    ids: the patients, `unit_of_slide`) are encoded as indices into the concatenation [A | B],
    so that the test's within-pair swap moves a slide's (a patient's) predictions (all seeds)
    from one method to the other. Fewer than two units (the others excluded upstream) are not
    tested: NaN, shown as n/a.
    """
    from scipy import stats

    n = n_units(a)
    if n < 2:
        return math.nan, True
    both = Predictions(
        a.slides + b.slides,
        a.seeds,
        np.concatenate([a.labels, b.labels]),
        np.concatenate([a.preds, b.preds], axis=1),
        a.n_classes,
    )
    units = unit_of_slide(a)
    if units is not None:  # A's units, then B's: unit u of B is u + m
        units = np.concatenate([units, units + n])
    metric_of = unit_metric(both, metric, units)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
        return metric_of(x) - metric_of(y)

    exact = n <= EXACT_MAX_SLIDES
    result = stats.permutation_test(
        (np.arange(n), np.arange(n) + n),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else n_resamples,
        batch=4096,
        alternative="two-sided",
        rng=_rng(seed),
    )
    return two_sided_p(result.null_distribution, float(result.statistic), exact), exact


def two_sided_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """scipy's two-sided permutation p (twice the smaller tail; +1 on both counts of a Monte
    Carlo one) with the values of ``null`` within `TIES` of ``observed`` counted as ties.
    scipy's tolerance is relative to ``observed``: a difference of 0 left as float noise
    (1e-16 either side) gave p = 0.5 for two methods right on the same slides."""
    add = 0 if exact else 1
    below = np.count_nonzero(null <= observed + TIES) + add
    above = np.count_nonzero(null >= observed - TIES) + add
    return float(min(1.0, 2 * min(below, above) / (len(null) + add)))


def compare(
    a: Predictions, b: Predictions, metric: str, seed: int = SEED, **kwargs: Any
) -> Comparison:
    """Paired difference A - B in ``metric``: estimate, 95% paired-bootstrap CI, p-value.

    Where every resample gives the same difference (the methods right on the same slides for
    the same seeds, say) there is no interval (NaN bounds, kind `CONSTANT`): a zero-width
    ``[+0.0, +0.0]`` would claim certainty from a handful of slides, as for one method.
    With patient ids on A (`with_patients`) the bootstrap and the swaps move whole patients.
    """
    a, b = paired(a, b)
    units = unit_of_slide(a)
    metric_a, metric_b = unit_metric(a, metric, units), unit_metric(b, metric, units)
    ci = bootstrap_ci(lambda idx: metric_a(idx) - metric_b(idx), n_units(a), seed=seed, **kwargs)
    low, high = (math.nan, math.nan) if ci.kind == CONSTANT else (ci.low, ci.high)
    p, exact = permutation_p(a, b, metric, seed=seed)
    n_slides, n_seeds = len(a.slides), len(a.seeds)
    # a zero difference left as float noise (the seeds summed in another order) read -0.0
    difference = 0.0 if abs(ci.estimate) <= TIES else ci.estimate
    return Comparison(
        metric, difference, low, high, p, exact, n_slides, n_seeds, ci.kind, n_units(a)
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the given tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
