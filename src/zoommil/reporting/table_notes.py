"""The notes printed under every table: what the numbers are and what they leave out.

The encoder and its weights (random weights make the numbers a smoke test), the slides QC
and later stages excluded, where and how each device was timed, and how to read the cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from zoommil.recipe import DEFAULT_ENCODER
from zoommil.reporting import stats
from zoommil.reporting.table_format import (
    EXACT_MARK,
    NO_CI,
    count_text,
    span_text,
)
from zoommil.reporting.table_frames import METRICS, TIMING_HEADERS, display_name
from zoommil.workflow import exclusions, qc


def timing_note(
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
    headers: Mapping[str, str] | None = None,
) -> str:
    """Where and how each timed device was timed: its model name, the processes and threads
    per process, and the slides timed, as the timing files record them (a part they do not
    record, as in older files, is left out); empty without any timing."""
    headers = headers or TIMING_HEADERS
    parts = []
    for device in TIMING_HEADERS:
        timed = [t for t in timings.get(device, {}).values() if not t.get("skipped")]
        if not timed:
            continue
        names = sorted({str(t.get("device_name") or "") for t in timed} - {""})
        setup = [" / ".join(names) or "an unrecorded device"]
        processes = span_text(t.get("processes") for t in timed)
        threads = span_text(t.get("threads_per_process") for t in timed)
        if processes and threads:
            setup.append(f"{count_text(processes, 'process')} x {count_text(threads, 'thread')}")
        elif processes:
            setup.append(count_text(processes, "process"))
        slides = span_text(t.get("n_slides") for t in timed)
        if slides:
            setup.append(f"n={slides} slides")
        parts.append(f"{headers[device].split(' (')[0]} timed on " + ", ".join(setup))
    if not parts:
        return ""
    return "; ".join(parts) + "; timings (s/slide, time ratios) vary by machine"


def counts_note(table: pd.DataFrame, seeds: int) -> str:
    """How many training runs and test slides a table's numbers come from: its captions said
    neither (review W)."""
    slides = table["n_test"].dropna() if "n_test" in table.columns else pd.Series(dtype=float)
    tested = f", {count_text(str(int(slides.max())), 'test slide')}" if len(slides) else ""
    return f"{count_text(str(seeds), 'seed')} per method (training runs){tested}"


def fewer_seeds_note(seeds: int) -> str:
    if seeds <= 1:
        return "(n=1): one seed, so no std over seeds"
    return f"(n=k): over k seeds, fewer than the {seeds} of the full benchmark"


def with_seeds_note(notes: Sequence[str], table: pd.DataFrame, seeds: int) -> list[str]:
    """``notes``, plus what ``(n=k)`` means when a cell of ``table`` carries it (a metric
    from 0 < k < ``seeds`` values, or from one, as `table_format` marks it)."""
    counts = [pd.to_numeric(table[f"{m}_n"]) for m in METRICS if f"{m}_n" in table.columns]
    marked = any(((n > 0) & ((n < seeds) | (n == 1))).any() for n in counts)
    return [*notes, fewer_seeds_note(seeds)] if marked else list(notes)


#: Why a cell has no interval with a single test slide (`stats.NO_INTERVAL`).
ONE_SLIDE_NOTE = "one test slide, nothing to resample"


def ci_notes(notes: Sequence[str], table: pd.DataFrame) -> list[str]:
    """``notes``, plus what `†` and `[n/a]` mean when a CI cell of ``table`` carries them
    (`stats.method_ci`: every bootstrap resample of the test slides gave the same value;
    AUC's, `roc.auc_interval`: also where some resample lacks a class), and why a cell has no
    CI at all (one test slide, or for AUC no per-slide probabilities)."""
    kinds = _kinds(table, stats.METRICS)
    auc_kinds = _kinds(table, ("auc",))
    out = list(notes)
    if stats.CLOPPER_PEARSON in kinds:
        out.append(
            f"{EXACT_MARK}: accuracy 100% (or 0%), every seed right (or wrong) on every test "
            "slide, so every bootstrap resample gives the same value and a percentile interval "
            "would be zero-width; the CI is instead the exact Clopper-Pearson 95% interval of "
            "n right (or 0) of the n test slides"
        )
    if stats.CONSTANT in kinds:
        out.append(
            f"{NO_CI}: no CI, every bootstrap resample of the test slides gives the same value "
            "(every slide is right for the same number of seeds, e.g. all of them: a "
            "percentile interval would be zero-width); only accuracy at 0% or 100% has an "
            f"exact interval ({EXACT_MARK})"
        )
    if stats.CONSTANT in auc_kinds:
        out.append(
            f"AUC {NO_CI}: no CI, every bootstrap resample gives the same AUC (every seed "
            "ranks each slide of a class above the others, AUC 100%: a percentile interval "
            "would be zero-width)"
        )
    out += _dropped_note(table)
    if stats.UNDEFINED in auc_kinds:
        out.append(
            f"AUC {NO_CI}: no CI, no bootstrap resample of the test slides holds a slide of "
            "every class, so AUC is undefined on all of them"
        )
    if stats.NO_INTERVAL in kinds | auc_kinds:
        out.append(f"no CI: {ONE_SLIDE_NOTE}")
    if "auc_ci_method" in table.columns and "auc_mean" in table.columns:
        bare = table["auc_mean"].notna() & (table["auc_ci_method"].fillna("") == "")
        if bare.any():
            out.append(
                "AUC without a CI: its evaluation JSONs have no per-slide 'probs' (rewrite "
                "them with `zoommil evaluate`)"
            )
    return [*out, *patients_note(table, "n_test", "n_test_units")]


def _dropped_note(table: pd.DataFrame) -> list[str]:
    """How many bootstrap resamples AUC's CI left out (no test slide of some class), per row
    that left out any (`roc.auc_interval`)."""
    if "auc_ci_dropped" not in table.columns:
        return []
    counts = pd.to_numeric(table["auc_ci_dropped"], errors="coerce").fillna(0)
    names = table["name"] if "name" in table.columns else table["method"]
    dropped = [f"{n} {int(k)}" for n, k in zip(names, counts, strict=True) if k > 0]
    if not dropped:
        return []
    return [
        f"AUC CI: of the {stats.N_BOOTSTRAP} bootstrap resamples, those holding no test slide "
        f"of some class (AUC undefined; the resamples are not stratified by class) are left "
        f"out, the percentiles taken of the others: {', '.join(dropped)} left out"
    ]


def _kinds(table: pd.DataFrame, metrics: Sequence[str]) -> set[str]:
    """How the CIs of ``metrics`` in ``table`` were made (`stats.Interval.kind`)."""
    return {
        str(kind)
        for m in metrics
        if f"{m}_ci_method" in table.columns
        for kind in table[f"{m}_ci_method"]
    }


def patients_note(table: pd.DataFrame, slides: str, units: str) -> list[str]:
    """The note for CIs (and tests) that resampled patients, not slides (the sheet's
    `patient` column: `stats.with_patients`), where some row has fewer units than slides."""
    if slides not in table or units not in table:
        return []
    n = pd.to_numeric(table[slides], errors="coerce")
    m = pd.to_numeric(table[units], errors="coerce")
    grouped = (m < n).fillna(False)
    if not grouped.any():
        return []
    first = grouped.idxmax()
    return [
        f"by patient (the sheet's patient column): the CIs, the Clopper-Pearson intervals and "
        f"the permutation swaps resample the test slides' patients, not the slides "
        f"({int(m[first])} patients of {int(n[first])} test slides; a slide without a patient "
        "counts as one): a patient's slides are correlated, and resampling them one by one "
        "makes the intervals too narrow; read 'slides' above as patients"
    ]


def _short(text: str, limit: int = 60) -> str:
    """The first clause of a reason, at most `limit` characters."""
    text = str(text).split(";")[0].split(" (")[0].strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def encoder_label(encoder: str) -> str:
    """``uni (ViT-L/16, 224 px, 1024-d)``; the bare name for an unregistered one."""
    from zoommil.features.encoders.registry import ENCODERS, canonical_name

    spec = ENCODERS.get(canonical_name(encoder))
    return spec.describe() if spec is not None else str(encoder)


def table_notes(
    dataset: str,
    weights: str,
    qc_table: pd.DataFrame,
    timings_skipped: Mapping[str, str],
    encoder: str = DEFAULT_ENCODER,
    exclusions_frame: pd.DataFrame | None = None,
    shared_passes: Sequence[Sequence[str]] = (),
    timed: str = "",
) -> list[str]:
    """Notes printed under every table (encoder, weights, QC exclusions, the evaluated slides
    a later stage left out, skipped devices, where and how the others were timed
    (``timed``, `timing_note`), methods timed in one shared pass)."""
    notes = [f"patch encoder: {encoder_label(encoder)}"]
    if str(weights) == "random":
        notes.append(
            "encoder weights are a seeded RANDOM initialisation (offline demo): the numbers "
            "test the pipeline, they do not measure the methods"
        )
    else:
        notes.append(f"encoder weights: {weights}")
    notes.append(f"dataset {dataset}: {qc.exclusion_summary(qc_table)} by QC")
    excluded = qc_table.loc[qc_table["status"] != "ok"]
    stages = excluded["stage"] if "stage" in excluded.columns else [""] * len(excluded)
    reasons = [
        f"{s} ({f'{stage}: ' if stage else ''}{_short(r)})"
        for s, r, stage in zip(excluded["slide_id"], excluded["reason"], stages, strict=True)
    ]
    if reasons:
        listed = qc.first_of(reasons, exclusions.NOTE_SLIDES_SHOWN)
        notes.append(f"excluded: {listed} (all, with full reasons: results/qc/slides.tsv)")
    late = exclusions.late_summary(exclusions_frame) if exclusions_frame is not None else None
    if late:
        notes.append(f"{late} (results/qc/exclusions.tsv)")
    for device, reason in timings_skipped.items():
        notes.append(f"{TIMING_HEADERS[device].split(' (')[0]} timing skipped: {reason}")
    if timed:
        notes.append(timed)
    if shared_passes:
        groups = "; ".join(", ".join(display_name(m) for m in group) for group in shared_passes)
        notes.append(
            f"timed together, one read-and-encode pass per slide, each method charged the pass "
            f"plus its own MIL head (their times differ only by the heads): {groups}"
        )
    notes.append(
        "mean ± std over seeds on the test split (std: the sample standard deviation, n - 1) "
        "[95% bootstrap CI over test slides: "
        f"{stats.N_BOOTSTRAP} resamples of the slides, metric averaged over seeds; it holds "
        "the trained models fixed, so seed-to-seed variation is not in it: that is the ± std]; "
        "AUC: ROC AUC (more than two classes: one-vs-rest, averaged over the classes); "
        "TFLOPs = 2^40 fvcore flops per slide, one multiply-add counted as one flop (as the "
        "paper counts; 2 flops per multiply-add and 10^12 per TFLOP read 2.2x higher)"
    )
    notes.append(
        "TFLOPs and s/slide: mean ± std over the slides (TFLOPs: the test slides; time: the "
        "timed slides, the std of their latencies scaled to s/slide where several processes "
        "time slides at once); a bare value: one slide, or a file without per-slide values"
    )
    return notes


def seeds_note(table: pd.DataFrame) -> list[str]:
    """The note for Δs over fewer seeds than the others (`table_format._fewer_seeds`)."""
    if "seeds_either" not in table or "n_seeds" not in table:
        return []
    if not (table["n_seeds"] < table["seeds_either"]).any():
        return []
    return [
        "(k seeds): Δ, CI and p over the k seeds both methods have, fewer than one of them "
        "has, so Δ can differ from the difference of the main table's means"
    ]


def comparison_notes(table: pd.DataFrame, notes: Sequence[str]) -> list[str]:
    """How to read the comparison table, then the shared notes (weights, QC)."""
    exact = table["weighted_f1_p_exact"].dropna()
    how = (
        "exact over all 2^n swaps"
        if len(exact) and exact.astype(bool).all()
        else f"Monte Carlo, {stats.N_PERMUTATIONS} swaps (exact up to "
        f"{stats.EXACT_MAX_SLIDES} slides)"
    )
    n = table["n_slides"].dropna()
    slides = f"the {count_text(str(int(n.max())), 'test slide')}" if len(n) else "the test slides"
    kinds = {
        str(kind)
        for m in stats.METRICS
        if f"{m}_ci_method" in table.columns
        for kind in table[f"{m}_ci_method"].dropna()
    }
    no_ci = (
        [
            f"Δ {NO_CI}: no CI, every bootstrap resample of the test slides gives the same "
            "difference (e.g. both methods right on the same slides for the same seeds): a "
            "percentile interval would be zero-width"
        ]
        if stats.CONSTANT in kinds
        else []
    )
    if stats.NO_INTERVAL in kinds:
        no_ci.append(f"Δ {NO_CI} without a CI: {ONE_SLIDE_NOTE}")
    floor = [
        f"≤ p: none of the {stats.N_PERMUTATIONS} swaps reached the observed difference, so p "
        f"is at most the Monte Carlo floor 2/{stats.N_PERMUTATIONS + 1}"
        for metric in stats.METRICS
        if f"{metric}_p" in table.columns
        and any(
            stats.at_monte_carlo_floor(float(p), bool(e))
            for p, e in zip(table[f"{metric}_p"], table[f"{metric}_p_exact"], strict=True)
        )
    ][:1]
    return [
        f"Δ = reference − method in percentage points, metric averaged over the seeds both "
        f"have, on {slides} both were tested on; [95% paired-bootstrap CI: the same "
        f"{stats.N_BOOTSTRAP} slide resamples for both]",
        *no_ci,
        f"p: two-sided paired permutation test over slides ({how}); Holm: adjusted per "
        "metric, over the baselines' rows and over the ablations' rows apart",
        "CI and p hold the trained models fixed (seed-to-seed variation is in neither: see "
        "the ± std of the main tables); the CI is not adjusted, and where k slides differ "
        "p is at least 2/2^k, so a CI clear of 0 can come with p > 0.05",
        *seeds_note(table),
        *floor,
        *patients_note(table, "n_slides", "n_units"),
        "ratios: reference / method of the means (TFLOPs per test slide, s/slide over the "
        "timed slides; below 1: the reference needs less); point values without an interval: "
        "the spread of each mean is its ± std in the main table",
        *[n for n in notes if not n.startswith("mean ± std")],
    ]
