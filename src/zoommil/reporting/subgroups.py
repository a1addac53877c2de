"""Performance per subgroup of the test slides (site, scanner, ...): the sheet's columns that
`report: {subgroups: [...]}` names.

Why: CAMELYON16 comes from two centres, TCGA and BRIGHT from many; a method that holds over
the whole test split may not hold on each site, and the first question a reviewer asks of a
MIL benchmark is whether it does. Per method and subgroup value: the test slides (per class),
ROC AUC (binary: of the second class; more classes: the one-vs-rest macro AUC, as the main
table's) and balanced accuracy (the mean over the classes of their recall, scikit-learn's
``balanced_accuracy_score``), each as the main table's cells are: mean ± sample std over the
seeds [95% percentile bootstrap CI of the seed mean over the subgroup's test slides, or its
patients], from the evaluations' per-slide probabilities (`calibration.run_probabilities`).

Heterogeneity, per method and metric: the best minus the worst subgroup, with a bootstrap CI
(each of the two subgroups resampled on its own) and a permutation p-value for "no subgroup
differs": the subgroup values are shuffled over the test slides' patients (or slides), the
gap recomputed, and p is the share of shuffles with a gap at least the observed one. The
permutation accounts for the best and worst being picked after the fact, which the CI of
their difference does not; with two subgroups the two say the same thing.

A subgroup holding test slides of one class only has no AUC and no balanced accuracy (that
would be the recall of its one class): ``n/a (one class)``, and it is left out of the gap.
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

from zoommil.errors import ZoomMILError, first_few
from zoommil.reporting import stats
from zoommil.reporting.calibration import Probabilities, counts_interval
from zoommil.reporting.roc import auc
from zoommil.reporting.table_format import (
    NO_CI,
    count_text,
    to_latex,
    to_markdown,
    write_csv,
    write_text,
)
from zoommil.reporting.table_notes import patients_note

#: The metrics of the table, with their headers.
METRICS = {"auc": "AUC (%)", "balanced_accuracy": "Balanced accuracy (%)"}
#: Why a subgroup has no value (`n/a (...)` in its cells).
ONE_CLASS = "one class"
#: The kind of a gap row and of a subgroup row (the CSV's ``row`` column).
SUBGROUP, GAP = "subgroup", "gap"
#: Shuffles of the permutation test (seeded, so the p-values are reproducible). Their cost is
#: shuffles x subgroups x classes x seeds x test slides per method: the paired tests' 20000
#: took 6.6 of a method's 8 s at 300 test slides, 3 classes and 2 sites (2-core EPYC VM).
#: At 2000 the Monte Carlo standard error of a p of 0.05 is 0.005, and the smallest p 0.0005.
N_PERMUTATIONS = 2000
_BATCH = 1000


# --- the sheet's subgroup columns ------------------------------------------------------------


def check_columns(frame: pd.DataFrame, columns: Sequence[str], sheet: str | Path) -> None:
    """Refuse a configured subgroup column the sheet lacks (naming the columns it has) and a
    test slide with an empty cell in one (naming the slides): a subgroup table of "" or NaN
    reads as a site of its own. ``frame``: the sheet, slide ids in a ``slide_id`` column or
    the index; only its test slides (``split`` test, where it has the column) are checked."""
    if not columns:
        return
    if "slide_id" not in frame.columns:
        frame = frame.rename_axis("slide_id").reset_index()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        have = ", ".join(str(c) for c in frame.columns)
        raise ZoomMILError(
            f"report.subgroups: the slide sheet {sheet} has no column {', '.join(missing)} "
            f"(it has {have}): add it (one value per test slide, e.g. the site), or take it "
            "out of report.subgroups"
        )
    test = frame[frame["split"] == "test"] if "split" in frame.columns else frame
    for column in columns:
        empty = [str(s) for s, v in zip(test["slide_id"], test[column], strict=True) if _empty(v)]
        if empty:
            raise ZoomMILError(
                f"report.subgroups: {sheet}: {count_text(str(len(empty)), 'test slide')} "
                f"without a {column!r} value: {first_few(empty)} (fill it in: a subgroup table "
                "cannot place them)"
            )


def _empty(value: object) -> bool:
    from zoommil.io.sheet import is_missing

    return is_missing(value)


def sheet_values(sheet: str | Path | None, columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """column -> slide_id -> its value (stripped), for the configured ``columns`` of the
    slide sheet; the checks of `check_columns` first."""
    from zoommil.io.sheet import read_sheet

    if sheet is None:
        raise ZoomMILError(f"report.subgroups ({', '.join(columns)}) needs the slide sheet")
    frame = read_sheet(sheet)
    check_columns(frame, columns, sheet)
    return {
        c: {str(s): str(v).strip() for s, v in zip(frame["slide_id"], frame[c], strict=True)}
        for c in columns
    }


# --- the metrics per seed on slide multisets -------------------------------------------------


def balanced_accuracy(prob: Probabilities, counts: np.ndarray) -> np.ndarray:
    """[S, B] the mean recall over the classes with a slide in each multiset (scikit-learn's
    ``balanced_accuracy_score``) of each seed's predicted classes."""
    recall_sum = np.zeros((prob.probs.shape[0], counts.shape[0]))
    present = np.zeros(counts.shape[0])
    preds = prob.pred.preds
    for c in range(len(prob.classes)):
        is_c = (prob.labels == c).astype(np.float64)
        support = is_c @ counts.T  # [B]
        hits = ((preds == c) * is_c) @ counts.T  # [S, B]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall_sum += np.where(support > 0, hits / np.maximum(support, 1), 0.0)
        present += support > 0
    return recall_sum / np.maximum(present, 1)


