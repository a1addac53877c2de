"""Faults a cohort run must survive: bad slides, bad sheets, bad disks (issue 13).

One section per category; every slide is made in the test (tests/slide_factory.py). The
whole-workflow check (a corrupt slide excluded at `features` while every other slide is
trained and evaluated) is in tests/test_workflow_run.py, on the shared tiny run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
from slide_factory import (
    corrupt_level_tiles,
    dark_field_rgb,
    tiles_touched_by_test_read,
    write_pyramid_tiff,
)

from zoommil import cli
from zoommil.errors import ZoomMILError
from zoommil.io import sheet as zsheet
from zoommil.io.atomic import atomic_path, remove_stale_temps
from zoommil.reporting import table_notes
from zoommil.training.config import parse_config
from zoommil.training.data import resolve_classes
from zoommil.workflow import exclusions, qc
from zoommil.workflow.failure import Failure, read_marker, write_marker
from zoommil.workflow.spares import classes_in_turn, first_successes
from zoommil.wsi import slide as zslide
from zoommil.wsi.lattice import descendants
from zoommil.wsi.mpp import MPP_MAX, MPP_MIN

REPO = Path(__file__).resolve().parents[1]
HEADER = "slide_id\tpath\tlabel\tsplit\tmpp\n"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """`zoommil ARGV` in-process: (exit code, stderr); torch's thread count is restored."""
    threads = torch.get_num_threads()
    try:
        code = cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """Small slides: good (two), a copy under another name, corrupt, dark-field, low-mag."""
    folder = tmp_path_factory.mktemp("fault_slides")
    out = {
        "good": write_pyramid_tiff(folder / "good.tiff", width=1024, height=768, mpp=1.0),
        "other": write_pyramid_tiff(folder / "other.tiff", width=1024, height=768, mpp=1.0, seed=3),
        "dark": write_pyramid_tiff(
            folder / "dark.tiff", rgb=dark_field_rgb(1024, 768), mpp=1.0, levels=3
        ),
        "low": write_pyramid_tiff(folder / "low.tiff", width=1024, height=768, mpp=2.004),
    }
    out["copy"] = folder / "copy_of_good.tiff"
    shutil.copyfile(out["good"], out["copy"])
    corrupt = write_pyramid_tiff(folder / "corrupt.tiff", width=1024, height=768, mpp=1.0)
    assert corrupt_level_tiles(corrupt, 0, spare=tiles_touched_by_test_read(1024, 768)) > 0
    out["corrupt"] = corrupt
    return out


# --- 1. per-slide isolation -----------------------------------------------------------------


def test_failed_slide_leaves_a_marker_and_the_next_stages_pass_it_on(
    slides, tmp_path, capsys, monkeypatch
):
    # the read fails before any patch is encoded: a stand-in encoder saves building ResNet-50
    import zoommil.features.extraction as extraction

    monkeypatch.setattr(
        extraction, "build_encoder", lambda *a, **k: (torch.nn.Identity(), {"weights": "stub"})
    )
    # corrupt level-0 tiles: inspection and tissue detection (coarse levels) pass ...
    assert zslide.inspect_slide(slides["corrupt"])["status"] == "ok"
    mask, coords, feats = tmp_path / "m.png", tmp_path / "c.h5", tmp_path / "f.h5"
    assert run_cli(capsys, "tissue", slides["corrupt"], "--out", mask, "--no-fail")[0] == 0
    code, _ = run_cli(
        capsys, "tile", slides["corrupt"], "--mags", 2.5, 5, 10, "--out", coords,
        "--tissue-mask", mask, "--no-fail",
    )  # fmt: skip
    assert code == 0 and read_marker(coords) is None
    # ... features meets the corrupt tiles: without --no-fail one line and exit 2,
    line = one_line_error(
        *run_cli(capsys, "features", slides["corrupt"], "--coords", coords, "--out", feats,
                 "--weights", "random", "--no-progress", "--workers", "0")
    )  # fmt: skip
    assert "corrupt.tiff" in line and "cannot read" in line and not feats.exists()
    # with --no-fail a valid marker (status, stage, reason) and exit 0
    code, err = run_cli(
        capsys, "features", slides["corrupt"], "--coords", coords, "--out", feats,
        "--weights", "random", "--no-progress", "--workers", "0", "--no-fail",
    )  # fmt: skip
    assert code == 0 and "slide excluded" in err
    failure = read_marker(feats)
    assert failure.status == "failed" and failure.stage == "features"
    # the QC table lists it with stage and reason; the summary counts it
    inspection = pd.DataFrame(
        [{"slide_id": "corrupt", "label": "x", "split": "train", "status": "ok", "stage": "",
          "reason": "", "mpp": 1.0, "mpp_source": "m", "quickhash": ""}]
    )  # fmt: skip
    table = qc.slides_table(inspection, {"corrupt": feats})
    row = table.iloc[0]
    assert (row["status"], row["stage"]) == ("failed", "features") and "cannot read" in row[
        "reason"
    ]
    assert qc.exclusion_summary(table) == "1 of 1 slides excluded (1 failed at features)"


def test_an_unreadable_feature_file_excludes_its_slide_not_the_run(tmp_path):
    damaged = tmp_path / "a.h5"
    damaged.write_bytes(b"not hdf5" * 8)
    inspection = pd.DataFrame(
        [{"slide_id": "a", "label": "x", "split": "train", "status": "ok", "stage": "",
          "reason": "", "mpp": 1.0, "mpp_source": "m", "quickhash": ""}]
    )  # fmt: skip
    row = qc.slides_table(inspection, {"a": damaged}).iloc[0]
    assert (row["status"], row["stage"]) == ("failed", "features") and "a.h5" in row["reason"]


def _one_ok_slide() -> pd.DataFrame:
    return pd.DataFrame(
        [{"slide_id": "a", "label": "x", "split": "train", "status": "ok", "stage": "",
          "reason": "", "mpp": 1.0, "mpp_source": "m", "quickhash": ""}]
    )  # fmt: skip


