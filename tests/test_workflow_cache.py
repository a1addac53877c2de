"""Input-function tables are parsed once per file version; the features manifest."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from zoommil.workflow import cache, qc


def _table(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text(
        "slide_id\tstatus\tsplit\tmpp\n" + "".join(f"{s}\t{st}\t{sp}\t0.5\n" for s, st, sp in rows)
    )


def test_tables_are_parsed_once_until_the_file_changes(tmp_path, monkeypatch) -> None:
    path = tmp_path / "slides.tsv"
    _table(path, [("b", "ok", "test"), ("a", "ok", "train"), ("c", "failed", "test")])
    cache.clear()
    reads = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: reads.append(a) or real(*a, **k))
    for _ in range(100):  # one call per job
        assert cache.slides_with_status(path) == ["a", "b"]
        assert cache.slides_with_status(path, split="test") == ["b"]
        assert cache.column_by_slide(path, "mpp")["c"] == "0.5"
    assert len(reads) == 1
    # a rewritten table (a rerun checkpoint) is read again
    _table(path, [("a", "ok", "train"), ("c", "ok", "test")])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.slides_with_status(path) == ["a", "c"]
    assert len(reads) == 2


def test_slide_ids_that_look_missing_stay_strings(tmp_path) -> None:
    """'NA', 'null', 'None', 'nan' are valid slide ids: read as NaN they broke the sorted list
    of inspected slides ('<' not supported between 'str' and 'float') after inspection."""
    ids = ["NA", "null", "None", "nan", "NaN", "NULL", "a"]
    path = tmp_path / "inspection.tsv"
    _table(path, [(s, "ok", "test") for s in ids])
    cache.clear()
    assert cache.slides_with_status(path) == sorted(ids)
    assert cache.slides_with_status(path, split="test") == sorted(ids)
    assert cache.column_by_slide(path, "mpp")["NA"] == "0.5"
    path.write_text("slide_id\tstatus\tmpp\nNA\tok\t\n")  # an empty cell is ""
    assert cache.column_by_slide(path, "mpp") == {"NA": ""}


def test_qc_tables_read_back_slide_ids_that_look_missing(tmp_path) -> None:
    """qc_slides reads the inspection table back (`qc.read_tsv`): 'NA' and 'null' stay ids and
    labels, and an empty mpp is still missing."""
    table = pd.DataFrame(
        {"slide_id": ["NA", "null"], "label": ["None", "x"], "status": ["ok", "ok"]}
        | {"stage": ["", ""], "reason": ["", ""], "mpp": [0.5, None]}
    )
    qc.write_tsv(table, tmp_path / "inspection.tsv")
    back = qc.read_tsv(tmp_path / "inspection.tsv")
    assert back["slide_id"].tolist() == ["NA", "null"]
    assert back["label"].tolist() == ["None", "x"]
    assert back["mpp"].iloc[0] == 0.5 and pd.isna(back["mpp"].iloc[1])


def test_features_manifest_lists_usable_files_with_size_and_mtime(tmp_path) -> None:
    files = {}
    for s in ("a", "b", "c"):
        files[s] = tmp_path / f"{s}.h5"
        files[s].write_bytes(b"x" * (ord(s) - 96))
    table = pd.DataFrame({"slide_id": ["b", "a", "c"], "status": ["ok", "ok", "no_tissue"]})
    manifest = qc.features_manifest(table, files)
    assert list(manifest["slide_id"]) == ["a", "b"]
    assert list(manifest["bytes"]) == [1, 2]
    assert list(manifest["mtime_ns"]) == [
        files["a"].stat().st_mtime_ns,
        files["b"].stat().st_mtime_ns,
    ]