PER_SEED: dict[str, Callable[[Probabilities, np.ndarray], np.ndarray]] = {
    "auc": auc,
    "balanced_accuracy": balanced_accuracy,
}


def subset(prob: Probabilities, slides: Sequence[str]) -> Probabilities:
    """``prob`` restricted to ``slides`` (its patient groups kept)."""
    index = {s: i for i, s in enumerate(prob.slides)}
    cols = [index[s] for s in slides]
    return Probabilities(prob.pred.subset(slides, prob.seeds), prob.probs[:, cols], prob.classes)


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A metric of one subgroup: seed mean, std over seeds, CI, and why it is n/a."""

    mean: float
    std: float
    low: float
    high: float
    kind: str
    note: str = ""


def metric_cell(prob: Probabilities, metric: str) -> Cell:
    """``metric`` on all slides of ``prob``: `Cell` as the main table's (`ONE_CLASS` without
    a second class)."""
    present = set(prob.labels.tolist())
    if len(present) < 2:
        return Cell(math.nan, math.nan, math.nan, math.nan, "", ONE_CLASS)
    absent = [c for i, c in enumerate(prob.classes) if i not in present]
    if metric == "auc" and absent:  # the macro AUC needs every class, as the evaluations'
        return Cell(math.nan, math.nan, math.nan, math.nan, "", f"no {', '.join(absent)} slide")
    per_seed = PER_SEED[metric]
    values = per_seed(prob, np.ones((1, len(prob.slides))))[:, 0]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    interval = counts_interval(prob, lambda counts: per_seed(prob, counts))
    return Cell(interval.estimate, std, interval.low, interval.high, interval.kind)


def subgroup_rows(
    prob: Probabilities, method: str, column: str, values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per value of ``column`` among the method's test slides, then its gap row."""
    groups = _groups(prob, values, column, method)
    rows, cells = [], {}
    for value, slides in groups.items():
        sub = subset(prob, slides)
        row: dict[str, Any] = {
            "row": SUBGROUP,
            "column": column,
            "value": value,
            "method": method,
            "n_seeds": len(prob.seeds),
            "n_test": len(slides),
            "n_test_units": stats.n_units(sub.pred),
        }
        for c, name in enumerate(prob.classes):
            row[f"n[{name}]"] = int((sub.labels == c).sum())
        for metric in METRICS:
            cell = cells.setdefault(value, {})[metric] = metric_cell(sub, metric)
            row |= _cell_columns(metric, cell)
        rows.append(row)
    rows.append(gap_row(prob, method, column, groups, cells))
    return rows


def _groups(
    prob: Probabilities, values: Mapping[str, str], column: str, method: str
) -> dict[str, list[str]]:
    """value -> the method's test slides with it, values in sorted order; a test slide without
    one (not in the sheet) is an error naming it."""
    absent = [s for s in prob.slides if _empty(values.get(s))]
    if absent:
        raise ZoomMILError(
            f"report.subgroups: {method}'s test slide(s) {first_few(absent)} have no {column!r} "
            "value in the slide sheet (fill it in, or rerun the evaluation on this sheet)"
        )
    groups: dict[str, list[str]] = {}
    for slide in prob.slides:
        groups.setdefault(values[slide], []).append(slide)
    return {v: groups[v] for v in sorted(groups)}


def _cell_columns(metric: str, cell: Cell) -> dict[str, Any]:
    return {
        f"{metric}_mean": cell.mean,
        f"{metric}_std": cell.std,
        f"{metric}_ci_low": cell.low,
        f"{metric}_ci_high": cell.high,
        f"{metric}_ci_method": cell.kind,
        f"{metric}_note": cell.note,
    }