def test_a_feature_file_locked_by_another_process_stops_qc_not_the_slide(tmp_path):
    """HDF5 locks each file it opens; a lock it cannot get is no fault of the slide. QC read
    it as a damaged file and excluded the slide (`failed at features`), for good: the QC table
    kept it out after the lock was gone. Here another open file description holds the lock."""
    import fcntl

    from zoommil.io.featurefile import write_feature_file

    coords = [descendants(np.array([[0, 0]]), d) for d in (0, 1)]
    path = write_feature_file(
        tmp_path / "a.h5", [5, 10], [np.ones((len(c), 4), np.float32) for c in coords],
        coords, coords,
    )  # fmt: skip
    with open(path, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(ZoomMILError) as error:
            qc.slides_table(_one_ok_slide(), {"a": path})
    assert str(path) in str(error.value) and "could not lock" in str(error.value)
    assert "another process" in str(error.value)
    assert qc.slides_table(_one_ok_slide(), {"a": path}).iloc[0]["status"] == "ok"


def test_a_file_system_without_locks_names_the_setting_that_reads_it(tmp_path, monkeypatch):
    """NFS without its lock daemon refuses every lock (errno 37, h5py's words below): QC
    stops with the file and `HDF5_USE_FILE_LOCKING=FALSE`, instead of excluding every slide."""
    path = tmp_path / "a.h5"
    path.write_bytes(b"any")

    def refused(*args, **kwargs):
        raise OSError(
            37,
            "Unable to synchronously open file (unable to lock file, errno = 37, error message "
            "= 'No locks available')",
        )

    monkeypatch.setattr(h5py, "File", refused)
    with pytest.raises(ZoomMILError, match="HDF5_USE_FILE_LOCKING=FALSE") as error:
        qc.slides_table(_one_ok_slide(), {"a": path})
    assert str(path) in str(error.value) and "No locks available" in str(error.value)


@pytest.mark.parametrize(
    ("policy", "status", "reason"),
    [
        ("all", "ok", ""),
        ("exclude", "no_tissue", "no patch passed the tissue threshold (no_tissue: exclude)"),
    ],
)
def test_a_slide_tiled_without_tissue_follows_the_no_tissue_policy(
    tmp_path, policy, status, reason
):
    """`zoommil tile --no-tissue all` keeps every patch of a slide where none passed the
    tissue threshold and records `no_tissue_applied`: QC keeps it under 'all' and excludes it
    at tile under 'exclude', the reason naming the policy."""
    from zoommil.io.featurefile import write_feature_file

    coords = [descendants(np.array([[0, 0]]), d) for d in (0, 1)]
    feats = [np.ones((len(c), 4), np.float32) for c in coords]
    path = write_feature_file(
        tmp_path / "a.h5", [5, 10], feats, coords, coords, attrs={"no_tissue_applied": True}
    )
    inspection = pd.DataFrame(
        [{"slide_id": "a", "label": "x", "split": "train", "status": "ok", "stage": "",
          "reason": "", "mpp": 1.0, "mpp_source": "m", "quickhash": ""}]
    )  # fmt: skip
    row = qc.slides_table(inspection, {"a": path}, policy).iloc[0]
    assert row["status"] == status and row["stage"] == ("" if status == "ok" else "tile")
    assert row["reason"] == reason
    assert (row["n_5.0x"], row["n_10.0x"]) == (1, 4)  # the patches are counted either way


def _cut_feature_file(path: Path, mag: str, rows: int | None) -> None:
    """Drop the last ``rows`` rows of every dataset of ``mag`` (None: the datasets)."""
    with h5py.File(path, "r+") as handle:
        for key in [k for k in handle.keys() if k.startswith(f"{mag}_")]:
            data = handle[key][()]
            del handle[key]
            if rows is not None:
                handle.create_dataset(key, data=data[:-rows])


@pytest.mark.parametrize(
    ("mags", "rows", "needles"),
    [
        (
            [2.5, 5, 10],
            None,
            ["lacks dataset(s) 10.0x_patches", "(it has magnifications 2.5x, 5.0x)"],
        ),
        (None, None, ["lacks dataset(s) 10.0x_patches"]),
        (None, 4, ["60 rows at 10.0x but 16 at 5.0x need 64 (4^1 each)", "descendant"]),
        ([2.5, 10], 4, ["60 rows at 10.0x but 4 at 2.5x need 64 (4^2 each)"]),
    ],
)
def test_a_feature_file_that_breaks_the_layout_fails_its_slide_at_features(
    tmp_path, monkeypatch, mags, rows, needles
):
    """Training stopped, for every method, on a file with a magnification missing or rows cut
    at one: QC excludes that slide with the reason, reading shapes and coords only (never the
    features), and keeps the others."""
    from zoommil.io.featurefile import write_feature_file

    parents = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    coords = [descendants(parents, d) for d in (0, 1, 2)]
    feats = [np.ones((len(c), 8), np.float32) for c in coords]
    files = {}
    for slide_id in ("good", "bad"):
        files[slide_id] = write_feature_file(
            tmp_path / f"{slide_id}.h5", [2.5, 5, 10], feats, coords, coords
        )
    _cut_feature_file(files["bad"], "10.0x", rows)
    inspection = pd.DataFrame(
        [{"slide_id": s, "label": "x", "split": "train", "status": "ok", "stage": "",
          "reason": "", "mpp": 1.0, "mpp_source": "m", "quickhash": ""} for s in files]
    )  # fmt: skip

    read = h5py.Dataset.__getitem__

    def coords_read(dataset, *args, **kwargs):  # coords (16 bytes a row) but no features
        if dataset.name.endswith("_patches"):
            raise AssertionError("QC read feature values")
        return read(dataset, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", coords_read)
    recipe = {"mags": mags} if mags is not None else {}  # else the files' `mags` attribute
    table = qc.slides_table(inspection, files, "exclude", **recipe).set_index("slide_id")
    assert table.loc["good", "status"] == "ok"
    bad = table.loc["bad"]
    assert (bad["status"], bad["stage"]) == ("failed", "features")
    assert str(files["bad"]) in bad["reason"] and "\n" not in bad["reason"]
    for needle in needles:
        assert needle in bad["reason"], bad["reason"]
    assert qc.exclusion_summary(table.reset_index()) == (
        "1 of 2 slides excluded (1 failed at features)"
    )


def _two_mag_features(path: Path) -> Path:
    """One parent at 5x and its four children at 10x, in depth-first order."""
    from zoommil.io.featurefile import write_feature_file

    parent = np.array([[0, 0]])
    children = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    feats = [np.ones((1, 4), np.float32), np.ones((4, 4), np.float32)]
    return write_feature_file(path, [5.0, 10.0], feats, [parent, children], [parent, children])


def _drop_coords(h5: h5py.File) -> None:
    del h5["10.0x_coords"]


def _string_mags(h5: h5py.File) -> None:
    h5.attrs["mags"] = "5,10"


def _short_coords(h5: h5py.File) -> None:
    data = h5["10.0x_coords"][()]
    del h5["10.0x_coords"]
    h5.create_dataset("10.0x_coords", data=data[:3])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_drop_coords, "lacks dataset(s) 10.0x_coords (of 10.0x it has 10.0x_patches, 10.0x_xy)"),
        (_string_mags, "'mags' attribute is '5,10', not a list of magnifications"),
        (_short_coords, "rows at 10.0x differ between datasets (patches 4, coords 3, xy 4)"),
    ],
)
def test_a_feature_file_without_coords_or_with_string_mags_is_one_error_naming_it(
    tmp_path, change, needle
):
    """A missing `*_coords` dataset (h5py's KeyError) or a string `mags` attribute (a
    ValueError from reading it one character at a time) was a traceback from training and
    from QC. Every reader now says what is wrong, naming the file: reading the bag, the
    header pass before training, and QC (which fails the slide at `features`)."""
    from zoommil.io.featurefile import read_feature_file
    from zoommil.training.data import bag_shapes

    path = _two_mag_features(tmp_path / "s.h5")
    with h5py.File(path, "r+") as handle:
        change(handle)
    for read in (
        lambda: read_feature_file(path),
        lambda: read_feature_file(path, [5.0, 10.0]),
        lambda: bag_shapes(path, [5.0, 10.0]),
    ):
        with pytest.raises(ZoomMILError) as error:
            read()
        assert str(error.value).startswith(f"{path}: ") and needle in str(error.value)
    with h5py.File(path, "r") as handle:
        for mags in (None, [5.0, 10.0]):
            problem = qc.layout_problem(handle, mags)
            assert problem.startswith(f"feature file {path}: ") and needle in problem, problem


def _reorder(path: Path, mag: str, order: np.ndarray) -> None:
    """Rows of every dataset of ``mag`` in ``order``: a consistent file, rows moved."""
    with h5py.File(path, "r+") as handle:
        for part in ("patches", "coords", "xy"):
            data = handle[f"{mag}_{part}"][()]
            del handle[f"{mag}_{part}"]
            handle.create_dataset(f"{mag}_{part}", data=data[order])


def _swapped(n: int, a: slice | int, b: slice | int) -> np.ndarray:
    order = np.arange(n)
    order[a], order[b] = order[b].copy(), order[a].copy()
    return order


@pytest.mark.parametrize(
    ("mag", "order", "needles"),
    [
        # two children of one parent swapped: parent-major, not in quadtree order
        ("10.0x", _swapped(64, 5, 6), ["row 5 at 10.0x is (row, col) (2, 1)", "puts (3, 0) there"]),
        # the children of two parents swapped: not parent-major
        ("5.0x", _swapped(16, slice(4, 8), slice(8, 12)), ["row 4 at 5.0x", "of row 1 at 2.5x"]),
    ],
)
def test_rows_out_of_depth_first_order_are_refused_by_every_reader(tmp_path, mag, order, needles):
    """Rows in another order than the lattice's depth-first one passed every check (the
    counts are right): ZoomMIL zoomed into the wrong patches and every model paired children
    with other parents. Reading the bag (its magnifications), the header pass before training
    (every magnification of the file) and QC now refuse such a file, naming it, the
    magnification and the first row out of order."""
    from zoommil.io.featurefile import read_feature_file, write_feature_file
    from zoommil.training.data import bag_shapes

    coords = [descendants(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), d) for d in (0, 1, 2)]
    feats = [np.ones((len(c), 8), np.float32) for c in coords]
    path = write_feature_file(tmp_path / "s.h5", [2.5, 5, 10], feats, coords, coords)
    read_feature_file(path)
    _reorder(path, mag, order)
    readers = [lambda: read_feature_file(path), lambda: bag_shapes(path, [10.0])]
    if mag == "10.0x":  # a subset a step apart (DSMIL's): its 4^2 descendants of each parent
        readers.append(lambda: read_feature_file(path, [2.5, 10.0]))
    for read in readers:
        with pytest.raises(ZoomMILError) as error:
            read()
        message = str(error.value)
        assert message.startswith(f"{path}: row ") and "depth-first" in message, message
        assert needles[0].split(" is ")[0] in message
    with pytest.raises(ZoomMILError) as error:
        read_feature_file(path)
    for needle in needles:
        assert needle in str(error.value), str(error.value)
    with h5py.File(path, "r") as handle:
        problem = qc.layout_problem(handle, [2.5, 5, 10])
    assert problem == f"feature file {error.value}"


