"""Orphaned outputs: the markers are read as Snakemake writes them (its own encoder); a
feature manifest that lists a missing file."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from slide_factory import write_pyramid_tiff
from snakemake.persistence.file import FilePersistence

from zoommil.errors import ZoomMILError
from zoommil.workflow import manifest as manifest_module
from zoommil.workflow import orphans, replaced, vanished


def mark(workdir: Path, output: str, name_max: int = 255) -> None:
    """An incomplete marker where Snakemake's file persistence puts it (split into
    '@' folders where the encoded name is longer than `name_max`)."""
    persistence = SimpleNamespace(_fetch_max_len=lambda subject: name_max)
    root = workdir / ".snakemake" / "incomplete"
    path = Path(FilePersistence._record_path(persistence, str(root), output))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"external_jobid": null}')


def test_markers_decode_to_the_outputs_they_name(tmp_path: Path) -> None:
    long = "results/features/" + "a_long_slide_name_" * 4 + ".h5"
    mark(tmp_path, "results/features/s1.h5")
    mark(tmp_path, long, name_max=24)  # split over several '@' folders
    (tmp_path / ".snakemake/incomplete/migration_underway").mkdir()
    assert orphans.incomplete_outputs(tmp_path) == sorted(
        [Path("results/features/s1.h5"), Path(long)]
    )


def test_only_existing_outputs_without_a_running_snakemake_are_orphans(tmp_path: Path) -> None:
    for name in ("done.h5", "not_yet.h5"):
        mark(tmp_path, f"results/{name}")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/done.h5").write_bytes(b"x")
    assert orphans.orphaned_outputs(tmp_path) == [Path("results/done.h5")]
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/done.h5\n")
    assert orphans.orphaned_outputs(tmp_path) == []  # its markers are its running jobs'


def test_orphans_are_dated_back_and_named(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    for i in range(7):
        (tmp_path / f"results/s{i}.h5").write_bytes(b"x")
        mark(tmp_path, f"results/s{i}.h5")
    before = os.stat(tmp_path / "results/s0.h5").st_mtime
    (line,) = orphans.outdate_orphaned_outputs(dry_run=True, workdir=tmp_path)
    assert os.stat(tmp_path / "results/s0.h5").st_mtime == before
    assert line.endswith("the next run redoes them: results/s0.h5, results/s1.h5, "
                         "results/s2.h5, results/s3.h5, results/s4.h5 and 2 more")  # fmt: skip
    (line,) = orphans.outdate_orphaned_outputs(dry_run=False, workdir=tmp_path)
    assert "7 output(s)" in line and "their jobs run again" in line
    assert {os.stat(p).st_mtime for p in (tmp_path / "results").iterdir()} == {orphans.LONG_AGO}
    assert orphans.outdate_orphaned_outputs(dry_run=False, workdir=Path(tmp_path / "none")) == []


def _manifest(workdir: Path, *paths: str) -> Path:
    manifest = workdir / manifest_module.MANIFEST
    manifest.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"s{i}\t{p}\t10\t1\n" for i, p in enumerate(paths))
    manifest.write_text("slide_id\tpath\tbytes\tmtime_ns\n" + rows)
    return manifest


def test_a_manifest_listing_a_missing_feature_file_is_dated_back(tmp_path: Path) -> None:
    (tmp_path / "results/features").mkdir(parents=True)
    (tmp_path / "results/features/a.h5").write_text("x")
    manifest = _manifest(tmp_path, "results/features/a.h5", "results/features/b.h5")
    assert manifest_module.missing_listed_files(tmp_path) == ["results/features/b.h5"]
    [note] = manifest_module.outdate_manifest_of_missing_files(True, workdir=tmp_path)
    assert note.endswith("the next run extracts them again, and what was trained on them is "
                         "redone: results/features/b.h5")  # fmt: skip
    assert manifest.stat().st_mtime > orphans.LONG_AGO  # dry run: named only
    manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path)
    assert manifest.stat().st_mtime == orphans.LONG_AGO


def test_an_absent_manifest_or_a_running_snakemake_leaves_it(tmp_path: Path) -> None:
    assert manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path) == []
    manifest = _manifest(tmp_path, "results/features/gone.h5")
    (tmp_path / ".snakemake/locks").mkdir(parents=True)
    (tmp_path / ".snakemake/locks/0.input.lock").write_text("")
    assert manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path) == []
    assert manifest.stat().st_mtime > orphans.LONG_AGO


def _owned_by_another_user(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """`os.utime` with explicit times is refused on ``path`` (EPERM), as for a colleague's
    file in a shared project folder (the tests may run as root, who may set any file's)."""
    real = os.utime

    def utime(target, *args, **kwargs):
        if Path(target) == path:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, "utime", utime)


