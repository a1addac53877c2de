"""Tables the workflow's input functions read, parsed once per file version.

Why: Snakemake calls input functions once per job; with 1000 slides a function that reads the
QC table every time makes planning quadratic in the cohort. Each table is parsed once and kept
until its (mtime, size) changes, so a rewritten table (a rerun checkpoint) is read again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

T = TypeVar("T")

_CACHE: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}


def cached(path: str | Path, what: str, build: Callable[[Path], T]) -> T:
    """``build(path)``, recomputed only when the file's mtime or size changes."""
    key = (str(Path(path).resolve()), what)
    st = os.stat(path)
    version = (st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = build(Path(path))
    _CACHE[key] = (version, value)
    return value


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A TSV of strings, empty cells "" (do not modify the returned frame: it is shared).

    No NA parsing: a slide id such as 'NA', 'null' or 'None' must stay a string (as NaN it
    broke the sorted slide list with a str/float comparison)."""
    return cached(path, "tsv", lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False))


def slides_with_status(path: str | Path, status: str = "ok", split: str | None = None) -> list[str]:
    """Sorted slide_ids of a QC table with ``status`` (and ``split``)."""

    def build(p: Path) -> list[str]:
        table = read_tsv(p)
        keep = table["status"] == status
        if split is not None:
            keep &= table["split"] == split
        return sorted(table.loc[keep, "slide_id"])

    return cached(path, f"status={status},split={split}", build)


def column_by_slide(path: str | Path, column: str) -> dict[str, str]:
    """slide_id -> ``column`` of a table (e.g. the usable sheet's resolved mpp)."""

    def build(p: Path) -> dict[str, str]:
        table = read_tsv(p)
        return dict(zip(table["slide_id"], table[column].fillna(""), strict=True))

    return cached(path, f"column={column}", build)


def clear() -> None:
    _CACHE.clear()