def test_a_split_emptied_by_qc_stops_before_training_naming_its_slides():
    """Both test slides excluded after the sheet check: one error at the QC checkpoint naming
    them with their reasons, instead of every train job training and then failing."""
    sheet = pd.DataFrame(
        {"slide_id": ["a", "b", "c", "d"], "split": ["train", "val", "test", "test"]}
    )
    rows = [("a", "ok", "", ""), ("b", "ok", "", ""),
            ("c", "failed", "tissue", "truncated or corrupt TIFF file"),
            ("d", "missing", "inspect", "file not found")]  # fmt: skip
    table = pd.DataFrame(rows, columns=["slide_id", "status", "stage", "reason"])
    with pytest.raises(ZoomMILError) as error:
        qc.check_usable_splits(sheet, table)
    message = str(error.value)
    assert message.startswith("no usable test slides after QC: all 2 excluded: ")
    assert "c (failed at tissue: truncated or corrupt TIFF file); d (missing at inspect" in message
    assert message.endswith("; the results need test slides"), message
    table.loc[3, "status"] = "ok"  # one test slide left: fine
    qc.check_usable_splits(sheet, table)
    table.loc[0, "status"] = "missing"  # the reason is the emptied split's, not val's and test's
    with pytest.raises(ZoomMILError, match=r"excluded: a \(missing\); training needs train "):
        qc.check_usable_splits(sheet, table)


def test_slides_excluded_for_one_reason_are_named_under_it_once():
    """Magnifications the scans cannot give exclude every slide for the same 250-character
    reason: the error named it once per slide (a wall of repeats); now once, with its
    slides, the first three named."""
    ids = [f"s{i}" for i in range(5)] + ["blank", "late"]
    sheet = pd.DataFrame({"slide_id": ids, "split": ["test"] * 7})
    finer = "40x is finer than the slide's highest level (10x, mpp 1.0): " + "x" * 180
    rows = [(s, "failed", "tile", finer) for s in ids[:5]]
    rows += [("blank", "no_tissue", "tile", ""), ("late", "failed", "features", "truncated")]
    table = pd.DataFrame(rows, columns=["slide_id", "status", "stage", "reason"])
    with pytest.raises(ZoomMILError) as error:
        qc.check_usable_splits(sheet, table)
    assert str(error.value) == (
        f"no usable test slides after QC: all 7 excluded: s0, s1, s2 and 2 more (failed at "
        f"tile: {finer}); blank (no_tissue at tile); late (failed at features: truncated); "
        "the results need test slides"
    )
    # the first five reasons, then how many more
    many = pd.DataFrame(
        [(f"t{i}", "failed", "tile", f"reason {i}") for i in range(7)], columns=table.columns
    )
    sheet = pd.DataFrame({"slide_id": many["slide_id"], "split": ["test"] * 7})
    with pytest.raises(ZoomMILError, match=r"t4 \(failed at tile: reason 4\); and 2 more; "):
        qc.check_usable_splits(sheet, many)


