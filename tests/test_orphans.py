"""Orphaned outputs: the markers are read as Snakemake writes them (its own encoder)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from snakemake.persistence.file import FilePersistence

from zoommil.workflow import orphans


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