def gap_row(
    prob: Probabilities,
    method: str,
    column: str,
    groups: Mapping[str, Sequence[str]],
    cells: Mapping[str, Mapping[str, Cell]],
) -> dict[str, Any]:
    """The heterogeneity row: per metric the best minus the worst subgroup (``_mean``), its
    bootstrap CI, the permutation p-value (``_p``) and which subgroups (``_best``,
    ``_worst``); a note where fewer than two subgroups have a value."""
    row: dict[str, Any] = {"row": GAP, "column": column, "value": "", "method": method}
    row |= {"n_seeds": len(prob.seeds), "n_test": len(prob.slides)}
    for metric in METRICS:
        defined = {v: c[metric].mean for v, c in cells.items() if not math.isnan(c[metric].mean)}
        if len(defined) < 2:
            row[f"{metric}_note"] = "fewer than two subgroups with a value"
            continue
        best, worst = max(defined, key=defined.get), min(defined, key=defined.get)
        interval = gap_interval(prob, metric, groups[best], groups[worst])
        kept = {v: groups[v] for v in defined}
        row |= {
            f"{metric}_mean": defined[best] - defined[worst],
            f"{metric}_ci_low": interval.low,
            f"{metric}_ci_high": interval.high,
            f"{metric}_ci_method": interval.kind,
            f"{metric}_p": permutation_p(prob, metric, kept),
            f"{metric}_best": best,
            f"{metric}_worst": worst,
        }
    return row


def _unit_statistic(prob: Probabilities, metric: str) -> tuple[Callable, int]:
    """(statistic of unit-index arrays [..., m] -> seed-mean metric, number of units)."""
    statistic = stats.counts_statistic(
        lambda counts: PER_SEED[metric](prob, counts).mean(axis=0),
        stats.unit_of_slide(prob.pred),
        len(prob.slides),
    )
    return statistic, stats.n_units(prob.pred)


def gap_interval(
    prob: Probabilities, metric: str, best: Sequence[str], worst: Sequence[str]
) -> stats.Interval:
    """95% percentile bootstrap CI of metric(best) - metric(worst), each subgroup's slides (or
    patients) resampled on their own (`stats.bootstrap_ci`'s resamples and seed); no interval
    where every resample agrees (`stats.CONSTANT`) or some resample lacks a class
    (``undefined``)."""
    from scipy import stats as scipy_stats

    stat_a, n_a = _unit_statistic(subset(prob, best), metric)
    stat_b, n_b = _unit_statistic(subset(prob, worst), metric)
    estimate = float(stat_a(np.arange(n_a)) - stat_b(np.arange(n_b)))
    if min(n_a, n_b) < 2:
        return stats.Interval(estimate, math.nan, math.nan, stats.NO_INTERVAL)
    with warnings.catch_warnings():  # NaN resamples: reported as undefined below
        warnings.simplefilter("ignore")
        result = scipy_stats.bootstrap(
            (np.arange(n_a), np.arange(n_b)),
            lambda a, b, axis=-1: (
                stat_a(np.moveaxis(a, axis, -1)) - stat_b(np.moveaxis(b, axis, -1))
            ),
            vectorized=True,
            paired=False,
            n_resamples=stats.N_BOOTSTRAP,
            batch=_BATCH,
            confidence_level=stats.CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(stats.SEED),
        )
    distribution = result.bootstrap_distribution
    if np.isnan(distribution).any():
        return stats.Interval(estimate, math.nan, math.nan, "undefined")
    if np.ptp(distribution) <= stats.TIES:
        return stats.Interval(estimate, math.nan, math.nan, stats.CONSTANT)
    ci = result.confidence_interval
    return stats.Interval(estimate, float(ci.low), float(ci.high), stats.BOOTSTRAP)


