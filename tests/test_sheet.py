"""Slide-sheet mistakes made by hand or by other tools, each named in one line.

Both readers (`load_sheet`, the workflow's; `read_sheet`, the commands') go through
`read_table`, so each malformed sheet is read by both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoommil.errors import ZoomMILError
from zoommil.io import sheet as zsheet
from zoommil.wsi import slide as zslide

HEADER = "slide_id\tpath\tlabel\tsplit\n"
SLIDE_SCHEMA = yaml.safe_load(
    (
        Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "slides.schema.yaml"
    ).read_text()
)
READERS = (zsheet.load_sheet, zsheet.read_sheet)


def _one_line_error(read, path: Path) -> str:
    with pytest.raises(ZoomMILError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        # a trailing tab (or comma) at the end of every row: pandas took slide_id as the index
        ("trailing.tsv", HEADER + "t001\ta.tiff\tnormal\ttrain\t\nt002\tb.tiff\ttumor\tval\t\n"),
        ("trailing.csv", "slide_id,path,label,split\nt001,a.tiff,normal,train,\n"),
        # R's write.table(sep="\t") default: row names, and no header cell above them
        ("r_style.tsv", HEADER + "1\tt001\ta.tiff\tnormal\ttrain\n2\tt002\tb.tiff\ttumor\tval\n"),
        ("r_style.csv", 'slide_id,path,label,split\n"1","t001","a.tiff","normal","train"\n'),
    ],
)
def test_rows_with_one_more_field_than_the_header_are_refused(tmp_path, name, text):
    """Every row one field longer than the header: pandas silently made the first column the
    index, so `load_sheet` crashed with a raw TypeError (its row numbers were slide ids) and
    `read_sheet` shifted every column (`slide a.tiff has split ''`)."""
    path = tmp_path / name
    path.write_text(text)
    for read in READERS:
        message = _one_line_error(read, path)
        assert "one more field than the header" in message, message
        assert "row.names=FALSE" in message, message
        assert ("comma" if name.endswith(".csv") else "tab") in message, message


def test_a_sheet_with_only_a_header_is_not_taken_for_one_with_row_names(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(HEADER)
    assert "no rows" in _one_line_error(zsheet.load_sheet, path)


def test_a_missing_slide_names_the_absolute_path_that_was_tried(tmp_path, monkeypatch):
    """The reason lands alone in results/qc/inspection.tsv and QC's errors: 'file not found'
    did not say where the file was looked for."""
    monkeypatch.chdir(tmp_path)
    report = zslide.inspect_slide("slides/nope.svs")
    assert report["status"] == "missing"
    assert report["reason"] == f"file not found: {(tmp_path / 'slides/nope.svs').resolve()}"


def test_a_missing_sheet_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    """`--config sheet=work/slides.tsv` with `-d work` looked in work/work/ and said only
    "not found: work/slides.tsv" (review C)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZoomMILError) as error:
        zsheet.read_sheet("work/slides.tsv")
    assert str(error.value) == (
        f"slide sheet not found: work/slides.tsv (looked for {tmp_path / 'work/slides.tsv'})"
    )
    with pytest.raises(ZoomMILError, match=r"not found: /nowhere/s\.tsv$"):
        zsheet.read_sheet("/nowhere/s.tsv")


def test_paths_that_exist_only_relative_to_the_working_directory_get_a_hint(
    tmp_path, monkeypatch, caplog
):
    """Sheet paths are relative to the sheet's folder; written relative to where snakemake
    runs, every slide was 'missing' at inspection with no word on why."""
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.svs").write_bytes(b"x")
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "s.tsv"
    path.write_text(HEADER + "a\tslides/a.svs\tx\ttrain\nb\tslides/b.svs\ty\ttest\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        frame = zsheet.load_sheet(path)
    assert frame.loc["a", "path"] == str(tmp_path / "config" / "slides" / "a.svs")  # unchanged
    assert "1 slide path(s)" in caplog.text, caplog.text
    assert "row 1 (slide_id 'a'): 'slides/a.svs'" in caplog.text
    assert "relative to the sheet's folder" in caplog.text
    caplog.clear()
    monkeypatch.chdir(tmp_path / "config")  # run from the sheet's folder: no hint about it
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        zsheet.load_sheet(path)
    assert "current directory" not in caplog.text, caplog.text


def test_slide_files_that_do_not_exist_get_a_warning(tmp_path, monkeypatch, caplog):
    """A sheet moved away from the slides its relative paths were written for: every slide
    was 'missing' at inspection and the run stopped at QC, while the dry run said nothing."""
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "a.svs").write_bytes(b"x")
    (tmp_path / "sheets").mkdir()
    path = tmp_path / "sheets" / "s.tsv"
    path.write_text(HEADER + "a\tcohort/a.svs\tx\ttrain\nb\tcohort/b.svs\ty\ttest\n")
    monkeypatch.chdir(tmp_path / "sheets")
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        zsheet.load_sheet(path)
    folder = tmp_path / "sheets"
    assert (
        f"2 of 2 slide file(s) do not exist (e.g. row 1 (slide_id 'a'): {folder}/cohort/a.svs), "
        f"relative paths being relative to the sheet's folder {folder}; a slide not yet "
        "encoded is excluded as missing at inspection, one whose features were made stops the run"
    ) in caplog.text, caplog.text
    caplog.clear()
    path.write_text(HEADER + "a\t../cohort/a.svs\tx\ttrain\n")  # every file there
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        zsheet.load_sheet(path)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("column", "meant"),
    [("mpp_overide", "mpp_override"), ("MPP (um)", "mpp"), ("patient id", "patient")],
)
def test_a_misspelled_optional_column_gets_a_warning(tmp_path, caplog, column, meant):
    """Unknown columns are ignored: a misspelled mpp_override left a slide at its wrong
    metadata mpp, a misspelled patient column skipped the leakage check, silently."""
    path = tmp_path / "s.tsv"
    path.write_text(f"slide_id\tpath\tlabel\tsplit\t{column}\nb\tb.svs\tx\ttrain\t0.5\n")
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        zsheet.load_sheet(path)
    assert f"column '{column}' is not a sheet column and is ignored; did you mean '{meant}'?" in (
        caplog.text
    ), caplog.text