def test_another_users_manifest_and_orphan_are_dated_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A colleague's run wrote the manifest and a killed one the orphan: the workflow stopped
    at parse time with "PermissionError: [Errno 1] Operation not permitted" (no file named),
    and at every later run. Now each is replaced by a copy of itself, dated back."""
    (tmp_path / "results/features").mkdir(parents=True)
    manifest = _manifest(tmp_path, "results/features/gone.h5")
    orphan = tmp_path / "results/features/done.h5"
    orphan.write_bytes(b"features")
    mark(tmp_path, "results/features/done.h5")
    for path in (manifest, orphan):
        _owned_by_another_user(monkeypatch, path)
    text = manifest.read_text()
    manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path)
    orphans.outdate_orphaned_outputs(dry_run=False, workdir=tmp_path)
    assert manifest.read_text() == text and orphan.read_bytes() == b"features"
    assert manifest.stat().st_mtime == orphan.stat().st_mtime == orphans.LONG_AGO
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["features.tsv"]  # no temps


def test_another_users_file_in_a_folder_not_writable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(tmp_path, "results/features/gone.h5")
    _owned_by_another_user(monkeypatch, manifest)

    def refused(source, target, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(orphans.shutil, "copy2", refused)
    with pytest.raises(ZoomMILError) as caught:
        manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"cannot date back {manifest} to have it made again: it belongs")
    assert "(Permission denied)" in message and "\n" not in message
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["features.tsv"]


def test_a_file_on_a_read_only_file_system_is_named_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only snapshot refuses utime with EROFS, not a PermissionError: it came out of
    the workflow's load as an OSError traceback naming no job."""
    manifest = _manifest(tmp_path, "results/features/gone.h5")

    def read_only(path, times=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(orphans.os, "utime", read_only)
    with pytest.raises(ZoomMILError) as caught:
        manifest_module.outdate_manifest_of_missing_files(False, workdir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"cannot date back {manifest} to have it made again: Read-only")
    assert "\n" not in message


def test_vanished_slides_are_the_encoded_ones_whose_file_is_gone(tmp_path: Path) -> None:
    """Only a slide whose features exist and whose file is gone stops a run; the message
    names the first 20 (an unmounted share takes every slide) and counts the rest."""
    features = tmp_path / "results" / "features"
    features.mkdir(parents=True)
    rows = ["slide_id\tpath"]
    paths = {}
    for i in range(25):
        (features / f"s{i}.h5").write_bytes(b"h5")
        rows.append(f"s{i}\tresults/features/s{i}.h5")
        paths[f"s{i}"] = f"slides/s{i}.tiff"
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "s0.tiff").write_bytes(b"slide")  # still there
    (features / "s1.h5").unlink()  # features gone too: made again, not a vanished slide
    manifest = tmp_path / manifest_module.MANIFEST
    manifest.parent.mkdir()
    manifest.write_text("\n".join(rows) + "\n")
    found = vanished.vanished_slides(paths, workdir=tmp_path)
    assert [slide for slide, _ in found] == [f"s{i}" for i in range(2, 25)]
    read_once = manifest_module.listed_rows(tmp_path)
    assert vanished.vanished_slides(paths, workdir=tmp_path, rows=read_once) == found
    message = vanished.vanished_message(found)
    assert message.startswith("23 slide file(s) gone since their features were made: ")
    assert "s21 (slides/s21.tiff) and 3 more. Restore them" in message
    assert "s22 (" not in message


def test_a_replaced_slide_dated_before_2000_has_its_outputs_dated_back_before_it(
    tmp_path: Path,
) -> None:
    """A re-scan whose kept file date is older than 2000-01-01 (a zip's 1980, a mount that
    reports 1970): its outputs, dated back to 2000, stayed newer than it, so every run said
    "redoing their inspection ..." and Snakemake planned nothing. They now go before it."""
    (tmp_path / "slides").mkdir()
    slide = write_pyramid_tiff(tmp_path / "slides" / "s0.tiff", width=512, height=512, levels=2)
    for output in replaced.OUTPUTS:
        path = tmp_path / output.format(slide="s0")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"quickhash": "of the scan inspected before"}')
        os.utime(path, (1.6e9, 1.6e9))  # made in 2020, before the copy below
    old = 631152000.0  # 1990-01-01
    os.utime(slide, (old, old))  # the re-scan, its archive's date kept
    (line,) = replaced.outdate_replaced_slides(False, {"s0": "slides/s0.tiff"}, tmp_path)
    assert "redoing their inspection" in line
    for output in replaced.OUTPUTS:
        assert os.stat(tmp_path / output.format(slide="s0")).st_mtime < old, output


def test_orphans_go_before_the_oldest_slide_where_it_is_dated_before_2000(
    tmp_path: Path,
) -> None:
    """A tissue mask orphaned over a slide dated before 2000 (its only input) stayed newer than
    it at 2000-01-01: every run said "their jobs run again" and planned nothing."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results/s0.png").write_bytes(b"mask")
    mark(tmp_path, "results/s0.png")
    slides = [tmp_path / "s0.tiff", tmp_path / "s1.tiff", tmp_path / "gone.tiff"]
    for slide, when in zip(slides[:2], (631152000.0, 1.6e9), strict=True):
        slide.write_bytes(b"slide")
        os.utime(slide, (when, when))
    (line,) = orphans.outdate_orphaned_outputs(dry_run=False, workdir=tmp_path, inputs=slides)
    assert "their jobs run again" in line
    assert os.stat(tmp_path / "results/s0.png").st_mtime < 631152000.0


def test_a_replaced_slide_gone_since_it_was_hashed_dates_its_outputs_to_2000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its date, read for the date-back, was a `stat` that raised at load (a traceback)."""
    output = tmp_path / replaced.OUTPUTS[0].format(slide="s0")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("{}")
    monkeypatch.setattr(replaced, "replaced_slides", lambda paths, workdir: [("s0", "gone.tiff")])
    (line,) = replaced.outdate_replaced_slides(False, {"s0": "gone.tiff"}, tmp_path)
    assert "redoing their inspection" in line
    assert os.stat(output).st_mtime == orphans.LONG_AGO
