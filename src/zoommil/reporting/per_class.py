"""Per-class F1 and macro F1 per method, mean ± std over seeds (DESIGN.md's metrics).

Why a table of its own: weighted F1 and accuracy (Tables 1-3) weigh each class by its test
slides, so on BRIGHT or CRC a method that misses the rarest grade can still rank high; the
per-class F1 shows which class it misses. The numbers are each evaluation JSON's own
``macro_f1`` and ``per_class_f1`` (`zoommil evaluate`), averaged over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.reporting.results import load_json, parse_run
from zoommil.reporting.table_format import count_text
from zoommil.reporting.table_frames import display_name


def per_class_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One record per (method, seed): its classes, ``macro_f1``, ``per_class_f1`` (None
    where a class's F1 is undefined) and ``support`` (test slides per class)."""
    records = []
    for path in paths:
        method, seed = parse_run(path)
        data = load_json(path)
        scope = data["test"] if isinstance(data.get("test"), Mapping) else data
        per_class = scope.get("per_class_f1")
        if not isinstance(per_class, Mapping):
            raise ZoomMILError(f"{path}: no per_class_f1 (an evaluation JSON of zoommil evaluate)")
        records.append(
            {
                "method": method,
                "seed": seed,
                "classes": [str(c) for c in data.get("classes") or per_class],
                "macro_f1": scope.get("macro_f1"),
                "per_class_f1": dict(per_class),
                "support": dict(scope.get("support") or {}),
            }
        )
    return records


def _mean_std(values: Sequence[Any]) -> tuple[float, float, int]:
    """Mean, sample std (NaN for one value) and count of the defined values."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return math.nan, math.nan, 0
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else math.nan
    return float(np.mean(kept)), std, len(kept)


def per_class_table(records: Sequence[Mapping[str, Any]], order: Sequence[str]) -> pd.DataFrame:
    """Rows in ``order`` (methods without records left out): ``n_seeds``, ``macro_f1_*`` and
    ``f1[CLASS]_*`` (``mean``, ``std``, ``n``) and ``support[CLASS]``; the class order is the
    evaluations' (the config's), which must agree across files."""
    classes = class_order(records)
    rows = []
    for method in order:
        runs = [r for r in records if r["method"] == method]
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "n_seeds": len(runs)}
        stats = {"macro_f1": [r["macro_f1"] for r in runs]}
        stats |= {f"f1[{c}]": [r["per_class_f1"].get(c) for r in runs] for c in classes}
        for name, values in stats.items():
            row[f"{name}_mean"], row[f"{name}_std"], row[f"{name}_n"] = _mean_std(values)
        for c in classes:
            row[f"support[{c}]"] = runs[0]["support"].get(c)
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["method", "n_seeds"])


def class_order(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The classes every evaluation lists, in their order; evaluations that disagree (a
    changed class list) cannot share one table."""
    orders = {tuple(r["classes"]) for r in records}
    if len(orders) > 1:
        raise ZoomMILError(
            f"evaluations list their classes differently ({' vs '.join(map(str, orders))}): "
            "rerun them with one class list"
        )
    return list(next(iter(orders))) if orders else []


def _cell(mean: float, std: float, n: int, seeds: int) -> str:
    """``87.5 ± 4.2``, ``80.0 (n=1)`` (defined for 1 of the method's ``seeds``) or ``n/a``,
    in percent."""
    if n == 0 or math.isnan(mean):
        return "n/a"
    text = f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"
    return text + (f" (n={n})" if n < seeds else "")


def per_class_display(
    table: pd.DataFrame, classes: Sequence[str], names: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Human-readable rows: method, macro F1 and each class's F1 (its test slides in the
    header). ``names``: the rows' names (`table_frames.method_names`: an ablation by what it
    changes); a method without one gets its `display_name`."""
    names = names or {}
    most = int(table["n_seeds"].max()) if len(table) else 0
    out = pd.DataFrame()
    # a method trained on fewer seeds says so by its name; (n=k) in a cell is an F1
    # undefined for its other seeds (it read as such for a 1-seed ablation, review G)
    out["Method"] = [
        names.get(m, display_name(m))
        + (f" ({count_text(str(int(k)), 'seed')})" if k < most else "")
        for m, k in zip(table.get("method", []), table.get("n_seeds", []), strict=True)
    ]
    columns = [("macro_f1", "Macro F1 (%)")]
    for c in classes:
        support = table[f"support[{c}]"].dropna() if f"support[{c}]" in table else []
        slides = f", {count_text(str(int(support.iloc[0])), 'slide')}" if len(support) else ""
        columns.append((f"f1[{c}]", f"F1 {c} (%{slides})"))
    for key, header in columns:
        out[header] = [
            _cell(r[f"{key}_mean"], r[f"{key}_std"], int(r[f"{key}_n"]), int(r["n_seeds"]))
            for _, r in table.iterrows()
        ]
    return out


def per_class_notes(table: pd.DataFrame) -> list[str]:
    """How to read the table."""
    seeds = int(table["n_seeds"].max()) if len(table) else 0
    notes = [
        f"mean ± std over {count_text(str(seeds), 'seed')} (sample std; a method trained on "
        "fewer says how many by its name) on the test split: F1 "
        "of each class against the others, and macro F1, their unweighted mean (Tables 1-3's "
        "weighted F1 weighs each class by its test slides); slides: the test slides of the "
        "class"
    ]
    if any(table[c].lt(table["n_seeds"]).any() for c in table.columns if c.endswith("_n")):
        notes.append(
            "n/a or (n=k): F1 defined for k of the method's seeds only (a class with no test "
            "slide that the model never predicted)"
        )
    return notes
