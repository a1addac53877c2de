"""The tables' numbers as DataFrames: Tables 1-4 and the paired comparison.

A method's metrics are the mean and std over its seeds, with a 95% bootstrap CI over test
slides (`zoommil.reporting.stats`; AUC's from the per-slide probabilities, `roc`); its costs
are TFLOPs and s/slide per timed device as mean +- std over the slides. The comparison pairs
the reference (ZoomMIL) with every baseline and ablation over the slides both were tested on
(weighted F1 and accuracy: no AUC, whose paired permutation test is not built). Formatting
is `zoommil.reporting.table_format`'s job, the notes under a table `table_notes`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.recipe import format_mags, method_mags
from zoommil.reporting import evalcheck, results, roc, stats
from zoommil.reporting.names import display_name
from zoommil.workflow.trainconfig import model_defaults, models_root

METRICS = ("weighted_f1", "accuracy", "auc")
CI_METRICS = stats.METRICS  # metrics with a bootstrap CI over test slides and paired tests
#: AUC's CI comes from the per-slide probabilities (`roc.auc_interval`); its columns follow
#: all others in the main and ablation CSVs, whose earlier columns users' scripts index.
#: ``auc_ci_dropped``: the resamples left out, AUC undefined on them (`roc.auc_interval`).
AUC_CI_COLUMNS = ("auc_ci_low", "auc_ci_high", "auc_ci_method", "auc_ci_dropped")
#: The ZoomMIL components the reference row of Table 4 names.
REFERENCE_KEYS = ("selection", "attention", "aggregation")
#: The timed devices, in column order, with their column headers.
TIMING_HEADERS = {
    "cpu1": "CPU 1 thread (s/slide)",
    "cpu": "CPU all cores (s/slide)",
    "gpu": "GPU (s/slide)",
}


def summarize_runs(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for a single seed: one value has no spread, and a
    0.0 would read as "no variation over seeds") per method and metric, over the seeds where
    the metric has a value (`{metric}_n` of them; an AUC can be undefined for a seed);
    `n_seeds`: the seeds with at least one metric."""
    frame = pd.DataFrame(list(records))
    rows = []
    for method, group in frame.groupby("method", sort=False):
        valid = group[list(METRICS)].astype(float).notna()
        row: dict[str, Any] = {"method": method, "n_seeds": int(valid.any(axis=1).sum())}
        for metric in METRICS:
            values = group[metric].astype(float).dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{metric}_n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def full_seeds(summary: pd.DataFrame) -> int:
    """A table's full number of seeds as the evaluations show it: the most any of its rows
    has (per table: `ablations.seeds` may differ from `train.seeds`)."""
    if "n_seeds" not in summary.columns or summary.empty:
        return 0
    counts = pd.to_numeric(summary["n_seeds"], errors="coerce").dropna()
    return int(counts.max()) if len(counts) else 0


