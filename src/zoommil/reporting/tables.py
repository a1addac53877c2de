"""Tables 1-4 of the paper from the workflow's JSON outputs, as CSV, Markdown and LaTeX.

Tables 1-3 (one per dataset): weighted F1, accuracy and AUC as mean +- std over seeds, with a
95% bootstrap CI over test slides (reporting.stats; AUC's from the evaluations' per-slide
probabilities, `roc`), TFLOPs per slide and end-to-end time per slide as mean +- std over
the slides. Table 4: ZoomMIL
ablations. The comparison table: the reference (ZoomMIL) against every baseline and ablation,
paired over slides, and its cost ratios (ratios of the means). Every table
carries notes on the encoder weights (random weights make the numbers a smoke test) and on
how many slides QC excluded.

This module reads the inputs and writes the files; the numbers are built by
`zoommil.reporting.table_frames`, formatted by `table_format`, annotated by `table_notes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zoommil.recipe import DEFAULT_ENCODER
from zoommil.reporting import calibration, operating_points, per_class, results, subgroups
from zoommil.reporting.table_format import (
    best_rows,
    comparison_display,
    display_frame,
    timing_headers,
    to_latex,
    to_markdown,
    write_csv,
    write_text,
)
from zoommil.reporting.table_frames import (
    TIMING_HEADERS,
    ablation_table,
    add_intervals,
    comparison_table,
    full_seeds,
    main_table,
    method_names,
    run_predictions,
    summarize_runs,
)
from zoommil.reporting.table_notes import (
    ci_notes,
    comparison_notes,
    counts_note,
    patients_note,
    table_notes,
    timing_note,
    with_seeds_note,
)


def make_tables(
    qc_table: str | Path,
    evals: Iterable[str | Path],
    flops: Iterable[str | Path],
    timings: Mapping[str, Iterable[str | Path]],
    outputs: Mapping[str, str | Path],
    dataset: str,
    weights: str,
    mags: Sequence[float],
    methods: Mapping[str, Mapping[str, Any]],
    ablations: Mapping[str, Mapping[str, Any]] | None = None,
    reference: str | None = None,
    encoder: str = DEFAULT_ENCODER,
    exclusions_table: str | Path | None = None,
    sheet: str | Path | None = None,
    val_reports: Iterable[str | Path] = (),
    checkpoints: Iterable[str | Path] = (),
    subgroup_columns: Sequence[str] = (),
) -> dict[str, pd.DataFrame]:
    """Write Tables 1-3 (`main_*`) and Table 4 (`ablation_*`) to the given output paths.

    `outputs` keys: main_csv, main_md, main_tex, ablation_csv, ablation_md, ablation_tex and,
    optionally, comparison_csv, comparison_md, comparison_tex (the reference vs every other
    method, paired over test slides) and per_class_csv, per_class_md, per_class_tex (macro
    and per-class F1 of every method, `per_class`). `exclusions_table`
    (results/qc/exclusions.tsv) adds a note on the evaluated slides that a later stage
    (predict, profile, figures) left out. With a `patient` column in ``sheet`` the CIs and
    permutation tests resample patients, not slides (`stats.with_patients`).
    ``val_reports`` (the training runs' metrics.json) add the calibration table's columns at
    thresholds fixed on the validation split, and with ``checkpoints`` and an
    ``operating_points`` output folder, the files for `zoommil predict --operating-point`.
    ``subgroup_columns`` (`report.subgroups`: columns of ``sheet``, checked before anything
    else) and the outputs subgroups_csv, subgroups_md, subgroups_tex: AUC and balanced
    accuracy per method and subgroup value, and the gap between subgroups (`subgroups`).
    """
    # the sheet's subgroup columns first: a missing column fails the job before any work
    groups = subgroups.sheet_values(sheet, subgroup_columns) if subgroup_columns else {}
    ablations = dict(ablations or {})
    qc_frame = pd.read_csv(qc_table, sep="\t", dtype={"slide_id": str}, keep_default_na=False)
    late_frame = None
    if exclusions_table is not None:
        late_frame = pd.read_csv(exclusions_table, sep="\t", dtype=str, keep_default_na=False)
    evals = list(evals)
    records = results.eval_records(evals)
    summary = summarize_runs(records) if records else pd.DataFrame(columns=["method"])
    runs = results.eval_runs(evals)
    preds = run_predictions(runs, results.patients(sheet))
    # AUC's CI (and the calibration and subgroup tables) need the per-slide probabilities
    probs = calibration.run_probabilities(runs, preds)
    summary = add_intervals(summary, preds, probs[0])
    flops_map = results.flops_by_method(flops)
    timing_map = {device: results.timing_by_method(paths) for device, paths in timings.items()}
    devices = [
        d for d in TIMING_HEADERS if any(not t["skipped"] for t in timing_map.get(d, {}).values())
    ]
    skipped = {
        d: next(iter(t.values()))["skipped"]
        for d, t in timing_map.items()
        if t and all(x["skipped"] for x in t.values())
    }
    shared = {
        tuple(t["shared_pass"]) for by_method in timing_map.values() for t in by_method.values()
    }
    shared_passes = sorted(group for group in shared if group)
    headers = timing_headers(timing_map)
    timed = timing_note(timing_map, headers)
    runs_notes = [
        f"AUC n/a (or from fewer seeds) for {n} run(s): {note}"
        for note, n in results.auc_notes(records).items()
    ]
    runs_notes += [
        f"no training slide of class(es) {names} in {n} run(s): those models never learnt "
        "them (metrics.json: untrained_classes)"
        for names, n in results.untrained_notes(records).items()
    ]
    notes = table_notes(
        dataset, weights, qc_frame, skipped, encoder, late_frame, shared_passes, timed
    )
    notes += runs_notes
    # Table 4 has no time column: the notes on how methods were timed do not belong under it
    untimed_notes = table_notes(dataset, weights, qc_frame, {}, encoder, late_frame)
    untimed_notes += runs_notes

    main = main_table(summary, methods, mags, flops_map, timing_map)
    seeds = full_seeds(main)  # per table: ablations may run another number of seeds
    title = f"ZoomMIL benchmark on {dataset}, {encoder} features (Tables 1-3 style)"
    display = display_frame(main, "main", devices, seeds, headers)
    main_notes = [counts_note(main, seeds)] if seeds else []
    main_notes = ci_notes(with_seeds_note([*main_notes, *notes], main, seeds), main)
    best = best_rows(main)
    write_csv(outputs["main_csv"], main, main_notes)
    write_text(outputs["main_md"], to_markdown(display, title, main_notes, best))
    write_text(outputs["main_tex"], to_latex(display, title, main_notes, best, f"tab:{dataset}"))

    ablation = ablation_table(summary, ablations, reference, methods, flops_map)
    seeds = full_seeds(ablation)
    title = f"ZoomMIL ablations on {dataset}, {encoder} features (Table 4 style)"
    display = display_frame(ablation, "ablation", devices, seeds, headers)
    ab_notes = [counts_note(ablation, seeds)] if seeds else []
    ab_notes = [*ab_notes, *untimed_notes]
    ab_notes = ci_notes(with_seeds_note(ab_notes, ablation, seeds), ablation)
    ab_notes = ab_notes if ablations else ["no ablations configured", *ab_notes]
    best = best_rows(ablation)
    write_csv(outputs["ablation_csv"], ablation, ab_notes)
    write_text(outputs["ablation_md"], to_markdown(display, title, ab_notes, best))
    write_text(
        outputs["ablation_tex"],
        to_latex(display, title, ab_notes, best, f"tab:{dataset}-ablations"),
    )

    names = method_names(methods, ablations, reference)  # an ablation's as Table 4 says it
    reference = reference or ("zoommil" if "zoommil" in methods else None)
    others = {m: "baseline" for m in methods if reference and m != reference}
    others.update({m: "ablation" for m in ablations if reference})
    comparison = comparison_table(preds, reference, others, flops_map, timing_map)
    if "comparison_csv" in outputs:
        title = f"Paired comparisons on {dataset}"
        c_notes = comparison_notes(comparison, notes)
        display = comparison_display(comparison, names, devices, headers)
        write_csv(outputs["comparison_csv"], comparison, c_notes)
        write_text(outputs["comparison_md"], to_markdown(display, title, c_notes, ()))
        write_text(
            outputs["comparison_tex"],
            to_latex(display, title, c_notes, (), f"tab:{dataset}-comparisons"),
        )
    frames = {"main": main, "ablations": ablation, "comparisons": comparison}
    if "per_class_csv" in outputs:
        records = per_class.per_class_records(evals)
        table = per_class.per_class_table(records, [*methods, *ablations])
        title = f"Per-class F1 on {dataset}, {encoder} features"
        # the encoder, weights and QC notes; not those on CIs, AUC, TFLOPs and times
        shared = [n for n in untimed_notes if not n.startswith(("mean ± std", "TFLOPs and"))]
        pc_notes = [*per_class.per_class_notes(table), *shared]
        display = per_class.per_class_display(table, per_class.class_order(records), names)
        write_csv(outputs["per_class_csv"], table, pc_notes)
        write_text(outputs["per_class_md"], to_markdown(display, title, pc_notes, ()))
        write_text(
            outputs["per_class_tex"],
            to_latex(display, title, pc_notes, (), f"tab:{dataset}-per-class"),
        )
        frames["per_class"] = table
    if "calibration_csv" in outputs:
        val = operating_points.val_runs(val_reports, checkpoints)
        order = [*methods, *ablations]
        frames["calibration"] = _calibration(
            outputs, runs, preds, order, names, untimed_notes, dataset, encoder, val
        )
    if "subgroups_csv" in outputs and groups:
        # the encoder, weights and QC notes; not those on CIs, AUC, TFLOPs and times
        shared = [n for n in untimed_notes if not n.startswith(("mean ± std", "TFLOPs and"))]
        frames["subgroups"] = subgroups.write_tables(
            outputs, probs, [*methods, *ablations], groups, names, shared, dataset
        )
    return frames


def _calibration(
    outputs: Mapping[str, str | Path],
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    preds: Mapping[str, Any],
    order: Sequence[str],
    names: Mapping[str, str],
    untimed_notes: Sequence[str],
    dataset: str,
    encoder: str,
    val: Mapping[tuple[str, int], operating_points.ValRun],
) -> pd.DataFrame:
    """The calibration table (`calibration`: Brier score, ECE, sensitivity at 90%/95%
    specificity, each with its bootstrap CI; `operating_points`: test sensitivity and
    specificity at thresholds fixed on the validation split) and, with ``reliability_csv``,
    the reliability diagram's bins, with ``operating_points`` the thresholds' files."""
    probs, left_out = calibration.run_probabilities(runs, preds)
    table = calibration.calibration_table(probs, order)
    table = operating_points.add_columns(table, probs, val)
    classes = next(iter(probs.values())).classes if probs else ()
    # the encoder, weights and QC notes; not those on CIs, AUC, TFLOPs and times
    shared = [n for n in untimed_notes if not n.startswith(("mean ± std", "TFLOPs and"))]
    notes = [*calibration.calibration_notes(table, classes, left_out), *shared]
    notes[len(notes) - len(shared) : len(notes) - len(shared)] = operating_points.notes(
        table, classes
    )
    notes += patients_note(table, "n_test", "n_test_units")
    title = f"Calibration on {dataset}, {encoder} features"
    display = calibration.calibration_display(table, names, operating_points.headers())
    write_csv(outputs["calibration_csv"], table, notes)
    write_text(outputs["calibration_md"], to_markdown(display, title, notes, ()))
    write_text(
        outputs["calibration_tex"],
        to_latex(display, title, notes, (), f"tab:{dataset}-calibration"),
    )
    if "reliability_csv" in outputs:
        frame = calibration.reliability_frame(probs, order)
        calibration.write_reliability_csv(outputs["reliability_csv"], frame, shared)
    if "operating_points" in outputs:
        operating_points.write_files(outputs["operating_points"], probs, val, order)
    return table
