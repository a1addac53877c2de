"""A feature manifest that lists a file which is gone is dated back, so the file is made again.

Training depends on `results/qc/features.tsv` (the usable feature files, written by the
qc_slides checkpoint), not on the N files themselves (that made scheduling O(N^2)). Snakemake
does not remake a missing input of a job whose outputs are up to date, so a feature file
deleted to have it re-extracted was never made again, and training then stopped on it.
Dating the manifest back to 2000 before planning makes qc_slides run again; its missing input
then brings the features job back, and the rewritten manifest the training that used the file.
Nothing else is touched, and a dry run only names the files, as for `orphans`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zoommil.errors import first_few
from zoommil.workflow.orphans import date_back, snakemake_running

MANIFEST = Path("results/qc/features.tsv")


def listed_rows(workdir: Path = Path("."), manifest: Path = MANIFEST) -> list[dict[str, str]]:
    """The manifest's rows (slide_id, path relative to the workflow's folder, ...) that name a
    file; none before qc_slides wrote it."""
    if not (workdir / manifest).is_file():
        return []
    with (workdir / manifest).open(newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row.get("path")]


def missing_listed_files(
    workdir: Path = Path("."),
    manifest: Path = MANIFEST,
    rows: list[dict[str, str]] | None = None,
) -> list[str]:
    """Paths the manifest lists (relative to the workflow's folder) that do not exist;
    ``rows``: its `listed_rows`, where the caller has read them already."""
    rows = listed_rows(workdir, manifest) if rows is None else rows
    return [row["path"] for row in rows if not (workdir / row["path"]).exists()]


def outdate_manifest_of_missing_files(
    dry_run: bool,
    manifest: Path = MANIFEST,
    workdir: Path = Path("."),
    rows: list[dict[str, str]] | None = None,
) -> list[str]:
    """Date the manifest back when it lists a missing file (dry run: only say so); the note.
    ``rows`` as for `missing_listed_files`."""
    if snakemake_running(workdir):
        return []  # its jobs may be rewriting the files now
    missing = missing_listed_files(workdir, manifest, rows)
    if not missing:
        return []
    if not dry_run:
        date_back(workdir / manifest)
    verb = "the next run extracts them again" if dry_run else "they are extracted again"
    return [
        f"zoommil: {len(missing)} feature file(s) listed in {manifest} are missing; {verb}, "
        f"and what was trained on them is redone: {first_few(missing)}"
    ]