def permutation_p(
    prob: Probabilities, metric: str, groups: Mapping[str, Sequence[str]], seed: int = stats.SEED
) -> float:
    """Monte Carlo p-value of the gap (max - min over ``groups`` of the seed-mean metric)
    under shuffles of the subgroup values over the resampling units (a patient's slides in
    one subgroup move together; a patient in two is split by subgroup), the subgroups' unit
    counts kept: (1 + shuffles with a gap >= the observed) / (1 + shuffles)."""
    slides = [s for members in groups.values() for s in members]
    prob = subset(prob, slides)
    value_of = {s: k for k, members in enumerate(groups.values()) for s in members}
    units = stats.unit_of_slide(prob.pred)
    keys = [(i if units is None else int(units[i]), value_of[s]) for i, s in enumerate(prob.slides)]
    cluster_index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    cluster = np.array([cluster_index[k] for k in keys])  # [n] the cluster of each slide
    labels = np.array([k[1] for k in cluster_index])  # [clusters] the subgroup of each
    rng = np.random.default_rng(seed)
    observed = _gaps(prob, metric, labels[cluster][None], len(groups))[0]
    exceed, done = 0, 0
    while done < N_PERMUTATIONS:
        size = min(_BATCH, N_PERMUTATIONS - done)
        shuffled = rng.permuted(np.broadcast_to(labels, (size, len(labels))), axis=1)
        gaps = _gaps(prob, metric, shuffled[:, cluster], len(groups))
        exceed += int(np.count_nonzero(gaps >= observed - stats.TIES))
        done += size
    return (1 + exceed) / (1 + N_PERMUTATIONS)


def _gaps(prob: Probabilities, metric: str, member: np.ndarray, n_groups: int) -> np.ndarray:
    """[P] max - min over the groups of the seed-mean metric, for the subgroup of each slide
    ``member`` [P, n] (a group without a second class in a shuffle is left out of its gap, as
    the observed gap leaves out a one-class subgroup: balanced accuracy has a value there)."""
    one_hot = (prob.labels[:, None] == np.arange(len(prob.classes))).astype(np.float64)
    values = []
    for g in range(n_groups):
        counts = (member == g).astype(np.float64)
        value = PER_SEED[metric](prob, counts).mean(axis=0)
        values.append(np.where(((counts @ one_hot) > 0).sum(axis=1) < 2, np.nan, value))
    values = np.stack(values)  # [groups, P]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns: no gap, NaN (never counted)
        gaps = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    # as the observed gap: none with fewer than two groups with a value
    return np.where((~np.isnan(values)).sum(axis=0) < 2, np.nan, gaps)


def subgroup_table(
    probs: Mapping[str, Probabilities],
    order: Sequence[str],
    values: Mapping[str, Mapping[str, str]],
) -> pd.DataFrame:
    """Rows per configured column (``values``: `sheet_values`), method in ``order`` (those with
    probabilities) and subgroup value, each method's gap row after its subgroups."""
    rows = []
    for column, by_slide in values.items():
        for method in order:
            if method in probs:
                rows += subgroup_rows(probs[method], method, column, by_slide)
    classes = next(iter(probs.values())).classes if probs else ()
    columns = ["row", "column", "value", "method", "n_seeds", "n_test", "n_test_units"]
    columns += [f"n[{c}]" for c in classes]
    for metric in METRICS:
        columns += [
            f"{metric}_{x}"
            for x in ("mean", "std", "ci_low", "ci_high", "ci_method", "note", "p", "best", "worst")
        ]
    return pd.DataFrame(rows, columns=columns)


# --- display and notes -----------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _metric_text(row: Mapping[str, Any], metric: str) -> str:
    """`mean ± std [low, high]` in percent, `[n/a]` without an interval, `n/a (why)`."""
    mean = row.get(f"{metric}_mean")
    if mean is None or pd.isna(mean):
        note = row.get(f"{metric}_note")
        return f"n/a ({note})" if isinstance(note, str) and note else "n/a"
    std, low, high = (row.get(f"{metric}_{x}") for x in ("std", "ci_low", "ci_high"))
    text = _pct(mean) if pd.isna(std) else f"{_pct(mean)} ± {_pct(std)}"
    if not (pd.isna(low) or pd.isna(high)):
        return f"{text} [{_pct(low)}, {_pct(high)}]"
    return f"{text} {NO_CI}" if row.get(f"{metric}_ci_method") else text


def _gap_text(row: Mapping[str, Any], metric: str) -> str:
    """`+8.1 [-3.2, +19.0], p = 0.21 (utrecht - radboud)` in percentage points."""
    gap = row.get(f"{metric}_mean")
    if gap is None or pd.isna(gap):
        note = row.get(f"{metric}_note")
        return f"n/a ({note})" if isinstance(note, str) and note else "n/a"
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    ci = NO_CI if pd.isna(low) or pd.isna(high) else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
    p = float(row[f"{metric}_p"])
    p_text = f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"
    return f"{100 * gap:+.1f} {ci}, {p_text} ({row[f'{metric}_best']} - {row[f'{metric}_worst']})"


def _slides_text(row: Mapping[str, Any], classes: Sequence[str]) -> str:
    per = ", ".join(f"{c} {int(row[f'n[{c}]'])}" for c in classes if f"n[{c}]" in row)
    return f"{int(row['n_test'])} ({per})" if per else str(int(row["n_test"]))


