"""Read the JSON files the CLI writes (evaluate, flops, profile) into flat records.

The readers accept the few spellings a metrics file may use (`weighted_f1` / `f1_weighted`,
metrics at the top level or under `test`/`metrics`), so tables do not break when a
producer nests its output.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "weighted_f1": ("weighted_f1", "f1_weighted", "wf1", "weighted-f1"),
    "accuracy": ("accuracy", "acc"),
    "auc": ("auc", "auc_ovr", "roc_auc", "macro_auc", "auc_macro"),
    "macro_f1": ("macro_f1", "f1_macro"),
}
RUN_PATTERN = re.compile(r"(?P<method>[^/]+)/seed~(?P<seed>\d+)")


def load_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def find_metric(record: dict[str, Any], name: str) -> float:
    """A metric from an evaluation record, NaN when absent."""
    scopes = [record]
    for key in ("test", "metrics", "test_metrics"):
        if isinstance(record.get(key), dict):
            scopes.insert(0, record[key])
    for scope in scopes:
        for alias in METRIC_ALIASES.get(name, (name,)):
            value = scope.get(alias)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return math.nan


def parse_run(path: str | Path) -> tuple[str, int]:
    """(method, seed) from a path like results/eval/<method>/seed~<seed>.json."""
    match = RUN_PATTERN.search(Path(path).as_posix())
    if not match:
        raise ValueError(f"not a <method>/seed~<seed> path: {path}")
    return match["method"], int(match["seed"])


def eval_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One record per (method, seed) with the metrics of METRIC_ALIASES."""
    records = []
    for path in paths:
        method, seed = parse_run(path)
        data = load_json(path)
        record: dict[str, Any] = {"method": method, "seed": seed}
        for name in METRIC_ALIASES:
            record[name] = find_metric(data, name)
        records.append(record)
    return records


def eval_runs(paths: Iterable[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """method -> its evaluation JSONs (seed set from the path), for per-slide statistics."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        method, seed = parse_run(path)
        data = load_json(path)
        out.setdefault(method, []).append({**data, "seed": seed})
    return out


def method_of(path: str | Path) -> str:
    """The method folder of results/efficiency/<method>/<file>.json."""
    return Path(path).parent.name


def flops_by_method(paths: Iterable[str | Path]) -> dict[str, dict[str, float]]:
    """method -> {tflops, patches} (mean per test slide)."""
    out = {}
    for path in paths:
        data = load_json(path)
        out[method_of(path)] = {
            "tflops": float(data.get("mean_tflops", math.nan)),
            "patches": float(data.get("mean_patches_encoded", math.nan)),
        }
    return out


def timing_by_method(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """method -> {seconds, slides_per_hour, threads, device_name, skipped, shared_pass}."""
    out = {}
    for path in paths:
        data = load_json(path)
        skipped = data.get("skipped")
        out[method_of(path)] = {
            "seconds": math.nan if skipped else float(data.get("seconds_per_slide", math.nan)),
            "slides_per_hour": math.nan
            if skipped
            else float(data.get("slides_per_hour", math.nan)),
            "threads": data.get("threads"),
            "device_name": data.get("device_name") or "",
            "skipped": skipped or "",
            "shared_pass": list(data.get("shared_pass") or []),
        }
    return out
