"""Bad slides through the CLI: one-line error naming the slide and reason, exit 2, no output.

Each bad input is its own test; every one runs `zoommil tile`, `zoommil tissue` and
`zoommil inspect --out` (the commands that write a file for a slide).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from zoommil.cli import main
from zoommil.io.coords import load_coords

COMMANDS = ("tile", "tissue", "inspect")


def run_cli(command: str, slide: Path, out_dir: Path, *extra: str) -> tuple[int, Path]:
    if command == "tile":
        out = out_dir / "coords.h5"
        argv = ["tile", str(slide), "--mags", "5", "10", "--out", str(out)]
    elif command == "tissue":
        out = out_dir / "mask.png"
        argv = ["tissue", str(slide), "--out", str(out)]
    else:
        out = out_dir / "qc.json"
        argv = ["inspect", str(slide), "--out", str(out)]
    return main([*argv, *extra]), out


def assert_clean_failure(command, slide, tmp_path, capsys, *reason_parts, extra=()):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    capsys.readouterr()
    rc, out = run_cli(command, slide, out_dir, *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"zoommil {command}: error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert slide.name in line
    for part in reason_parts:
        assert part in line, line
    assert not out.exists()
    assert list(out_dir.iterdir()) == []  # no partial or temporary file left behind
    return line


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file(command, tmp_path, capsys):
    slide = tmp_path / "nope.svs"
    assert_clean_failure(command, slide, tmp_path, capsys, f"file not found: {slide.resolve()}")


@pytest.mark.parametrize("command", COMMANDS)
def test_text_file_renamed_svs(command, tmp_path, capsys):
    slide = tmp_path / "notes.svs"
    slide.write_text("patient list\nthis is not a slide\n")
    assert_clean_failure(command, slide, tmp_path, capsys, "not a whole-slide image", "text")


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_real_slide(command, slides_dir, tmp_path, capsys):
    data = (slides_dir / "CMU-1-Small-Region.svs").read_bytes()
    slide = tmp_path / "cut.svs"
    slide.write_bytes(data[: len(data) * 6 // 10])
    assert_clean_failure(command, slide, tmp_path, capsys, "truncated")


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_synthetic_slide(command, make_slide, tmp_path, capsys):
    src = make_slide("full.tiff", width=512, height=512, levels=2)
    data = src.read_bytes()
    slide = tmp_path / "cut.tiff"
    slide.write_bytes(data[: len(data) - 300])
    assert_clean_failure(command, slide, tmp_path, capsys, "truncated")


@pytest.mark.parametrize("command", COMMANDS)
def test_non_wsi_plain_tiff(command, tmp_path, capsys):
    slide = tmp_path / "photo.tif"
    tifffile.imwrite(slide, np.full((64, 96, 3), 200, dtype=np.uint8))  # strips, no tiles
    assert_clean_failure(
        command, slide, tmp_path, capsys, "plain (untiled) TIFF", "not a whole-slide image"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_tiles(command, make_slide, tmp_path, capsys):
    slide = make_slide("corrupt.tiff", width=768, height=512, levels=2)
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(slide, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(b"\xff" * count)
    assert_clean_failure(command, slide, tmp_path, capsys, "pixels cannot be decoded")


@pytest.mark.parametrize("command", COMMANDS)
def test_slide_without_mpp(command, make_slide, tmp_path, capsys):
    slide = make_slide("nompp.tiff", width=512, height=512, levels=2, mpp=None)
    assert_clean_failure(command, slide, tmp_path, capsys, "no resolution (mpp)", "--mpp")
    rc, out = run_cli(command, slide, tmp_path, "--mpp", "0.5")
    assert rc == 0 and out.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_implausible_mpp(command, make_slide, tmp_path, capsys):
    slide = make_slide("dpi72.tiff", width=512, height=512, levels=2, mpp=896.0)
    line = assert_clean_failure(command, slide, tmp_path, capsys, "implausible", "896", "--mpp")
    assert "0.05-5.0" in line
    rc, out = run_cli(command, slide, tmp_path, "--default-mpp", "0.5")
    assert rc == 0 and out.exists()


def test_implausible_override(make_slide, tmp_path, capsys):
    slide = make_slide("ok.tiff", width=512, height=512, levels=2)
    assert_clean_failure("tile", slide, tmp_path, capsys, "--mpp 25", extra=("--mpp", "25"))


def test_real_prostate_rejected_then_overridden(slides_dir, tmp_path, capsys):
    slide = slides_dir / "prostate-he-generic.tiff"
    assert_clean_failure("tile", slide, tmp_path, capsys, "implausible", "896")
    rc, out = run_cli("tile", slide, tmp_path, "--mpp", "0.5")
    assert rc == 0
    coords = load_coords(out)
    assert coords.attrs["mpp_source"] == "override" and coords.sides == [1024, 512]


def test_bad_mags_refused(synthetic_slide, tmp_path, capsys):
    out = tmp_path / "c.h5"
    rc = main(["tile", str(synthetic_slide), "--mags", "5", "15", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "5x and 15x are not power-of-two multiples" in err
    assert not out.exists()


def test_all_white_slide_exclude_fails(make_slide, tmp_path, capsys):
    slide = make_slide("white.tiff", width=1024, height=1024, levels=2, tissue=False)
    assert_clean_failure(
        "tile", slide, tmp_path, capsys, "no tissue found", extra=("--no-tissue", "exclude")
    )


def test_all_white_slide_exclude_no_fail_marker_says_no_tissue(make_slide, tmp_path):
    """The marker's status is the QC table's `no_tissue`, not a generic `failed`."""
    from zoommil.workflow.failure import read_marker

    slide = make_slide("white.tiff", width=1024, height=1024, levels=2, tissue=False)
    out = tmp_path / "c.h5"
    argv = ["tile", str(slide), "--mags", "10", "20", "--out", str(out), "--no-tissue"]
    assert main([*argv, "exclude", "--no-fail"]) == 0
    failure = read_marker(out)
    assert failure is not None and failure.status == "no_tissue" and failure.stage == "tile"
    assert failure.reason.startswith("no tissue found")


def test_all_white_slide_all_policy_warns_and_keeps_all(make_slide, tmp_path, caplog):
    slide = make_slide("white.tiff", width=1024, height=1024, levels=2, tissue=False)
    out = tmp_path / "c.h5"
    with caplog.at_level(logging.WARNING):
        rc = main(
            ["tile", str(slide), "--mags", "10", "20", "--out", str(out), "--no-tissue", "all"]
        )
    assert rc == 0
    assert "no tissue found" in caplog.text and "keeping all" in caplog.text
    coords = load_coords(out)
    assert coords.num_patches() == [4, 16]  # 1024 px / 512 px parents -> 2 x 2
    assert coords.attrs["no_tissue_applied"] is True
    assert coords.attrs["no_tissue_policy"] == "all"
    np.testing.assert_array_equal(coords.tissue_fraction, 0.0)


@pytest.mark.parametrize(
    ("name", "status"),
    [("missing.svs", "missing"), ("notes.svs", "not_a_slide"), ("nompp.tiff", "no_mpp")],
)
def test_inspect_no_fail_records_status(name, status, make_slide, tmp_path, capsys):
    slide = tmp_path / name
    if name == "notes.svs":
        slide.write_text("hello")
    elif name == "nompp.tiff":
        make_slide(name, width=256, height=256, levels=1, mpp=None)
    out = tmp_path / "qc" / "x.json"
    assert main(["inspect", str(slide), "--out", str(out), "--no-fail"]) == 0
    report = json.loads(out.read_text())
    assert report["status"] == status and report["reason"]
    assert report["path"] == str(slide)


def test_copy_of_good_slide_still_fine(slides_dir, tmp_path):
    """Control: the same checks pass on an intact copy (the failures above are real)."""
    slide = tmp_path / "cmu.svs"
    shutil.copy(slides_dir / "CMU-1-Small-Region.svs", slide)
    rc, out = run_cli("inspect", slide, tmp_path)
    assert rc == 0 and json.loads(out.read_text())["status"] == "ok"


def test_empty_file(tmp_path, capsys):
    slide = tmp_path / "empty.svs"
    slide.write_bytes(b"")
    assert_clean_failure("tile", slide, tmp_path, capsys, "file is empty")