def test_own_columns_and_near_names_of_present_columns_get_no_warning(tmp_path, caplog):
    path = tmp_path / "s.tsv"
    (tmp_path / "b.svs").write_bytes(b"x")
    header = "slide_id\tpath\tlabel\tsplit\tmpp\tnotes\tlabel_orig\tscanner\n"
    path.write_text(header + "b\tb.svs\tx\ttrain\t0.5\tfold\ty\tGT450\n")
    with caplog.at_level(logging.WARNING, logger="zoommil.io.sheet"):
        zsheet.load_sheet(path)
    assert caplog.text == ""


def test_an_invisible_character_in_a_value_is_shown_escaped(tmp_path):
    """A zero-width space pasted with a label printed as 'normal​', identical on screen to the
    allowed 'normal'; the value is still refused, not silently cleaned."""
    path = tmp_path / "s.tsv"
    path.write_text(HEADER + "a\ta.svs\tnormal\u200b\ttrain\n")
    message = _one_line_error(lambda p: zsheet.load_sheet(p, ["normal", "tumor"]), path)
    assert "unknown label 'normal\\u200b'; expected one of normal, tumor" in message, message
    path.write_text(HEADER + "a\ta.svs\tnormal\ttrain\u200b\n")
    for read in READERS:
        assert "'train\\u200b'" in _one_line_error(read, path)
    # a no-break space inside a slide id, in the row name of any row error
    path.write_text(HEADER + "a\u00a0b\ta.svs\tnormal\tbogus\n")
    assert "(slide_id 'a\\xa0b'): unknown split 'bogus'" in _one_line_error(zsheet.load_sheet, path)
    # visible letters beyond ASCII stay as they are
    path.write_text(HEADER + "café\ta.svs\tnormal\ttrain\n")
    message = _one_line_error(lambda p: zsheet.load_sheet(p, ["tumor"]), path)
    assert "(slide_id 'café'): unknown label 'normal'" in message, message


def test_mpp_override_is_a_checked_optional_column(tmp_path):
    """The sheet's mpp_override (replaces the metadata) is read like mpp: a float column, NaN
    where empty, and a bad value is one line naming the row and the column."""
    sheet = tmp_path / "s.tsv"
    sheet.write_text(
        "slide_id\tpath\tlabel\tsplit\tMPP_Override\n"
        "a\ta.svs\tx\ttrain\t0.2627\n"
        "b\tb.svs\tx\ttest\t\n"
    )
    frame = zsheet.load_sheet(sheet)
    assert frame.loc["a", "mpp_override"] == 0.2627 and np.isnan(frame.loc["b", "mpp_override"])
    assert np.isnan(frame.loc["a", "mpp"])  # the fallback column, absent
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tmpp_override\na\ta.svs\tx\ttrain\t40\n")
    with pytest.raises(ZoomMILError, match=r"'a'\): mpp_override 40.0 is outside"):
        zsheet.load_sheet(sheet)


@pytest.mark.parametrize(
    ("slide_id", "usable"), [("cmu full", "cmu_full"), ("H&E 12-345", "H_E_12-345"), ("_a", "a")]
)
def test_a_slide_id_with_other_characters_is_refused_in_words(tmp_path, slide_id, usable):
    """The schema's message showed only its regular expression."""
    path = tmp_path / "s.tsv"
    path.write_text(HEADER + f"{slide_id}\ta.svs\tx\ttrain\n")
    with pytest.raises(ZoomMILError) as info:
        zsheet.load_sheet(path, schema=SLIDE_SCHEMA)
    assert str(info.value) == (
        f"{path}: row 1 (slide_id '{slide_id}'): slide_id '{slide_id}' may hold only letters, "
        "digits, '_', '.' and '-', starting with a letter or digit, as it names the slide's "
        f"output files (e.g. '{usable}')"
    )
