"""Read the JSON files the CLI writes (evaluate, flops, profile) into flat records.

The readers accept the few spellings a metrics file may use (`weighted_f1` / `f1_weighted`,
metrics at the top level or under `test`/`metrics`), so tables do not break when a
producer nests its output.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError

METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "weighted_f1": ("weighted_f1", "f1_weighted", "wf1", "weighted-f1"),
    "accuracy": ("accuracy", "acc"),
    "auc": ("auc", "auc_ovr", "roc_auc", "macro_auc", "auc_macro"),
    "macro_f1": ("macro_f1", "f1_macro"),
}
RUN_PATTERN = re.compile(r"(?P<method>[^/]+)/seed~(?P<seed>\d+)")


def load_json(path: str | Path) -> dict[str, Any]:
    """A results JSON object; a file that is not one is an error naming it (a bare
    JSONDecodeError named a line and column, not which of a table's many inputs it was)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ZoomMILError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise ZoomMILError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


_SCOPE_KEYS = ("test", "metrics", "test_metrics")


def _scoped(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(prefix, block) where an evaluation record may keep its metrics: nested blocks first,
    then the top (prefix "" there, "test." in the `test` block)."""
    nested = [(f"{k}.", record[k]) for k in _SCOPE_KEYS if isinstance(record.get(k), dict)]
    return [*reversed(nested), ("", record)]


def _scopes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Where an evaluation record may keep its metrics: nested blocks first, then the top."""
    return [scope for _, scope in _scoped(record)]


def metric_entry(record: dict[str, Any], name: str) -> tuple[str, float] | None:
    """(key as found, e.g. ``test.accuracy``, value) of a metric of an evaluation record;
    None when absent."""
    for prefix, scope in _scoped(record):
        for alias in METRIC_ALIASES.get(name, (name,)):
            value = scope.get(alias)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return prefix + alias, float(value)
    return None


def checked_metric(record: dict[str, Any], name: str, path: str | Path) -> float:
    """A metric from an evaluation record, NaN when absent, refusing a value outside [0, 1]:
    every metric here is a fraction, and a percentage (87.5) was taken as is, a mean of 87.5
    printed as 8750.0%."""
    entry = metric_entry(record, name)
    if entry is None:
        return math.nan
    key, value = entry
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        hint = " (a percentage? write it as a fraction)" if 1.0 < value <= 100.0 else ""
        raise ZoomMILError(f"{path}: {key} = {value:g} is outside [0, 1]{hint}")
    return value


def parse_run(path: str | Path) -> tuple[str, int]:
    """(method, seed) from a path like results/eval/<method>/seed~<seed>.json."""
    match = RUN_PATTERN.search(Path(path).as_posix())
    if not match:
        raise ValueError(f"not a <method>/seed~<seed> path: {path}")
    return match["method"], int(match["seed"])


def eval_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One record per (method, seed) with the metrics of METRIC_ALIASES, ``auc_note``, the
    evaluation's reason for an undefined AUC ("" without one), and ``untrained_classes``, the
    classes its model had no training slide of (empty where the file does not say)."""
    records = []
    for path in paths:
        method, seed = parse_run(path)
        data = load_json(path)
        record: dict[str, Any] = {"method": method, "seed": seed}
        for name in METRIC_ALIASES:
            record[name] = checked_metric(data, name, path)
        notes = (scope.get("auc_note") for scope in _scopes(data))
        record["auc_note"] = next((n for n in notes if isinstance(n, str) and n), "")
        untrained = data.get("untrained_classes")
        record["untrained_classes"] = [str(c) for c in untrained or []]
        records.append(record)
    return records


def auc_notes(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Why an evaluation's AUC is undefined (`eval_records`' ``auc_note``, e.g. a class absent
    from the test split) -> the number of runs that give that reason; the tables print it
    under an ``n/a`` cell instead of leaving the reason in the JSON."""
    return dict(Counter(r["auc_note"] for r in records if r.get("auc_note")))


#: The key under which `eval_runs` records the file a record was read from.
SOURCE = "_source"


def untrained_notes(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The classes some runs had no training slide of (`eval_records`' ``untrained_classes``,
    as `zoommil train` records them) -> the number of runs: the tables note them, as such a
    run's metrics are low for a reason its cells do not show."""
    return dict(
        Counter(", ".join(r["untrained_classes"]) for r in records if r.get("untrained_classes"))
    )


def eval_runs(paths: Iterable[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """method -> its evaluation JSONs (seed set from the path, the file under `SOURCE`, so
    that a check of a record can name it), for per-slide statistics."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        method, seed = parse_run(path)
        data = load_json(path)
        out.setdefault(method, []).append({**data, "seed": seed, SOURCE: str(path)})
    return out


def patients(sheet: str | Path | None) -> dict[str, str]:
    """slide_id -> the sheet's `patient` cell (empty without the column or a sheet): the
    statistics resample a patient's test slides together (`stats.with_patients`)."""
    if sheet is None:
        return {}
    from zoommil.io.sheet import read_sheet

    frame = read_sheet(sheet)
    if "patient" not in frame.columns:
        return {}
    return dict(zip(frame["slide_id"], frame["patient"], strict=True))


def method_of(path: str | Path) -> str:
    """The method folder of results/efficiency/<method>/<file>.json."""
    return Path(path).parent.name


TFLOP = 2.0**40  # as zoommil.efficiency.flops (not imported: that module loads torch)


def spread(values: Iterable[Any]) -> tuple[float, int]:
    """(sample std, ddof=1, n) of the finite numbers of ``values``; the std is NaN for fewer
    than two (one value has no spread) and exactly 0 for equal values (`statistics.stdev`
    works in exact fractions; a float mean left ~1e-17 there, printed `0.100000 ± 0.000000`)."""
    finite = [float(v) for v in values if _finite(v)]
    if len(finite) < 2:
        return math.nan, len(finite)
    return statistics.stdev(finite), len(finite)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _per_slide(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data.get("per_slide")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def flops_by_method(paths: Iterable[str | Path]) -> dict[str, dict[str, float]]:
    """method -> {tflops, tflops_sd, n_slides, patches}: the mean per test slide, and the
    std over the slides' ``per_slide`` totals (NaN in a file without them: the bare mean)."""
    out = {}
    for path in paths:
        data = load_json(path)
        sd, n = spread(r.get("total_flops") for r in _per_slide(data))
        out[method_of(path)] = {
            "tflops": float(data.get("mean_tflops", math.nan)),
            "tflops_sd": sd / TFLOP,
            "n_slides": n or math.nan,
            "patches": float(data.get("mean_patches_encoded", math.nan)),
        }
    return out


def seconds_spread(data: dict[str, Any]) -> tuple[float, int]:
    """(std, n) of a timing record's seconds per slide over its ``per_slide`` rows.

    ``seconds_per_slide`` is the cohort's makespan / slides: with N worker processes slides
    overlap, so it is about the mean latency / N. The std over the slides' latencies is
    scaled by the same factor (seconds_per_slide / mean latency; 1 with one process), so it
    is the spread of the number in the table. NaN without per-slide rows (an older file) or
    with one slide."""
    latencies = [r.get("seconds") for r in _per_slide(data)]
    sd, n = spread(latencies)
    finite = [float(v) for v in latencies if _finite(v)]
    seconds = data.get("seconds_per_slide")
    if n < 2 or not _finite(seconds) or not sum(finite):
        return sd, n
    return sd * float(seconds) / (sum(finite) / len(finite)), n


def throughput_interval(seconds: float, sd: float) -> tuple[float, float]:
    """Slides per hour at seconds per slide + sd and - sd (the x error bar of Figure 3);
    the upper end is inf when sd >= seconds, NaN for both without an sd."""
    if not (_finite(seconds) and _finite(sd)) or seconds <= 0:
        return math.nan, math.nan
    high = 3600.0 / (seconds - sd) if seconds > sd else math.inf
    return 3600.0 / (seconds + sd), high


def timing_by_method(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """method -> {seconds, seconds_sd, n_slides, slides_per_hour, slides_per_hour_low/high,
    threads, processes, threads_per_process, device_name, skipped, shared_pass}.

    ``seconds_sd``: the std over the timed slides (`seconds_spread`), NaN in a file without
    per-slide rows, whose bare value is still read."""
    out = {}
    for path in paths:
        data = load_json(path)
        skipped = data.get("skipped")
        seconds = math.nan if skipped else float(data.get("seconds_per_slide", math.nan))
        sd, n = (math.nan, 0) if skipped else seconds_spread(data)
        low, high = throughput_interval(seconds, sd)
        out[method_of(path)] = {
            "seconds": seconds,
            "seconds_sd": sd,
            "n_slides": n or math.nan,
            "slides_per_hour": math.nan
            if skipped
            else float(data.get("slides_per_hour", math.nan)),
            "slides_per_hour_low": low,
            "slides_per_hour_high": high,
            "threads": data.get("threads"),
            "processes": data.get("processes"),
            "threads_per_process": data.get("threads_per_process"),
            "device_name": data.get("device_name") or "",
            "skipped": skipped or "",
            "shared_pass": list(data.get("shared_pass") or []),
        }
    return out