def subgroup_display(
    table: pd.DataFrame, classes: Sequence[str], names: Mapping[str, str]
) -> pd.DataFrame:
    """Human-readable rows: subgroup (`site = utrecht`, or the gap), method, test slides per
    class, then AUC and balanced accuracy in percent (the gap in percentage points)."""
    out = []
    for _, row in table.iterrows():
        gap = row["row"] == GAP
        line = {
            "Subgroup": f"{row['column']}: best - worst"
            if gap
            else f"{row['column']} = {row['value']}",
            "Method": names.get(row["method"], row["method"]),
            "Test slides": "" if gap else _slides_text(row, classes),
        }
        for metric, header in METRICS.items():
            line[header] = _gap_text(row, metric) if gap else _metric_text(row, metric)
        out.append(line)
    return pd.DataFrame(out, columns=["Subgroup", "Method", "Test slides", *METRICS.values()])


def subgroup_notes(
    table: pd.DataFrame, classes: Sequence[str], left_out: Sequence[str]
) -> list[str]:
    """How to read the table."""
    seeds = int(pd.to_numeric(table["n_seeds"]).max()) if len(table) else 0
    auc_text = (
        f"ROC AUC of P({classes[1]})"
        if len(classes) == 2
        else "the macro mean of the one-vs-rest ROC AUCs (as the main table's)"
    )
    notes = [
        f"per subgroup of the test slides (the slide sheet's column named): mean ± std over "
        f"{count_text(str(seeds), 'seed')} (sample std) [95% bootstrap CI over the subgroup's "
        f"test slides, the metric averaged over the seeds on each of {stats.N_BOOTSTRAP} "
        "resamples], from the "
        f"evaluations' per-slide probabilities; AUC: {auc_text}; balanced accuracy: the mean "
        "over the classes of their recall; test slides: the subgroup's, per class",
        "best - worst: the gap between the subgroups with the highest and the lowest value, "
        "in percentage points, with a 95% bootstrap CI (each of the two subgroups resampled on "
        f"its own) and the p-value of {N_PERMUTATIONS} shuffles of the subgroup values over "
        "the test slides (no subgroup differs; it allows for the best and worst being picked "
        "after the fact, which the CI does not)",
    ]
    if (table.filter(like="_note") == ONE_CLASS).any().any():
        notes.append(
            f"n/a ({ONE_CLASS}): the subgroup's test slides are all of one class, so AUC and "
            "balanced accuracy are undefined (the latter would be that class's recall); it is "
            "left out of the gap"
        )
    if table["auc_note"].astype(str).str.startswith("no ").any():
        notes.append(
            "n/a (no X slide): the one-vs-rest macro AUC needs a test slide of every class in "
            "the subgroup (as the evaluations' AUC); balanced accuracy averages the classes it has"
        )
    kinds = {str(v) for c in table.columns if c.endswith("_ci_method") for v in table[c]}
    if kinds & {stats.CONSTANT, "undefined", stats.NO_INTERVAL}:
        notes.append(
            f"{NO_CI}: no CI, every bootstrap resample gives the same value, some resamples hold "
            "no slide of a class (AUC undefined there), or a subgroup has a single slide"
        )
    if left_out:
        notes.append(
            f"not shown: {', '.join(left_out)} (their evaluation JSONs have no per-slide "
            "'probs'; rewrite them with `zoommil evaluate`)"
        )
    return notes


def write_tables(
    outputs: Mapping[str, str | Path],
    probs: tuple[Mapping[str, Probabilities], Sequence[str]],
    order: Sequence[str],
    values: Mapping[str, Mapping[str, str]],
    names: Mapping[str, str],
    shared: Sequence[str],
    dataset: str,
) -> pd.DataFrame:
    """subgroups.{csv,md,tex} (``outputs``' subgroups_csv, _md, _tex) from ``probs``
    (`calibration.run_probabilities`: the methods' probabilities and those without any),
    ``shared``: the tables' notes that hold here too (encoder, weights, QC)."""
    by_method, left_out = probs
    table = subgroup_table(by_method, order, values)
    classes = next(iter(by_method.values())).classes if by_method else ()
    notes = [*subgroup_notes(table, classes, left_out), *shared]
    notes += patients_note(table, "n_test", "n_test_units")
    title = f"Performance per subgroup on {dataset} ({', '.join(values)})"
    display = subgroup_display(table, classes, names)
    write_csv(outputs["subgroups_csv"], table, notes)
    write_text(outputs["subgroups_md"], to_markdown(display, title, notes, ()))
    write_text(
        outputs["subgroups_tex"], to_latex(display, title, notes, (), f"tab:{dataset}-subgroups")
    )
    return table