def _test_predictions(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """An evaluation record with top-level `classes` and `predictions`, else None (a
    train-style metrics.json nests them under `test`)."""
    if record.get("predictions") is None and isinstance(record.get("test"), Mapping):
        top = {k: record.get(k) for k in ("classes", "seed", results.SOURCE)}
        record = {**record["test"], **top}
    return record if record.get("predictions") and record.get("classes") else None


def run_predictions(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    patients: Mapping[str, str] | None = None,
) -> dict[str, stats.Predictions]:
    """Per-slide predictions of every method whose evaluation JSONs all carry them; a
    malformed file, one whose scalar metrics are not those of its predictions (the tables'
    means come from the scalars, their CIs from the predictions), or seeds that disagree,
    is an error naming the files. With ``patients`` (slide_id -> patient, the sheet's
    column) the CIs and tests resample patients (`stats.with_patients`)."""
    out = {}
    for method, records in runs.items():
        usable = [_test_predictions(r) for r in records]
        if usable and all(usable):
            for record, data in zip(usable, records, strict=True):
                evalcheck.check_predictions(record)
                evalcheck.check_scalars(record, data)
            try:
                out[method] = stats.predictions_from_evals(usable)
            except ValueError as error:
                files = ", ".join(evalcheck.source(r) for r in usable)
                raise ZoomMILError(f"{method} ({files}): {error}") from None
            if patients:
                out[method] = stats.with_patients(out[method], patients)
    return out


def add_intervals(
    summary: pd.DataFrame,
    preds: Mapping[str, stats.Predictions],
    probs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Summary plus `{metric}_ci_low/high` (95% CI over test slides, `stats.method_ci`),
    `{metric}_ci_method` (how it was made: `stats.Interval.kind`; empty without predictions),
    `n_test` and `n_test_units` (what the CI resamples: the test slides' patients, a slide
    without one counting as its own; `n_test` without patient ids), then `AUC_CI_COLUMNS`
    from ``probs`` (`calibration.run_probabilities`: method -> its per-slide probabilities;
    empty for a method without them, or whose test slides lack a class)."""
    summary = summary.copy()
    columns = [f"{m}_ci_{b}" for m in CI_METRICS for b in ("low", "high")]
    for column in [*columns, "n_test", "n_test_units"]:
        summary[column] = math.nan
    for metric in CI_METRICS:
        summary[f"{metric}_ci_method"] = ""
    summary["auc_ci_low"], summary["auc_ci_high"], summary["auc_ci_method"] = math.nan, math.nan, ""
    summary["auc_ci_dropped"] = math.nan
    for i, method in enumerate(summary["method"]):
        if method not in preds:
            continue
        summary.loc[i, "n_test"] = len(preds[method].slides)
        summary.loc[i, "n_test_units"] = stats.n_units(preds[method])
        for metric in CI_METRICS:
            interval = stats.method_ci(preds[method], metric)
            summary.loc[i, f"{metric}_ci_low"] = interval.low
            summary.loc[i, f"{metric}_ci_high"] = interval.high
            summary.loc[i, f"{metric}_ci_method"] = interval.kind
        if probs and method in probs:
            interval = roc.auc_interval(probs[method])
            values = [interval.low, interval.high, interval.kind, interval.dropped]
            summary.loc[i, list(AUC_CI_COLUMNS)] = values
    return summary


def _auc_ci_last(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with `AUC_CI_COLUMNS` (where present) after every other column."""
    last = [c for c in AUC_CI_COLUMNS if c in frame.columns]
    return frame[[c for c in frame.columns if c not in last] + last]


def main_table(
    summary: pd.DataFrame,
    methods: Mapping[str, Mapping[str, Any]],
    mags: Sequence[float],
    flops: Mapping[str, Mapping[str, float]],
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> pd.DataFrame:
    """Tables 1-3: one row per configured method, in config order."""
    by_method = summary.set_index("method")
    rows = []
    for method, spec in methods.items():
        row: dict[str, Any] = {
            "method": method,
            "name": display_name(method, spec),
            "arch": spec.get("arch", method),
            "mags": format_mags(method_mags(method, spec, mags)),
        }
        if method in by_method.index:
            row.update(by_method.loc[method].to_dict())
        row["tflops"] = flops.get(method, {}).get("tflops", math.nan)
        row["tflops_sd"] = flops.get(method, {}).get("tflops_sd", math.nan)
        row["patches_per_slide"] = flops.get(method, {}).get("patches", math.nan)
        for device in TIMING_HEADERS:
            timing = timings.get(device, {}).get(method, {})
            row[f"{device}_s_per_slide"] = timing.get("seconds", math.nan)
            row[f"{device}_s_per_slide_sd"] = timing.get("seconds_sd", math.nan)
            row[f"{device}_n_slides"] = timing.get("n_slides", math.nan)
            row[f"{device}_slides_per_hour"] = timing.get("slides_per_hour", math.nan)
        rows.append(row)
    return _auc_ci_last(pd.DataFrame(rows))


@cache
def zoommil_defaults() -> dict[str, Any]:
    """ZoomMIL's constructor defaults (from its source: no torch), ``arch`` included."""
    return {"arch": "zoommil", **model_defaults(models_root())["zoommil"]}


def ablation_label(spec: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[str, str]:
    """(component, variant) of an ablation: the ZoomMIL kwargs that differ from the reference,
    each side completed with the model's defaults (a default written out is no change)."""
    defaults = zoommil_defaults()
    full_ref = {**defaults, **reference}
    full = {**defaults, **spec}
    changed = [k for k in sorted(set(full) | set(full_ref)) if full.get(k) != full_ref.get(k)]
    if not changed:
        return "reference", ", ".join(f"{k}={full[k]}" for k in REFERENCE_KEYS)
    return ", ".join(changed), ", ".join(f"{k}={full.get(k)}" for k in changed)


def method_names(
    methods: Mapping[str, Mapping[str, Any]],
    ablations: Mapping[str, Mapping[str, Any]],
    reference: str | None,
) -> dict[str, str]:
    """The names the per-class and comparison tables give their rows: a method its paper's
    (`display_name`), an ablation its architecture's and what it changes against the
    reference, as Table 4's variant column says it ("ZoomMIL, selection=random"): its config
    id (zoommil_random) said nothing to a reader. One that changes nothing keeps its id."""
    names = {method: display_name(method, spec) for method, spec in methods.items()}
    ref_spec = methods.get(reference, {}) if reference else {}
    for method, spec in ablations.items():
        component, variant = ablation_label(spec, ref_spec)
        arch = display_name(str(spec.get("arch", "zoommil")))
        names[method] = display_name(method) if component == "reference" else f"{arch}, {variant}"
    return names


def ablation_table(
    summary: pd.DataFrame,
    ablations: Mapping[str, Mapping[str, Any]],
    reference: str | None,
    methods: Mapping[str, Mapping[str, Any]],
    flops: Mapping[str, Mapping[str, float]],
) -> pd.DataFrame:
    """Table 4: the reference ZoomMIL row, then one row per ablation."""
    by_method = summary.set_index("method")
    ref_spec = methods.get(reference, {}) if reference else {}
    rows = []
    names = ([reference] if reference and ablations else []) + list(ablations)
    for method in names:
        spec = ref_spec if method == reference else ablations[method]
        component, variant = ablation_label(spec, ref_spec)
        row: dict[str, Any] = {"method": method, "component": component, "variant": variant}
        if method in by_method.index:
            row.update(by_method.loc[method].to_dict())
        row["tflops"] = flops.get(method, {}).get("tflops", math.nan)
        row["tflops_sd"] = flops.get(method, {}).get("tflops_sd", math.nan)
        rows.append(row)
    columns = ["method", "component", "variant", "n_seeds"]
    columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")]
    columns += [f"{m}_ci_{b}" for m in CI_METRICS for b in ("low", "high", "method")] + [
        "n_test",
        "n_test_units",
        "tflops",
        "tflops_sd",
        *AUC_CI_COLUMNS,
    ]
    return pd.DataFrame(rows, columns=columns)


def comparison_table(
    preds: Mapping[str, stats.Predictions],
    reference: str,
    others: Mapping[str, str],
    flops: Mapping[str, Mapping[str, float]],
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> pd.DataFrame:
    """The reference against each method of ``others`` (name -> "baseline" | "ablation").

    Differences are reference - method on the slides and seeds both share; ratios are
    reference / method (below 1: the reference is cheaper). Holm's adjustment runs per metric
    and per kind: over the baselines, and over the ablations apart (one family gave a
    baseline's adjusted p that changed with the number of ablations configured).
    """
    rows = []
    for method, kind in others.items():
        row: dict[str, Any] = {"reference": reference, "method": method, "kind": kind}
        if reference in preds and method in preds:
            # the most seeds either has: fewer shared ones make Δ differ from the main table
            row["seeds_either"] = max(len(preds[reference].seeds), len(preds[method].seeds))
            for metric in CI_METRICS:
                result = stats.compare(preds[reference], preds[method], metric)
                row["n_slides"], row["n_seeds"] = result.n_slides, result.n_seeds
                row["n_units"] = result.n_units
                row[f"{metric}_diff"] = result.difference
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = result.low, result.high
                row[f"{metric}_ci_method"] = result.ci_kind
                row[f"{metric}_p"], row[f"{metric}_p_exact"] = result.p_value, result.exact
        ref_flops = flops.get(reference, {}).get("tflops", math.nan)
        row["tflops_ratio"] = ref_flops / flops.get(method, {}).get("tflops", math.nan)
        for device in TIMING_HEADERS:
            ref_time = timings.get(device, {}).get(reference, {}).get("seconds", math.nan)
            other = timings.get(device, {}).get(method, {}).get("seconds", math.nan)
            row[f"{device}_time_ratio"] = ref_time / other if other else math.nan
        rows.append(row)
    columns = ["reference", "method", "kind", "n_slides", "n_units", "n_seeds", "seeds_either"]
    for metric in CI_METRICS:
        columns += [
            f"{metric}_{x}"
            for x in ("diff", "ci_low", "ci_high", "ci_method", "p", "p_holm", "p_exact")
        ]
    columns += ["tflops_ratio"] + [f"{d}_time_ratio" for d in TIMING_HEADERS]
    table = pd.DataFrame(rows, columns=columns)
    for metric in CI_METRICS:
        for kind in table["kind"].unique():
            tested = table[f"{metric}_p"].notna() & (table["kind"] == kind)
            if tested.any():
                p = table.loc[tested, f"{metric}_p"]
                table.loc[tested, f"{metric}_p_holm"] = stats.holm(p)
    return table
