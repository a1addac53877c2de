"""Tables 1-4 of the paper from the workflow's JSON outputs, as CSV, Markdown and LaTeX.

Tables 1-3 (one per dataset): weighted F1, accuracy and AUC as mean +- std over seeds, with a
95% bootstrap CI over test slides for weighted F1 and accuracy (reporting.stats), TFLOPs per
slide and end-to-end time per slide as mean +- std over the slides. Table 4: ZoomMIL
ablations. The comparison table: the reference (ZoomMIL) against every baseline and ablation,
paired over slides, and its cost ratios (ratios of the means). Every table
carries notes on the encoder weights (random weights make the numbers a smoke test) and on
how many slides QC excluded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zoommil.io.atomic import atomic_path, write_text_atomic
from zoommil.recipe import arch_mags, format_mags
from zoommil.reporting import results, stats
from zoommil.workflow import exclusions, qc

DISPLAY_NAMES = {
    "zoommil": "ZoomMIL",
    "maxmil": "MaxMIL",
    "meanmil": "MeanMIL",
    "sparseconvmil": "SparseConvMIL",
    "abmil": "ABMIL",
    "clam_sb": "CLAM-SB",
    "transmil": "TransMIL",
    "msmil": "MS-MIL",
    "dsmil": "DSMIL",
}
METRICS = ("weighted_f1", "accuracy", "auc")
CI_METRICS = stats.METRICS  # metrics with a bootstrap CI over test slides
METRIC_HEADERS = {"weighted_f1": "Weighted F1 (%)", "accuracy": "Accuracy (%)", "auc": "AUC (%)"}
ZOOMMIL_DEFAULTS = {"selection": "diff_topk", "attention": "dual", "aggregation": "sum"}
TIMING_HEADERS = {
    "cpu1": "CPU 1 thread (s/slide)",
    "cpu": "CPU all cores (s/slide)",
    "gpu": "GPU (s/slide)",
}


def timing_headers(
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, str]:
    """TIMING_HEADERS with the all-cores column named by the processes its timings used
    (`CPU 2 processes (s/slide)`: no more processes than slides are timed, so "all cores"
    may be fewer than the machine's); the default where the files do not say (older ones)."""
    headers = dict(TIMING_HEADERS)
    timed = [t for t in timings.get("cpu", {}).values() if not t.get("skipped")]
    used = _span(t.get("processes") for t in timed)
    if used:
        headers["cpu"] = f"CPU {_count(used, 'process')} (s/slide)"
    return headers


def _span(values: Iterable[Any]) -> str:
    """`2`, or `2-3` when the methods' files differ; empty when none says."""
    known = sorted({int(v) for v in values if v is not None and not _missing(v)})
    if not known:
        return ""
    return str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"


def _count(n: str, word: str) -> str:
    return f"{n} {word}" if n == "1" else f"{n} {word}{'es' if word.endswith('s') else 's'}"


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
        processes = _span(t.get("processes") for t in timed)
        threads = _span(t.get("threads_per_process") for t in timed)
        if processes and threads:
            setup.append(f"{_count(processes, 'process')} x {_count(threads, 'thread')}")
        elif processes:
            setup.append(_count(processes, "process"))
        slides = _span(t.get("n_slides") for t in timed)
        if slides:
            setup.append(f"n={slides} slides")
        parts.append(f"{headers[device].split(' (')[0]} timed on " + ", ".join(setup))
    if not parts:
        return ""
    return "; ".join(parts) + "; timings (s/slide, time ratios) vary by machine"


def display_name(method: str, spec: Mapping[str, Any] | None = None) -> str:
    """ZoomMIL-style display name; a method named like its arch gets the paper's spelling."""
    if method in DISPLAY_NAMES:
        return DISPLAY_NAMES[method]
    return method


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
        record = {**record["test"], "classes": record.get("classes"), "seed": record.get("seed")}
    return record if record.get("predictions") and record.get("classes") else None


def run_predictions(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, stats.Predictions]:
    """Per-slide predictions of every method whose evaluation JSONs all carry them."""
    out = {}
    for method, records in runs.items():
        usable = [_test_predictions(r) for r in records]
        if usable and all(usable):
            out[method] = stats.predictions_from_evals(usable)
    return out


def add_intervals(summary: pd.DataFrame, preds: Mapping[str, stats.Predictions]) -> pd.DataFrame:
    """Summary plus `{metric}_ci_low/high` (95% bootstrap over test slides) and `n_test`."""
    summary = summary.copy()
    for column in [f"{m}_ci_{b}" for m in CI_METRICS for b in ("low", "high")] + ["n_test"]:
        summary[column] = math.nan
    for i, method in enumerate(summary["method"]):
        if method not in preds:
            continue
        summary.loc[i, "n_test"] = len(preds[method].slides)
        for metric in CI_METRICS:
            interval = stats.method_ci(preds[method], metric)
            summary.loc[i, f"{metric}_ci_low"] = interval.low
            summary.loc[i, f"{metric}_ci_high"] = interval.high
    return summary


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
            "mags": format_mags(arch_mags(spec.get("arch", method), mags)),
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
    return pd.DataFrame(rows)


def ablation_label(spec: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[str, str]:
    """(component, variant) of an ablation: the ZoomMIL kwargs that differ from the reference."""
    full_ref = {**ZOOMMIL_DEFAULTS, **reference}
    full = {**ZOOMMIL_DEFAULTS, **spec}
    changed = [k for k in sorted(set(full) | set(full_ref)) if full.get(k) != full_ref.get(k)]
    if not changed:
        return "reference", ", ".join(f"{k}={full[k]}" for k in ZOOMMIL_DEFAULTS)
    return ", ".join(changed), ", ".join(f"{k}={full.get(k)}" for k in changed)


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
    columns += [f"{m}_ci_{b}" for m in CI_METRICS for b in ("low", "high")] + [
        "n_test",
        "tflops",
        "tflops_sd",
    ]
    return pd.DataFrame(rows, columns=columns)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _with_spread(mean: Any, std: Any, fmt: Any) -> str:
    """`mean ± std` with ``fmt`` applied to both, the bare mean without a std (one value,
    or an older file without the per-slide values), `n/a` without a mean."""
    if _missing(mean):
        return "n/a"
    return fmt(mean) if _missing(std) else f"{fmt(mean)} ± {fmt(std)}"


def _pct(
    mean: float,
    std: float,
    low: float = math.nan,
    high: float = math.nan,
    n: float = math.nan,
    seeds: int = 0,
) -> str:
    """`mean ± std [low, high]` in percent (the CI only when there is one), then `(n=k)` when
    it comes from k values, fewer than the ``seeds`` of the full benchmark, or from one value
    (which has no std: `80.0 (n=1)`, not `80.0 ± 0.0`)."""
    text = _with_spread(mean, std, lambda v: f"{100 * v:.1f}")
    if text == "n/a":
        return text
    if not (_missing(low) or _missing(high)):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    if not _missing(n) and (int(n) < seeds or int(n) == 1):
        text += f" (n={int(n)})"
    return text


def fewer_seeds_note(seeds: int) -> str:
    if seeds <= 1:
        return "(n=1): one seed, so no std over seeds"
    return f"(n=k): over k seeds, fewer than the {seeds} of the full benchmark"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _num_sd(mean: Any, sd: Any) -> str:
    """A cost cell: `mean ± sd` over the slides, the sd to 2 significant digits and the mean
    to the same decimal place (`7.34 ± 0.17`, `0.500 ± 0.058`), so the digits shown are the
    ones the spread supports; the bare mean (3 significant digits) without an sd."""
    if _missing(mean) or _missing(sd):
        return _with_spread(mean, sd, _num)
    if float(sd) == 0:
        return f"{_num(mean)} ± 0"
    decimals = min(6, max(0, 1 - math.floor(math.log10(float(sd)))))
    return f"{float(mean):.{decimals}f} ± {float(sd):.{decimals}f}"


def display_frame(
    table: pd.DataFrame,
    kind: str,
    devices: Sequence[str],
    seeds: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The human-readable columns of a table (strings), best weighted F1 marked later.
    ``seeds``: the full number of seeds (default: the most in ``table``); a cell from fewer
    is marked ``(n=k)``."""
    seeds = full_seeds(table) if seeds is None else seeds
    headers = headers or TIMING_HEADERS
    out = pd.DataFrame()
    if kind == "main":
        out["Method"] = table["name"]
        out["Magnifications"] = table["mags"]
    else:
        out["Method"] = table["method"]
        out["Component"] = table["component"]
        out["Variant"] = table["variant"]
    nans = [math.nan] * len(table)
    for metric in METRICS:
        out[METRIC_HEADERS[metric]] = [
            _pct(*values)
            for values in zip(
                table.get(f"{metric}_mean", nans),
                table.get(f"{metric}_std", nans),
                table.get(f"{metric}_ci_low", nans),
                table.get(f"{metric}_ci_high", nans),
                table.get(f"{metric}_n", nans),
                [seeds] * len(table),
                strict=True,
            )
        ]
    out["TFLOPs"] = [
        _num_sd(v, sd) for v, sd in zip(table["tflops"], table.get("tflops_sd", nans), strict=True)
    ]
    if kind == "main":
        for device in devices:
            out[headers[device]] = [
                _num_sd(v, sd)
                for v, sd in zip(
                    table[f"{device}_s_per_slide"],
                    table.get(f"{device}_s_per_slide_sd", nans),
                    strict=True,
                )
            ]
    return out


def best_row(table: pd.DataFrame) -> int | None:
    """The row with the best mean weighted F1; None without one (no evaluation yet: the
    summary has no metric columns)."""
    if "weighted_f1_mean" not in table.columns:
        return None
    values = pd.to_numeric(table["weighted_f1_mean"], errors="coerce")
    if values.isna().all():
        return None
    return int(values.idxmax())


def to_markdown(display: pd.DataFrame, title: str, notes: Sequence[str], best: int | None) -> str:
    header = "| " + " | ".join(display.columns) + " |"
    rule = "|" + "|".join("---" for _ in display.columns) + "|"
    lines = [f"**{title}**", "", header, rule]
    for index, row in display.iterrows():
        cells = [str(v) for v in row]
        if index == best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"*Note:* {note}" + "  " for note in notes]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "_": r"\_",
        "#": r"\#",
        "^": r"\^{}",
        "Δ": r"$\Delta$",
        "−": "$-$",
    }
    text = "".join(replacements.get(c, c) for c in str(text))
    return text.replace("±", r"$\pm$").replace("->", r"$\rightarrow$")


def to_latex(
    display: pd.DataFrame, title: str, notes: Sequence[str], best: int | None, label: str
) -> str:
    columns = "l" * 2 + "c" * (len(display.columns) - 2)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex_escape(title + ". " + " ".join(notes)) + "}",
        r"\label{" + label + "}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{" + columns + "}",
        r"\toprule",
        " & ".join(_tex_escape(c) for c in display.columns) + r" \\",
        r"\midrule",
    ]
    for index, row in display.iterrows():
        cells = [_tex_escape(v) for v in row]
        if index == best:
            cells[0] = r"\textbf{" + cells[0] + "}"
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


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
    encoder: str = "resnet50_layer3",
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
        notes.append("excluded: " + "; ".join(reasons) + " (full reasons: results/qc/slides.tsv)")
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
        "mean ± std over seeds on the test split [95% bootstrap CI over test slides: "
        f"{stats.N_BOOTSTRAP} resamples of the slides, metric averaged over seeds]; "
        "TFLOPs = 2^40 flops per slide"
    )
    notes.append(
        "TFLOPs and s/slide: mean ± std over the slides (TFLOPs: the test slides; time: the "
        "timed slides, the std of their latencies scaled to s/slide where several processes "
        "time slides at once); a bare value: one slide, or a file without per-slide values"
    )
    return notes


def comparison_table(
    preds: Mapping[str, stats.Predictions],
    reference: str,
    others: Mapping[str, str],
    flops: Mapping[str, Mapping[str, float]],
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> pd.DataFrame:
    """The reference against each method of ``others`` (name -> "baseline" | "ablation").

    Differences are reference - method on the slides and seeds both share; ratios are
    reference / method (below 1: the reference is cheaper). Holm's adjustment runs over the
    rows of the table, per metric.
    """
    rows = []
    for method, kind in others.items():
        row: dict[str, Any] = {"reference": reference, "method": method, "kind": kind}
        if reference in preds and method in preds:
            for metric in CI_METRICS:
                result = stats.compare(preds[reference], preds[method], metric)
                row["n_slides"], row["n_seeds"] = result.n_slides, result.n_seeds
                row[f"{metric}_diff"] = result.difference
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = result.low, result.high
                row[f"{metric}_p"], row[f"{metric}_p_exact"] = result.p_value, result.exact
        ref_flops = flops.get(reference, {}).get("tflops", math.nan)
        row["tflops_ratio"] = ref_flops / flops.get(method, {}).get("tflops", math.nan)
        for device in TIMING_HEADERS:
            ref_time = timings.get(device, {}).get(reference, {}).get("seconds", math.nan)
            other = timings.get(device, {}).get(method, {}).get("seconds", math.nan)
            row[f"{device}_time_ratio"] = ref_time / other if other else math.nan
        rows.append(row)
    columns = ["reference", "method", "kind", "n_slides", "n_seeds"]
    for metric in CI_METRICS:
        columns += [
            f"{metric}_{x}" for x in ("diff", "ci_low", "ci_high", "p", "p_holm", "p_exact")
        ]
    columns += ["tflops_ratio"] + [f"{d}_time_ratio" for d in TIMING_HEADERS]
    table = pd.DataFrame(rows, columns=columns)
    for metric in CI_METRICS:
        tested = table[f"{metric}_p"].notna()
        if tested.any():
            table.loc[tested, f"{metric}_p_holm"] = stats.holm(table.loc[tested, f"{metric}_p"])
    return table


def _signed(value: float) -> str:
    return "n/a" if _missing(value) else f"{100 * value:+.1f}"


def _p(p: float, holm: float) -> str:
    if _missing(p):
        return "n/a"
    return f"{p:.3g} (Holm {holm:.2g})"


def _ratio(value: float) -> str:
    return "n/a" if _missing(value) or math.isinf(value) else f"{value:.2f}x"


def comparison_display(
    table: pd.DataFrame,
    names: Mapping[str, str],
    devices: Sequence[str],
    headers: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Human-readable comparison rows: differences in percentage points with their CI."""
    headers = headers or TIMING_HEADERS
    out = pd.DataFrame()
    out["Comparison"] = [
        f"{names.get(r, r)} vs {names.get(m, m)}"
        for r, m in zip(table["reference"], table["method"], strict=True)
    ]
    out["Kind"] = table["kind"]
    for metric in CI_METRICS:
        header = METRIC_HEADERS[metric].replace(" (%)", "")
        out[f"Δ {header} (pp) [95% CI]"] = [
            "n/a" if _missing(d) else f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]"
            for d, lo, hi in zip(
                table[f"{metric}_diff"],
                table[f"{metric}_ci_low"],
                table[f"{metric}_ci_high"],
                strict=True,
            )
        ]
        out[f"p ({header})"] = [
            _p(p, h) for p, h in zip(table[f"{metric}_p"], table[f"{metric}_p_holm"], strict=True)
        ]
    out["TFLOPs ratio"] = [_ratio(v) for v in table["tflops_ratio"]]
    for device in devices:
        out[f"Time ratio, {headers[device].split(' (')[0]}"] = [
            _ratio(v) for v in table[f"{device}_time_ratio"]
        ]
    return out


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
    slides = f"the {int(n.max())} test slides" if len(n) else "the test slides"
    return [
        f"Δ = reference − method in percentage points, metric averaged over the seeds both "
        f"have, on {slides} both were tested on; [95% paired-bootstrap CI: the same "
        f"{stats.N_BOOTSTRAP} slide resamples for both]",
        f"p: two-sided paired permutation test over slides ({how}); Holm: adjusted for the "
        "comparisons in this table",
        "ratios: reference / method of the means (TFLOPs per test slide, s/slide over the "
        "timed slides; below 1: the reference needs less); point values without an interval: "
        "the spread of each mean is its ± std in the main table",
        *[n for n in notes if not n.startswith("mean ± std")],
    ]


def write_text(path: str | Path, text: str) -> None:
    write_text_atomic(path, text)


def write_csv(path: str | Path, frame: pd.DataFrame, notes: Sequence[str]) -> None:
    frame = frame.copy()
    frame["notes"] = " | ".join(notes)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _with_seeds_note(notes: Sequence[str], table: pd.DataFrame, seeds: int) -> list[str]:
    """``notes``, plus what ``(n=k)`` means when a cell of ``table`` carries it (a metric
    from 0 < k < ``seeds`` values, or from one, as `_pct` marks it)."""
    counts = [pd.to_numeric(table[f"{m}_n"]) for m in METRICS if f"{m}_n" in table.columns]
    marked = any(((n > 0) & ((n < seeds) | (n == 1))).any() for n in counts)
    return [*notes, fewer_seeds_note(seeds)] if marked else list(notes)


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
    encoder: str = "resnet50_layer3",
    exclusions_table: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Write Tables 1-3 (`main_*`) and Table 4 (`ablation_*`) to the given output paths.

    `outputs` keys: main_csv, main_md, main_tex, ablation_csv, ablation_md, ablation_tex and,
    optionally, comparison_csv, comparison_md, comparison_tex (the reference vs every other
    method, paired over test slides). `exclusions_table` (results/qc/exclusions.tsv) adds a note on
    the evaluated slides that a later stage (predict, profile, figures) left out.
    """
    ablations = dict(ablations or {})
    qc_frame = pd.read_csv(qc_table, sep="\t", dtype={"slide_id": str}, keep_default_na=False)
    late_frame = None
    if exclusions_table is not None:
        late_frame = pd.read_csv(exclusions_table, sep="\t", dtype=str, keep_default_na=False)
    evals = list(evals)
    records = results.eval_records(evals)
    summary = summarize_runs(records) if records else pd.DataFrame(columns=["method"])
    preds = run_predictions(results.eval_runs(evals))
    summary = add_intervals(summary, preds)
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
    notes = table_notes(
        dataset, weights, qc_frame, skipped, encoder, late_frame, shared_passes, timed
    )
    notes += [
        f"AUC n/a (or from fewer seeds) for {n} run(s): {note}"
        for note, n in results.auc_notes(records).items()
    ]

    main = main_table(summary, methods, mags, flops_map, timing_map)
    seeds = full_seeds(main)  # per table: ablations may run another number of seeds
    title = f"ZoomMIL benchmark on {dataset}, {encoder} features (Tables 1-3 style)"
    display = display_frame(main, "main", devices, seeds, headers)
    main_notes = _with_seeds_note(notes, main, seeds)
    best = best_row(main)
    write_csv(outputs["main_csv"], main, main_notes)
    write_text(outputs["main_md"], to_markdown(display, title, main_notes, best))
    write_text(outputs["main_tex"], to_latex(display, title, main_notes, best, f"tab:{dataset}"))

    ablation = ablation_table(summary, ablations, reference, methods, flops_map)
    seeds = full_seeds(ablation)
    title = f"ZoomMIL ablations on {dataset}, {encoder} features (Table 4 style)"
    display = display_frame(ablation, "ablation", devices, seeds, headers)
    ab_notes = _with_seeds_note(notes, ablation, seeds)
    ab_notes = ab_notes if ablations else ["no ablations configured", *ab_notes]
    best = best_row(ablation) if len(ablation) else None
    write_csv(outputs["ablation_csv"], ablation, ab_notes)
    write_text(outputs["ablation_md"], to_markdown(display, title, ab_notes, best))
    write_text(
        outputs["ablation_tex"],
        to_latex(display, title, ab_notes, best, f"tab:{dataset}-ablations"),
    )

    reference = reference or ("zoommil" if "zoommil" in methods else None)
    others = {m: "baseline" for m in methods if reference and m != reference}
    others.update({m: "ablation" for m in ablations if reference})
    comparison = comparison_table(preds, reference, others, flops_map, timing_map)
    if "comparison_csv" in outputs:
        title = f"Paired comparisons on {dataset}"
        c_notes = comparison_notes(comparison, notes)
        names = {m: display_name(m) for m in [reference, *others]}
        display = comparison_display(comparison, names, devices, headers)
        write_csv(outputs["comparison_csv"], comparison, c_notes)
        write_text(outputs["comparison_md"], to_markdown(display, title, c_notes, None))
        write_text(
            outputs["comparison_tex"],
            to_latex(display, title, c_notes, None, f"tab:{dataset}-comparisons"),
        )
    return {"main": main, "ablations": ablation, "comparisons": comparison}