def test_a_stopping_qc_keeps_its_table_and_a_passing_one_removes_the_copy(tmp_path):
    """Snakemake deletes the failed qc_slides job's slides.tsv: the whole table stays as
    slides.failed.tsv, named by the error, and goes once QC passes again."""
    sheet = pd.DataFrame({"slide_id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    rows = [("a", "ok", "", ""), ("b", "ok", "", ""), ("c", "no_tissue", "tile", "")]
    table = pd.DataFrame(rows, columns=["slide_id", "status", "stage", "reason"])
    out = tmp_path / "qc" / "slides.tsv"
    kept = tmp_path / "qc" / "slides.failed.tsv"
    with pytest.raises(ZoomMILError) as error:
        qc.check_usable_splits_keeping(sheet, table, out)
    assert str(error.value).startswith("no usable test slides after QC: all 1 excluded: ")
    assert str(error.value).endswith(f"; every slide and its reason: {kept}")
    assert qc.read_tsv(kept)[["slide_id", "status"]].values.tolist() == [
        ["a", "ok"],
        ["b", "ok"],
        ["c", "no_tissue"],
    ]
    table.loc[2, "status"] = "ok"
    qc.check_usable_splits_keeping(sheet, table, out)
    assert not kept.exists()


def test_a_qc_script_error_goes_to_its_log_and_the_terminal_and_exits_1(monkeypatch):
    log, terminal = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(sys, "__stderr__", terminal)
    qc.tell("qc_slides: warning: w")
    with pytest.raises(SystemExit) as stop, qc.stop_on_error("qc_inspect"):
        raise ZoomMILError("one slide under two names")
    assert stop.value.code == 1
    expected = "qc_slides: warning: w\nqc_inspect: error: one slide under two names\n"
    assert log.getvalue() == terminal.getvalue() == expected
    with qc.stop_on_error("qc_inspect"):
        pass  # nothing raised: nothing said


def test_a_class_that_qc_empties_in_a_split_is_a_warning_naming_it():
    sheet = pd.DataFrame(
        {"slide_id": list("abcde"), "split": ["train"] * 3 + ["val", "test"],
         "label": ["x", "y", "y", "x", "x"]}
    )  # fmt: skip
    rows = [("a", "ok", "", ""), ("b", "failed", "tissue", "truncated"),
            ("c", "no_tissue", "tile", ""), ("d", "ok", "", ""), ("e", "ok", "", "")]  # fmt: skip
    table = pd.DataFrame(rows, columns=["slide_id", "status", "stage", "reason"])
    assert qc.classes_lost(sheet, table) == [
        "no usable train slides of class y (2 excluded: b (failed at tissue: truncated); "
        "c (no_tissue at tile))"
    ]
    table.loc[1, "status"] = "ok"
    assert qc.classes_lost(sheet, table) == []


def test_an_upstream_marker_is_passed_on_with_its_stage(slides, tmp_path, capsys):
    mask, coords = tmp_path / "dark.png", tmp_path / "dark.h5"
    assert run_cli(capsys, "tissue", slides["dark"], "--out", mask, "--no-fail")[0] == 0
    assert read_marker(mask).stage == "tissue"
    code, _ = run_cli(
        capsys, "tile", slides["dark"], "--mags", 2.5, 5, "--out", coords, "--tissue-mask", mask,
        "--no-fail",
    )  # fmt: skip
    failure = read_marker(coords)
    assert code == 0 and (failure.status, failure.stage) == ("not_brightfield", "tissue")


def _late_stage_records(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """A QC table (c excluded at features), Figure 4's predictions (b's failed) and two
    timings that left b out, as the workflow writes them."""
    qc_tsv = tmp_path / "slides.tsv"
    qc_tsv.write_text(
        "slide_id\tlabel\tsplit\tstatus\tstage\treason\n"
        "a\tx\ttest\tok\t\t\nb\ty\ttest\tok\t\t\n"
        "c\tx\ttrain\tfailed\tfeatures\tcannot read the slide\n"
    )
    predictions = [tmp_path / "a.json", tmp_path / "b.json"]
    predictions[0].write_text(json.dumps({"slide_id": "a", "predicted": "x"}))
    write_marker(predictions[1], Failure("failed", "predict", "cannot read level 0"))
    timings = []
    for device in ("cpu1", "cpu"):
        timings.append(tmp_path / f"throughput_{device}.json")
        record = {"method": "zoommil", "excluded_slides": [{"slide_id": "b", "reason": "eof"}]}
        timings[-1].write_text(json.dumps(record))
    return qc_tsv, predictions, timings


def test_table_notes_name_the_first_excluded_slides_and_count_the_rest():
    """At cohort size the notes named every excluded slide inline (7,861 characters for 120
    slides, repeated in every CSV row) and every output a slide missed (27 timings)."""
    n = 30
    qc_table = pd.DataFrame(
        {
            "slide_id": [f"s{i:02d}" for i in range(n + 1)],
            "label": "x", "split": "test",
            "status": ["ok"] + ["failed"] * n, "stage": ["", *["tile"] * n],
            "reason": ["", *["unreadable"] * n],
        }
    )  # fmt: skip
    late = pd.DataFrame([{
        "slide_id": "s00", "label": "x", "split": "test", "status": "failed",
        "stage": "profile", "reason": "eof",
        "left_out_of": ", ".join(f"m{i} timing (cpu1)" for i in range(27)),
    }])  # fmt: skip
    table = exclusions.exclusions_table(qc_table, [late])
    notes = table_notes.table_notes("big", "random", qc_table, {}, "x", table)
    excluded = next(note for note in notes if note.startswith("excluded: "))
    assert excluded.count("(tile: unreadable)") == exclusions.NOTE_SLIDES_SHOWN == 10
    assert "s10 (tile: unreadable); and 20 more (all, with full reasons: results/qc/" in excluded
    (later,) = [note for note in notes if "left out later" in note]
    assert "s00 (profile: eof; missing from m0 timing (cpu1) and 26 more outputs)" in later


def test_late_stage_failures_are_rows_of_the_exclusions_table(tmp_path):
    qc_tsv, predictions, timings = _late_stage_records(tmp_path)
    outputs = {"table": tmp_path / "exclusions.tsv", "html": tmp_path / "exclusions.html"}
    exclusions.write_exclusions(qc_tsv, predictions, timings, outputs, "tiny")

    table = pd.read_csv(outputs["table"], sep="\t", keep_default_na=False)
    rows = table.set_index(["slide_id", "stage"])
    assert list(table.columns) == exclusions.COLUMNS and len(table) == 3
    assert rows.loc[("c", "features"), "left_out_of"] == "training and evaluation"
    predict = rows.loc[("b", "predict")]
    assert (predict["status"], predict["split"], predict["left_out_of"]) == (
        "failed", "test", "Figure 4",
    )  # fmt: skip
    assert predict["reason"] == "cannot read level 0"
    profile = rows.loc[("b", "profile")]
    assert profile["left_out_of"] == "zoommil timing (cpu1), zoommil timing (cpu)"
    page = outputs["html"].read_text()
    assert "1 of 3 slides excluded (1 failed at features)" in page
    assert "1 evaluated slide left out later: b (predict: cannot read level 0" in page

    notes = table_notes.table_notes("tiny", "random", pd.read_csv(qc_tsv, sep="\t"), {}, "x", table)
    late = [n for n in notes if "left out later" in n]
    assert len(late) == 1 and "b (profile: eof; missing from zoommil timing (cpu1)" in late[0]


def test_figure_4_replaces_a_failed_slide_by_the_next_one():
    """Figure 4's slides (the workflow's `attention_predictions`): the test slides up to the
    n-th whose prediction succeeds, the failed ones kept for the note; one not predicted yet
    holds its place; slides after the n-th success are not even looked at."""
    outcome = {"a": False, "b": True, "c": None, "d": True, "e": True}
    looked = []

    def succeeded(slide: str) -> bool | None:
        looked.append(slide)
        return outcome[slide]

    assert first_successes(list(outcome), 1, succeeded) == ["a", "b"]
    assert first_successes(list(outcome), 2, succeeded) == ["a", "b", "c"]
    # Figure 4's candidates take the classes in turn, each class in its sheet order
    labels = ["normal", "carcinoma", "carcinoma", "atypia", "normal", "atypia"]
    slides = ["n1", "c1", "c2", "a1", "n2", "a2"]
    assert classes_in_turn(slides, labels) == ["n1", "c1", "a1", "n2", "c2", "a2"]
    assert classes_in_turn([], []) == []
    assert first_successes(list(outcome), 3, succeeded) == ["a", "b", "c", "d"]
    assert looked == list("ab") + list("abc") + list("abcd")
    assert first_successes(list(outcome), 9, succeeded) == list(outcome)
    assert first_successes(["a"], 0, succeeded) == []


def test_no_late_exclusions_add_no_note(tmp_path):
    qc_tsv, _, _ = _late_stage_records(tmp_path)
    qc_frame = pd.read_csv(qc_tsv, sep="\t", keep_default_na=False)
    table = exclusions.exclusions_table(qc_frame, [exclusions.profile_rows([])])
    assert exclusions.late_summary(table) is None and list(table["slide_id"]) == ["c"]
    assert exclusions.summary_lines(qc_frame, table) == [
        "1 of 3 slides excluded (1 failed at features)"
    ]


def test_no_fail_does_not_hide_errors_that_are_not_the_slides(slides, tmp_path, capsys):
    # a missing coords file is the workflow's fault, not the slide's: still exit 2, no output
    out = tmp_path / "f.h5"
    line = one_line_error(
        *run_cli(capsys, "features", slides["good"], "--coords", tmp_path / "none.h5",
                 "--out", out, "--weights", "random", "--no-fail")
    )  # fmt: skip
    assert "none.h5" in line and not out.exists()


def test_a_read_error_is_retried_once_with_a_fresh_handle(slides, monkeypatch):
    import openslide

    calls = []
    real = zslide._test_read

    def flaky(handle):
        calls.append(handle)
        if len(calls) == 1:
            raise openslide.OpenSlideError("transient read error")
        return real(handle)

    monkeypatch.setattr(zslide, "_test_read", flaky)
    zslide.open_slide(slides["good"]).close()
    assert len(calls) == 2 and calls[0] is not calls[1]


# --- 2. leakage -----------------------------------------------------------------------------


def test_same_file_in_two_rows_is_an_error_naming_both(slides, tmp_path):
    link = tmp_path / "alias.tiff"
    link.symlink_to(slides["good"])
    path = tmp_path / "s.tsv"
    path.write_text(
        HEADER + f"a\t{slides['good']}\tx\ttrain\t\nb\t{slides['other']}\tx\tval\t\n"
        f"c\t{link}\ty\ttest\t\n"
    )
    with pytest.raises(ZoomMILError, match=r"row 3 \(slide_id 'c'\) and row 1 \(slide_id 'a'\)"):
        zsheet.load_sheet(path)


def test_copies_under_two_names_are_caught_at_qc(slides, tmp_path):
    status = []
    for name in ("good", "copy", "other"):
        report = zslide.inspect_slide(slides[name])
        assert report["quickhash"]
        status.append(tmp_path / f"{name}.json")
        status[-1].write_text(json.dumps(report))
    path = tmp_path / "s.tsv"
    path.write_text(
        HEADER + f"good\t{slides['good']}\tx\ttrain\t\ncopy\t{slides['copy']}\tx\ttest\t\n"
        f"other\t{slides['other']}\ty\tval\t\n"
    )
    frame = zsheet.load_sheet(path)
    with pytest.raises(ZoomMILError, match="'good' \\(train\\) and 'copy' \\(test\\) are the same"):
        qc.inspection_table(frame, status)


def test_a_patient_stays_in_one_split(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(
        "slide_id\tpath\tlabel\tsplit\tpatient\n"
        "a\ta.svs\tx\ttrain\tP1\nb\tb.svs\tx\ttrain\tP1\nc\tc.svs\ty\ttest\tP2\n"
    )
    assert len(zsheet.load_sheet(path)) == 3
    path.write_text(path.read_text() + "d\td.svs\ty\ttest\tP1\n")
    with pytest.raises(ZoomMILError, match="patient 'P1' has slides in 2 splits"):
        zsheet.load_sheet(path)


def test_a_missing_patient_is_no_patient(tmp_path):
    """NA, nan, none or an empty cell in the patient column (as in the mpp column) mean "no
    patient": they used to be one patient 'NA' with slides in 3 splits."""
    path = tmp_path / "s.tsv"
    rows = ["a\ta.svs\tx\ttrain\tNA", "b\tb.svs\tx\tval\tNA", "c\tc.svs\ty\ttest\tNA"]
    rows += ["d\td.svs\tx\ttrain\tnan", "e\te.svs\ty\ttest\tnan", "f\tf.svs\tx\tval\tNone"]
    rows += ["g\tg.svs\ty\ttest\tnone", "h\th.svs\tx\ttrain\t", "i\ti.svs\ty\tval\t "]
    path.write_text("slide_id\tpath\tlabel\tsplit\tpatient\n" + "\n".join(rows) + "\n")
    assert len(zsheet.load_sheet(path)) == 9
    path.write_text(path.read_text() + "j\tj.svs\tx\ttrain\tP1\nk\tk.svs\ty\ttest\tP1\n")
    with pytest.raises(ZoomMILError, match="patient 'P1' has slides in 2 splits"):
        zsheet.load_sheet(path)


# --- 3. coords know their slide -------------------------------------------------------------


def test_features_refuses_the_coords_file_of_another_slide(slides, tmp_path, capsys):
    coords = tmp_path / "good.h5"
    assert run_cli(capsys, "tile", slides["good"], "--mags", 2.5, 5, "--out", coords)[0] == 0
    with h5py.File(coords) as h5:
        assert h5.attrs["slide_path"] == str(slides["good"].resolve())
        assert h5.attrs["slide_quickhash"] == zslide.inspect_slide(slides["good"])["quickhash"]
    # same dimensions and mpp, different slide
    line = one_line_error(
        *run_cli(capsys, "features", slides["other"], "--coords", coords, "--out",
                 tmp_path / "f.h5", "--weights", "random")
    )  # fmt: skip
    assert "other.tiff" in line and "made for another slide" in line and "good.tiff" in line


# --- 4. no silent upsampling ----------------------------------------------------------------


def test_magnification_finer_than_the_scan_is_refused(slides, tmp_path, capsys):
    out = tmp_path / "low.h5"
    line = one_line_error(*run_cli(capsys, "tile", slides["low"], "--mags", 5, 10, "--out", out))
    assert "low.tiff" in line and "10x" in line and "native magnification 4.99x" in line
    assert not out.exists()
    code, _ = run_cli(
        capsys, "tile", slides["low"], "--mags", 5, 10, "--out", out, "--allow-upsampling"
    )
    with h5py.File(out) as h5:
        assert code == 0 and bool(h5.attrs["upsampling"])
    from zoommil.features.extraction import _COPIED_COORDS_ATTRS

    assert "upsampling" in _COPIED_COORDS_ATTRS  # carried into the feature file


# --- 5. not H&E -----------------------------------------------------------------------------


def test_dark_background_slides_are_not_tissue(slides, tmp_path, capsys):
    report = zslide.inspect_slide(slides["dark"])
    assert report["status"] == "not_brightfield" and "fluorescence" in report["reason"]
    assert zslide.inspect_slide(slides["good"])["status"] == "ok"
    line = one_line_error(*run_cli(capsys, "tissue", slides["dark"], "--out", tmp_path / "m.png"))
    assert "dark.tiff" in line and "dark background" in line
    line = one_line_error(
        *run_cli(capsys, "tile", slides["dark"], "--mags", 2.5, 5, "--out", tmp_path / "c.h5")
    )
    assert "dark background" in line


# --- 6. plausible mpp, once -----------------------------------------------------------------


def test_one_mpp_range_accepts_low_magnification_scans(slides, tmp_path, capsys):
    report = zslide.inspect_slide(slides["low"])
    assert report["status"] == "ok" and report["mpp"] == pytest.approx(2.004, rel=1e-6)
    assert zslide.inspect_slide(slides["good"], mpp=2.004)["status"] == "ok"
    placeholder = zslide.inspect_slide(slides["good"], mpp=896.0)
    assert (
        placeholder["status"] == "implausible_mpp"
        and f"{MPP_MIN}-{MPP_MAX}" in (placeholder["reason"])
    )
    schema = yaml.safe_load((REPO / "workflow/schemas/slides.schema.yaml").read_text())
    assert (schema["properties"]["mpp"]["minimum"], schema["properties"]["mpp"]["maximum"]) == (
        MPP_MIN,
        MPP_MAX,
    )
    path = tmp_path / "s.tsv"
    path.write_text(HEADER + "a\ta.svs\tx\ttrain\t2.004\n")
    assert zsheet.load_sheet(path, None, schema).loc["a", "mpp"] == 2.004
    path.write_text(HEADER + "a\ta.svs\tx\ttrain\t896\n")
    with pytest.raises(ZoomMILError, match="outside 0.05-5.0"):
        zsheet.load_sheet(path, None, schema)


# --- 7. output faults -----------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A small tmpfs at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options or ("size=1m",)), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_folder_is_one_line_before_any_work(slides, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as folder:
        for argv in (
            ("inspect", slides["good"], "--out", folder / "q.json"),
            ("tile", slides["good"], "--mags", 2.5, 5, "--out", folder / "c.h5"),
            ("tissue", slides["good"], "--out", folder / "sub" / "m.png"),
        ):
            line = one_line_error(*run_cli(capsys, *argv))
            assert str(folder) in line and ("read-only" in line or "cannot write" in line), line


def test_full_disk_is_one_line_and_leaves_no_temporary_file(slides, tmp_path, capsys):
    with tmpfs(tmp_path / "full", "size=64k") as folder:
        (folder / "filler").write_bytes(b"\0" * 60 * 1024)
        out = folder / "c.h5"
        line = one_line_error(
            *run_cli(capsys, "tile", slides["good"], "--mags", 2.5, 5, "--out", out)
        )
        assert str(out) in line and "no space left" in line
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]


def test_disk_filling_during_an_hdf5_write_is_one_error(tmp_path):
    """HDF5 reports ENOSPC only inside its message; it becomes the same one-line error."""
    from zoommil.io.featurefile import FeatureFileWriter

    with tmpfs(tmp_path / "small", "size=1m") as folder:
        out, n = folder / "f.h5", 2000  # 8 MB of features
        with pytest.raises(ZoomMILError, match=f"cannot write {out}: no space left"):
            with atomic_path(out) as tmp, FeatureFileWriter(tmp, [5.0], [n], 1024) as writer:
                for start in range(0, n, 250):
                    writer.write(0, start, np.ones((250, 1024), np.float32))
                rc = np.zeros((n, 2), np.int64)
                writer.finish([rc], [rc], {})
        assert list(folder.iterdir()) == []


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed


def test_write_failing_midway_is_one_line_and_leaves_no_temporary_file(slides, tmp_path):
    """The probe fits under an 8 KiB file-size limit, the coords file does not (EFBIG)."""
    out = tmp_path / "out" / "c.h5"
    result = subprocess.run(
        [sys.executable, "-m", "zoommil", "tile", str(slides["good"]), "--mags", "5", "10",
         "--out", str(out)],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
    )  # fmt: skip
    line = one_line_error(result.returncode, result.stderr)
    assert str(out) in line and "file too large" in line
    assert not out.parent.exists()  # no temporary file, and the folder the run made is gone


def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_nothing(tmp_path):
    """torch.save to a path failed with a C++ RuntimeError without errno (a traceback,
    exit 1) when the disk filled; the checkpoint is now written by Python (EFBIG here)."""
    out = tmp_path / "run" / "checkpoint.pt"
    code = (
        "import torch, sys\n"
        "from zoommil.errors import ZoomMILError\n"
        "from zoommil.training.checkpoint import save_checkpoint\n"
        "try:\n"
        f"    save_checkpoint({str(out)!r}, {{'w': torch.zeros(64, 64)}}, {{'arch': 'x'}})\n"
        "except ZoomMILError as error:\n"
        "    print(error); sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            preexec_fn=_limit_file_size, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert str(out) in result.stdout and "file too large" in result.stdout
    assert list(out.parent.iterdir()) == []


def test_unwritable_path_is_one_line(slides, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(*run_cli(capsys, "inspect", slides["good"], "--out", blocker / "q.json"))
    assert "cannot write" in line and "file" in line


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    """This host's temporary files of a dead process go (also the older ``.tmp-PID`` names);
    another host's are kept while they change, as this host cannot see its processes: a
    features job on another node lost its file to a `tile` here (review C)."""
    from zoommil.io.atomic import FOREIGN_STALE_SECONDS, this_host

    out = tmp_path / "x.json"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that is no longer alive
    host = this_host()
    stale = tmp_path / f".x.json.tmp-{host}-{child.pid}-0a1b2c3d.json"
    older = tmp_path / f".x.json.tmp-{child.pid}"  # the name before hosts were recorded
    alive = tmp_path / f".x.json.tmp-{host}-{os.getppid()}-0a1b2c3d.json"  # a live writer
    foreign = tmp_path / f".x.json.tmp-{host}x-{child.pid}-0a1b2c3d.json"  # another node's
    abandoned = tmp_path / f".x.json.tmp-{host}x-{child.pid}-99.json"
    for path in (stale, older, alive, foreign, abandoned):
        path.write_text("partial")
    long_ago = time.time() - FOREIGN_STALE_SECONDS - 60
    os.utime(abandoned, (long_ago, long_ago))
    with atomic_path(out) as tmp:
        tmp.write_text("{}")
    assert out.read_text() == "{}"
    assert [p.exists() for p in (stale, older, alive, foreign, abandoned)] == [
        False,
        False,
        True,
        True,
        False,
    ]
    assert remove_stale_temps(out) == []


def test_two_writers_of_one_output_never_share_a_temporary_file(tmp_path):
    """Names carry the host and a random token: two processes with one pid (two nodes, two
    containers) wrote into one temporary file, and the run that said it succeeded got the
    other's features (review C)."""
    from zoommil.io.atomic import temp_name

    out = tmp_path / "f.h5"
    first, second = temp_name(out), temp_name(out)
    assert first != second and first.parent == out.parent
    assert first.name.startswith(".f.h5.tmp-") and first.suffix == ".h5"
    with atomic_path(out) as a, atomic_path(out) as b:  # nested: both in flight at once
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert out.read_text() == "a"  # the last rename wins, whole


def test_hosts_whose_names_differ_only_in_punctuation_or_domain_stay_apart(monkeypatch):
    """``node-1`` and ``node_1`` (or one short name in two domains) gave one host tag, so each
    took the other's live temporary files for its own dead writers'."""
    import socket

    from zoommil.io.atomic import this_host

    def tag(name: str) -> str:
        monkeypatch.setattr(socket, "gethostname", lambda: name)
        return this_host()

    assert tag("node_1") == "node_1"  # a plain name is kept as it is
    tags = [tag(n) for n in ("node_1", "node-1", "gpu1.site-a", "gpu1.site-b", "n" * 50)]
    assert len(set(tags)) == len(tags)
    assert all(re.fullmatch(r"[A-Za-z0-9_]{1,40}", t) for t in tags), tags
    assert tag("node-1") == tag("node-1")  # stable: the next run recognises its own


# --- 8. one-line errors ---------------------------------------------------------------------


def _features(path: Path, dim: int, n: int = 4) -> Path:
    from zoommil.io.featurefile import write_feature_file

    rc = np.zeros((n, 2), np.int64)
    return write_feature_file(path, [5.0], [np.ones((n, dim), np.float32)], [rc], [rc])


def test_flops_on_features_of_another_dimension(tmp_path, capsys):
    from zoommil.training.checkpoint import save_checkpoint
    from zoommil.training.modeling import make_model

    model = make_model("meanmil", 2, 8, [5.0], {})
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tlabel\tsplit\na\tx\ttest\n")
    config = {"arch": "meanmil", "classes": ["x", "y"], "mags": [5.0], "in_dim": 8,
              "sheet": str(sheet), "kwargs": {}}  # fmt: skip
    save_checkpoint(tmp_path / "ckpt.pt", model.state_dict(), config)
    _features(tmp_path / "feats" / "a.h5", dim=16)
    line = one_line_error(
        *run_cli(capsys, "flops", "--checkpoint", tmp_path / "ckpt.pt", "--features-dir",
                 tmp_path / "feats", "--out", tmp_path / "f.json")
    )  # fmt: skip
    assert "a.h5" in line and "dimension 16" in line and "expects 8" in line


def test_feature_dimension_error_names_the_file(tmp_path):
    from zoommil.training.data import SlideRecord, drop_empty

    records = [
        SlideRecord("a", 0, _features(tmp_path / "a.h5", 8)),
        SlideRecord("b", 1, _features(tmp_path / "b.h5", 16)),
    ]
    with pytest.raises(ZoomMILError, match=r"b\.h5: features of dimension 16, but .*a\.h5"):
        drop_empty(records, [5.0])


def test_train_with_a_binary_config(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    line = one_line_error(
        *run_cli(capsys, "train", "--config", config, "--model", "meanmil", "--out", tmp_path / "r")
    )
    assert "config.yaml" in line and "not a text file" in line


def test_zero_or_negative_patch_size(slides, tmp_path, capsys):
    for size in (0, -256):
        line = one_line_error(
            *run_cli(capsys, "tile", slides["good"], "--mags", 5, "--patch-size", size,
                     "--out", tmp_path / "c.h5")
        )  # fmt: skip
        assert "patch size must be" in line and "finer" not in line


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_checkpoint_refusal_gives_no_unsafe_advice(tmp_path):
    from zoommil.training.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "config": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(ZoomMILError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "evil.pt" in message and "refused" in message and "weights_only" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello", "not a torch.save zip archive"),  # torch: "101"
        (b"e", "not a torch.save zip archive"),  # torch: "pop from empty list"
        (b"", "an empty file"),
        (b"\x89HDF\r\n\x1a\n" + bytes(64), "an HDF5 file, such as a coords or feature file"),
        (b"II*\x00" + bytes(64), "a TIFF file, such as a slide"),
        ("truncated", "a truncated or damaged zip archive, e.g. an interrupted copy"),
    ],
)
def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, content, reason):
    """torch's own reasons read `(101)` or `(pop from empty list)`."""
    from zoommil.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    if content == "truncated":
        whole = save_checkpoint(tmp_path / "whole.pt", {"w": torch.zeros(64)}, {}).read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(ZoomMILError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: not a zoommil checkpoint ({reason}; a checkpoint is the checkpoint.pt "
        "`zoommil train` writes)"
    )


def test_sheet_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "slides.tsv"
    path.write_bytes(("\ufeff" + HEADER + "a\ta.svs\tx\ttrain\t\n").encode())
    assert list(zsheet.load_sheet(path).index) == ["a"]


def test_braces_in_a_sheet_path_are_refused_naming_the_row(tmp_path):
    """Snakemake reads braces in an input path as wildcards (planning failed naming no row)."""
    path = tmp_path / "slides.tsv"
    path.write_text(HEADER + "a\ta.svs\tx\ttrain\t\nb\tb}.svs\ty\ttest\t\n")
    with pytest.raises(ZoomMILError, match="row 2 \\(slide_id 'b'\\): path 'b}.svs' contains"):
        zsheet.load_sheet(path)
    folder = tmp_path / "cohort{1}"  # relative paths inherit the sheet's folder
    folder.mkdir()
    inner = folder / "slides.tsv"
    inner.write_text(HEADER + "a\ta.svs\tx\ttrain\t\n")
    with pytest.raises(ZoomMILError, match="slide sheet .*cohort\\{1\\}.*: the path contains"):
        zsheet.load_sheet(inner)
    link = tmp_path / "cohort1"
    link.symlink_to(folder)
    path.write_text(HEADER + f"a\t{link / 'a.svs'}\tx\ttrain\t\n")
    assert list(zsheet.load_sheet(path).index) == ["a"]  # the advice: a link without braces


def test_a_sheet_that_is_not_utf8_says_how_to_fix_it(tmp_path):
    """A Windows Excel export (cp1252) used to fail with 'not a text file'."""
    path = tmp_path / "slides.tsv"
    path.write_bytes((HEADER + "café\tcafé.svs\tx\ttrain\t\n").encode("cp1252"))
    for read in (zsheet.load_sheet, zsheet.read_sheet):
        with pytest.raises(ZoomMILError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"slide sheet {path}: not UTF-8 text"), message
        assert "save it as a UTF-8 CSV or TSV" in message and "\n" not in message


def test_comma_separated_tsv(tmp_path):
    path = tmp_path / "slides.tsv"
    path.write_text("slide_id,path,label,split\na,a.svs,x,train\n")
    with pytest.raises(ZoomMILError, match="looks comma-separated"):
        zsheet.load_sheet(path)
    with pytest.raises(ZoomMILError, match="looks comma-separated"):
        zsheet.read_sheet(path)


def test_unreadable_ome_tiff_gets_a_specific_reason(tmp_path):
    path = tmp_path / "multichannel.ome.tif"
    data = np.zeros((3, 256, 256), np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"})
    report = zslide.inspect_slide(path)
    assert report["status"] == "not_a_slide"
    assert report["reason"].startswith("OME-TIFF that OpenSlide cannot read: uint16 pixels")
    assert "channel" in report["reason"]


def test_empty_split_is_caught_with_the_sheet(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(HEADER + "a\ta.svs\tx\ttrain\t\nb\tb.svs\ty\ttest\t\n")
    frame = zsheet.load_sheet(path)
    with pytest.raises(ZoomMILError, match="no val slides"):
        zsheet.check_splits(frame, path)


def test_a_configured_class_without_train_slides_is_caught_with_the_sheet(tmp_path):
    """classes [normal, atypia, carcinoma] with no carcinoma train row trained silently on two."""
    path = tmp_path / "s.tsv"
    rows = "a\ta.svs\tnormal\ttrain\t\nb\tb.svs\tatypia\ttrain\t\n"
    rows += "c\tc.svs\tcarcinoma\tval\t\nd\td.svs\tcarcinoma\ttest\t\n"
    path.write_text(HEADER + rows)
    classes = ["normal", "atypia", "carcinoma"]
    frame = zsheet.load_sheet(path, classes)
    with pytest.raises(ZoomMILError, match=r"no train slides of class\(es\) carcinoma"):
        zsheet.check_splits(frame, path, classes=classes)


def test_an_inferred_class_without_train_slides_is_caught_with_the_sheet(tmp_path):
    """With `classes: null` the classes are the sheet's labels: a label only in val and test
    passed the check, and the model got an output it was never trained on."""
    path = tmp_path / "s.tsv"
    rows = "a\ta.svs\tnormal\ttrain\t\nb\tb.svs\tatypia\ttrain\t\n"
    rows += "c\tc.svs\tcarcinoma\tval\t\nd\td.svs\tcarcinoma\ttest\t\n"
    rows += "e\te.svs\tnormal\tval\t\nf\tf.svs\tnormal\ttest\t\n"
    path.write_text(HEADER + rows)
    frame = zsheet.load_sheet(path)
    for classes in (None, ["normal", "atypia", "carcinoma"]):
        with pytest.raises(ZoomMILError) as caught:
            zsheet.check_splits(frame, path, classes=classes)
        text = str(caught.value)
        assert "no train slides of class(es) carcinoma (it has 1 val, 1 test slides)" in text
        assert ("remove their rows" in text) == (classes is None), text


def test_labels_that_differ_only_in_case_are_refused_with_the_sheet(tmp_path):
    """Two rows labelled `Tumor` in a `tumor`/`normal` sheet made three classes with
    `classes: null`, silently: a binary task trained and scored as a three-class one."""
    path = tmp_path / "s.tsv"
    rows = "a\ta.svs\ttumor\ttrain\t\nb\tb.svs\tnormal\ttrain\t\n"
    rows += "c\tc.svs\tTumor\ttrain\t\nd\td.svs\tnormal\tval\t\ne\te.svs\ttumor\ttest\t\n"
    path.write_text(HEADER + rows)
    frame = zsheet.load_sheet(path)
    message = r"labels 'Tumor' and 'tumor' differ only in case, so they would be separate"
    with pytest.raises(ZoomMILError, match=message):
        zsheet.check_splits(frame, path)
    with pytest.raises(ZoomMILError, match=message):  # zoommil train's own reading
        resolve_classes(frame, None, str(path))
    config = {"features_dir": "f", "sheet": str(path), "mags": [10]}
    with pytest.raises(ZoomMILError, match="train.yaml: classes: labels 'Tumor' and 'tumor'"):
        parse_config({**config, "classes": ["normal", "Tumor", "tumor"]}, "train.yaml")
    booleans = yaml.safe_load("classes: [no, yes]")  # YAML 1.1: booleans
    with pytest.raises(ZoomMILError, match=r"False is a boolean, not a label .*quote the names"):
        parse_config({**config, **booleans}, "train.yaml")


def test_a_class_without_val_slides_is_warned_with_the_sheet(tmp_path, caplog):
    """A class absent from val left model selection blind to it, silently (with only
    `normal` in val, an always-`normal` model has val weighted F1 1.0)."""
    path = tmp_path / "s.tsv"
    rows = "a\ta.svs\tnormal\ttrain\t\nb\tb.svs\ttumor\ttrain\t\n"
    rows += "c\tc.svs\tnormal\tval\t\nd\td.svs\ttumor\ttest\t\n"

    def warnings_of(extra: str) -> str:
        caplog.clear()
        path.write_text(HEADER + rows + extra)
        with caplog.at_level(logging.WARNING):
            zsheet.check_splits(zsheet.load_sheet(path), path)
        return caplog.text

    assert "no val slides of class(es) tumor: model selection" in warnings_of("")
    said = warnings_of("e\te.svs\ttumor\tval\t\n")
    assert "no val slides" not in said
    assert "no test slides of class(es) normal: the tables' AUC will be n/a" in said
    assert "(0, and in macro F1, where a model predicts it for a test slide)" in said
    assert "no test slides" not in warnings_of("e\te.svs\ttumor\tval\t\nf\tf.svs\tnormal\ttest\t\n")


def test_a_single_class_sheet_is_caught_with_the_sheet(tmp_path):
    """With `classes: null` a sheet of one label passed, and training fitted a one-class
    'classifier' whose every metric is trivially perfect or undefined."""
    path = tmp_path / "s.tsv"
    rows = "a\ta.svs\tnormal\ttrain\t\nb\tb.svs\tnormal\tval\t\nc\tc.svs\tnormal\ttest\t\n"
    path.write_text(HEADER + rows)
    frame = zsheet.load_sheet(path)
    with pytest.raises(ZoomMILError, match="one label, 'normal'.: a classifier needs at least two"):
        zsheet.check_splits(frame, path)
    with pytest.raises(ZoomMILError, match="fewer than two classes"):
        zsheet.check_splits(frame, path, classes=["normal"])


def test_semicolon_separated_sheet_says_so(tmp_path):
    for name in ("slides.csv", "slides.tsv"):
        path = tmp_path / name
        path.write_text("slide_id;path;label;split\na;a.svs;x;train\n")
        with pytest.raises(ZoomMILError, match="looks semicolon-separated .header 'slide_id;path"):
            zsheet.load_sheet(path)


def test_missing_column_error_shows_the_header(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("slide_id\tfile\tlabel\tsplit\na\ta.svs\tx\ttrain\n")
    with pytest.raises(ZoomMILError, match=r"missing column\(s\) path \(header: slide_id, file,"):
        zsheet.load_sheet(path)


def test_sheet_columns_match_whatever_their_case(tmp_path):
    """A `Patient` column was an unknown column: the patient-leakage check was skipped."""
    path = tmp_path / "s.tsv"
    path.write_text(
        "Slide_ID\tPath\tLabel\tSplit\tMPP\tPatient\n"
        "a\ta.svs\tx\ttrain\t0.5\tp1\nb\tb.svs\ty\ttest\t\tp1\n"
    )
    with pytest.raises(ZoomMILError, match="patient 'p1' has slides in 2 splits"):
        zsheet.load_sheet(path)
    path.write_text("Slide_ID\tPath\tLabel\tSplit\tMPP\na\ta.svs\tx\ttrain\t0.5\n")
    frame = zsheet.load_sheet(path)
    assert frame.loc["a", "mpp"] == 0.5
    assert list(zsheet.read_sheet(path)["slide_id"]) == ["a"]


def test_sheet_path_with_a_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "s.tsv").write_text(HEADER + "a\ta.svs\tx\ttrain\t\n")
    assert zsheet.load_sheet("~/s.tsv").loc["a", "path"] == str(tmp_path / "a.svs")
    assert list(zsheet.read_sheet("~/s.tsv")["slide_id"]) == ["a"]


# --- 9. README ------------------------------------------------------------------------------


def test_readme_says_what_to_do_after_a_killed_run():
    text = (REPO / "README.md").read_text()
    quick_start = text[: text.index("## What the demo shows")]
    assert "snakemake --unlock" in quick_start and "same command" in quick_start
    for needle in ("patient", "quickhash", "results/qc/slides.tsv", "--allow-upsampling"):
        assert needle in text, needle


# --- 10. a killed run -----------------------------------------------------------------------


def _preprocessing_workdir(tmp_path: Path) -> tuple[Path, Path]:
    """A workflow copy with four small slides (a train slide of each class, a val and a test
    slide) at two magnifications (enough for preprocessing, and quick)."""
    from workflow_config import harness

    workdir = harness.copy_workflow(tmp_path / "run", with_sources=False)
    rows = []
    for i, (label, split) in enumerate(
        [("normal", "train"), ("atypia", "train"), ("atypia", "val"), ("normal", "test")]
    ):
        path = write_pyramid_tiff(workdir / f"s{i}.tiff", width=768, height=512, mpp=1.0, seed=i)
        rows.append(f"s{i}\t{path}\t{label}\t{split}\t\n")
    (workdir / "slides.tsv").write_text(HEADER + "".join(rows))
    config = harness.load_config()
    config["preprocess"]["mags"] = [5, 10]
    config["classes"] = None  # the sheet's labels
    return workdir, harness.write_config(workdir, config)


def _wait_for_running_job(
    process: subprocess.Popen, workdir: Path, rule: str, timeout: float = 120
) -> Path:
    """The log of a `rule` job that has started and not yet written its output (polled)."""
    logs = workdir / "results" / "logs" / rule
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before a job could be killed"
        for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            if not (workdir / "results" / rule / f"{log.stem}.h5").exists():
                return log
        time.sleep(0.05)
    raise AssertionError(f"no {rule} job started within {timeout} s")


def _marked_incomplete(workdir: Path) -> list[Path]:
    """Outputs Snakemake still marks incomplete. Why any: a job that finished just before the
    kill keeps its mark, and Snakemake does not check jobs behind a checkpoint; the atomic
    writes make such an output whole, so it is kept (this test checks that it is)."""
    markers = (workdir / ".snakemake" / "incomplete").glob("*")
    return [workdir / base64.b64decode(m.name).decode() for m in markers if m.is_file()]


@pytest.mark.slow
def test_a_run_killed_mid_job_completes_after_unlock(tmp_path):
    """kill -9 of the whole run while a features job runs, then `snakemake --unlock` and the
    same command: the run completes, every output is whole and no temporary file is left."""
    from workflow_config import harness

    workdir, configfile = _preprocessing_workdir(tmp_path)
    args = ["results/qc/slides.tsv", "--configfile", str(configfile)]  # the target first
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, env=env,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        killed = _wait_for_running_job(process, workdir, "features")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # snakemake and every job it started
        process.wait()
    assert not (workdir / args[0]).exists()
    locked = harness.snakemake(workdir, *args, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    harness.snakemake(workdir, "--unlock", *args)
    harness.snakemake(workdir, *args)

    table = pd.read_csv(workdir / args[0], sep="\t", keep_default_na=False)
    assert set(table["status"]) == {"ok"} and len(table) == 4
    with h5py.File(workdir / "results" / "features" / f"{killed.stem}.h5", "r") as h5:
        assert "status" not in h5.attrs and len(h5.keys()) > 0  # features, not a marker
    assert not list((workdir / "results").rglob("*.tmp-*"))
    for output in _marked_incomplete(workdir):  # a job done just before the kill: whole
        assert output.stat().st_size > 0, output
        if output.suffix == ".h5":
            with h5py.File(output, "r") as h5:
                assert len(h5.keys()) > 0, output
    dry = harness.snakemake(workdir, "-n", *args)
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.slow
def test_a_failed_run_ends_naming_the_failed_jobs_logs(tmp_path):
    """Snakemake ended a failed run with "Look above for error messages" and its own log:
    with keep-going (the cluster profiles) the failed job's block lay far above. The run's
    last lines name each failed job's log (zoommil.workflow.joblogs)."""
    from workflow_config import harness

    workdir, configfile = _preprocessing_workdir(tmp_path)
    with (workdir / "slides.tsv").open("a") as sheet:  # one slide under two names: QC stops
        sheet.write(
            f"s0copy\t{shutil.copy(workdir / 's0.tiff', workdir / 'c.tiff')}\tnormal\tval\t\n"
        )
    args = ["results/qc/inspection.tsv", "--keep-going"]
    run = harness.snakemake(workdir, *args, configfile=configfile, check=False)
    end = (run.stdout + run.stderr).split("Look above for error messages")[-1]
    assert run.returncode != 0
    assert "zoommil: 1 job(s) failed" in end, end
    assert "  qc_inspect: results/logs/qc_inspect/qc_inspect.log" in end, end


def test_the_failed_jobs_are_read_from_snakemakes_log_without_the_retried_ones(tmp_path):
    """A job that failed and was restarted (`retries`) and then succeeded is left out; a job
    that failed on every try is named once, with the SLURM log the executor adds."""
    from zoommil.workflow import joblogs

    text = """
Error in rule features:
    message: None
    jobid: 7
    log: results/logs/features/a.log, .snakemake/slurm_logs/rule_features/a/11.log (check log file(s) for error details)
Trying to restart job 7.
Error in rule features:
    jobid: 9
    log: results/logs/features/b.log (check log file(s) for error details)
Trying to restart job 9.
Error in rule features:
    jobid: 9
    log: results/logs/features/b.log, .snakemake/slurm_logs/rule_features/b/14.log (check log file(s) for error details)
Error in rule tables:
    jobid: 3
    log: results/logs/tables/tables.log (check log file(s) for error details)
"""  # noqa: E501
    log = tmp_path / "run.snakemake.log"
    log.write_text(text)
    assert joblogs.failed_logs_message([log, tmp_path / "gone.log"]) == [
        "zoommil: 2 job(s) failed; the reason is at the end of each log:",
        "  features: results/logs/features/b.log, .snakemake/slurm_logs/rule_features/b/14.log",
        "  tables: results/logs/tables/tables.log",
    ]
    # one path, as a Snakemake other than 9's may pass it: the file, not its characters
    assert joblogs.failed_logs_message(str(log))[0].startswith("zoommil: 2 job(s) failed")
    log.write_text(text.split("Error in rule features:\n    jobid: 9")[0])
    assert joblogs.failed_logs_message([log]) == []  # restarted, and then done


def test_a_job_the_scheduler_refused_is_named_with_the_schedulers_reason(tmp_path):
    """A job sbatch refused (here: a cap on the jobs a user may queue) never ran, but the run's
    last lines sent the user to its rule log, an earlier run's or none. They now say it was
    refused, give sbatch's reason once and, for a submit cap, the knob (`jobs`). The text is
    Snakemake 9.27.1's log of plugin 2.8.0 with an `sbatch` that fails as a QOS cap does."""
    from zoommil.workflow import joblogs

    refusal = """Error in rule inspect:
    message: SLURM sbatch failed. The error message was 'sbatch: error: QOSMaxSubmitJobPerUserLimit
sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)'.
    sbatch call:
        sbatch --parsable --job-name x --output .snakemake/slurm_logs/rule_inspect/{s}/%j.log --wrap="python -m snakemake"
For further error details see the cluster/cloud log and the log files of the involved rule(s).
    jobid: {jobid}
    input: data/{s}.tiff
    output: results/qc/{s}.json
    log: results/logs/inspect/{s}.log (check log file(s) for error details)
    shell:
        zoommil inspect data/{s}.tiff --out results/qc/{s}.json > results/logs/inspect/{s}.log 2>&1
        (command exited with non-zero exit code)
Logfile results/logs/inspect/{s}.log:
================================================================================
INFO zoommil.cli: zoommil inspect: 0.1 s wall, 0.0 CPU-s, peak RSS 62 MB
================================================================================
"""  # noqa: E501
    ran = """Error in rule tables:
    message: None
    jobid: 3
    log: results/logs/tables/tables.log, .snakemake/slurm_logs/rule_tables/12.log (check log file(s) for error details)
"""  # noqa: E501
    log = tmp_path / "run.snakemake.log"
    log.write_text(
        refusal.format(s="a", jobid=1)
        + "Trying to restart job 1.\n"
        + refusal.format(s="a", jobid=1)
        + ran
        + refusal.format(s="b", jobid=2)
    )
    reason = (
        "sbatch: error: QOSMaxSubmitJobPerUserLimit; Batch job submission failed: Job violates "
        "accounting/QOS policy (job submit limit, user's size and/or time limits)"
    )
    lines = joblogs.failed_logs_message([log])
    assert lines[:5] == [
        "zoommil: 3 job(s) failed; the reason is at the end of each log, but 2 the scheduler "
        "refused never ran (a log named for them is an earlier run's):",
        "  inspect: results/logs/inspect/a.log (refused)",
        "  tables: results/logs/tables/tables.log, .snakemake/slurm_logs/rule_tables/12.log",
        "  inspect: results/logs/inspect/b.log (refused)",
        f"zoommil: the scheduler refused 2 job(s): {reason}",
    ]
    assert "MaxSubmitJobs" in lines[5] and "`jobs`" in lines[5] and len(lines) == 6
    # cluster-generic's wording, another reason: the reason, no word of a cap
    log.write_text(
        "Error in rule tissue:\n    message: Error submitting jobscript (exit code 1):\n"
        "sbatch: error: invalid partition specified: gpu\n\n"
        "    jobid: 4\n    log: results/logs/tissue/a.log (check log file(s) for error details)\n"
    )
    assert joblogs.failed_logs_message([log])[1:] == [
        "  tissue: results/logs/tissue/a.log (refused)",
        "zoommil: the scheduler refused 1 job(s): sbatch: error: invalid partition specified: gpu",
    ]


def test_a_refusal_keeps_sbatchs_cause_beside_its_general_line(tmp_path):
    """sbatch prints the cause first and 'Batch job submission failed: ...' last; the last line
    alone said "Invalid partition name specified" without the partition, and "Requested node
    configuration is not available" without the request. Two refused jobs with other causes
    are two reasons. The text is Snakemake 9.27.1's log (plugin 2.8.0, a stub `sbatch`)."""
    from zoommil.workflow import joblogs

    block = """[Mon Dec  7 11:28:53 2026]
Error in rule work:
    message: SLURM sbatch failed. The error message was 'sbatch: error: {cause}
sbatch: error: Batch job submission failed: {general}'.
    sbatch call:
        sbatch --parsable --job-name 118cc601 --output .snakemake/slurm_logs/rule_work/{s}/%j.log
For further error details see the cluster/cloud log and the log files of the involved rule(s).
    jobid: {jobid}
    output: out/{s}.txt
    log: logs/work/{s}.log (check log file(s) for error details)
    shell:
        exit 1
        (command exited with non-zero exit code)
Logfile logs/work/{s}.log not found.
"""
    log = tmp_path / "run.snakemake.log"
    log.write_text(
        block.format(
            s="b", jobid=2, cause="invalid partition specified: gpu",
            general="Invalid partition name specified",
        )
        + block.format(
            s="c", jobid=3, cause="CPU count per node can not be satisfied",
            general="Requested node configuration is not available",
        )
    )  # fmt: skip
    assert joblogs.failed_logs_message([log])[3:] == [
        "zoommil: the scheduler refused 1 job(s): sbatch: error: invalid partition specified: "
        "gpu; Batch job submission failed: Invalid partition name specified",
        "zoommil: the scheduler refused 1 job(s): sbatch: error: CPU count per node can not be "
        "satisfied; Batch job submission failed: Requested node configuration is not available",
    ]


def test_a_refusal_whose_reason_went_to_the_terminal_says_so(tmp_path):
    """The cluster-generic plugin (1.0.9) keeps only the submit command's stdout in the job's
    error; sbatch's reason on stderr reached the terminal alone, and the run's last line gave
    the plugin's 'Error submitting jobscript (exit code 1):' as the scheduler's reason (one
    reason for three jobs refused three ways). It now says where the reason went."""
    from zoommil.workflow import joblogs

    log = tmp_path / "run.snakemake.log"
    log.write_text(
        "Error in rule work:\n    message: Error submitting jobscript (exit code 1):\n\n"
        "For further error details see the cluster/cloud log and the log files of the involved "
        "rule(s).\n    jobid: 2\n    output: out/b.txt\n"
        "    log: logs/work/b.log (check log file(s) for error details)\n"
    )
    lines = joblogs.failed_logs_message([log])
    assert lines[1] == "  work: logs/work/b.log (refused)"
    assert lines[2] == (
        "zoommil: the scheduler refused 1 job(s): no reason in Snakemake's log (the submit "
        "command wrote it to stderr, which went to the terminal only)"
    )
