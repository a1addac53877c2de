"""Slides replaced under a finished project with an older file date are redone, named.

Snakemake redoes a job when its input is newer than its output. A slide replaced by a new scan
under the same name with the file date kept from an archive (`cp -p`, `rsync -a`) is older
than its inspection, tissue mask, tiles and features: nothing was planned, and the models
went on using the old scan's features, silently (review R). The file's ctime, which no copy
keeps, is newer than its inspection then. Such a slide (few, usually none: one `stat` per
slide) is opened and its OpenSlide quickhash compared with the one its inspection recorded;
where they differ, its four per-slide outputs are dated back, so that its chain and the
training that used it are redone. Equal ones (a `chmod`, the same bytes copied to a new disk)
are remembered by path, size, mtime and ctime in `.snakemake/zoommil-slides.json`, so each is
opened once. A dry run only says so, as for `manifest`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from zoommil.errors import first_few
from zoommil.workflow.orphans import date_back, snakemake_running
from zoommil.workflow.weights import write_cache

CHECKED = Path(".snakemake/zoommil-slides.json")
# what `zoommil inspect`, tissue, tile and features made of one slide
OUTPUTS = (
    "results/qc/{slide}.json",
    "results/tissue/{slide}.png",
    "results/coords/{slide}.h5",
    "results/features/{slide}.h5",
)


def _signature(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _recorded_quickhash(inspection: Path) -> str | None:
    try:
        return json.loads(inspection.read_text()).get("quickhash") or None
    except (OSError, ValueError, AttributeError):
        return None


def _quickhash(path: Path) -> str | None:
    """The slide's quickhash now; None where it no longer opens."""
    import openslide  # only for the few slides rewritten since their inspection

    try:
        with openslide.OpenSlide(str(path)) as slide:
            return slide.properties.get("openslide.quickhash-1")
    except (OSError, openslide.OpenSlideError):
        return None


def replaced_slides(
    paths: Mapping[str, str], workdir: Path = Path("."), checked: Path = CHECKED
) -> list[tuple[str, str]]:
    """(slide id, path) of the slides rewritten since their inspection but older than it
    (which Snakemake's mtime trigger misses) whose content is not what was inspected."""
    try:
        known = json.loads((workdir / checked).read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    replaced, seen = [], dict(known)
    for slide, path in paths.items():
        inspection = workdir / OUTPUTS[0].format(slide=slide)
        try:
            inspected = inspection.stat().st_mtime_ns
            stat = os.stat(workdir / path)
        except OSError:
            continue  # not inspected yet, or gone (see `vanished`)
        if not stat.st_mtime_ns <= inspected < stat.st_ctime_ns:
            continue  # unchanged since, or newer: Snakemake redoes it itself
        if known.get(str(path)) == _signature(stat):
            continue
        recorded = _recorded_quickhash(inspection)
        if recorded is None:
            continue  # inspected as missing or unreadable: the input set tells
        now = _quickhash(workdir / path)
        if now is None:
            # damaged, not replaced: its features were made from the file that opened, and
            # the stages that read it again (Figure 4, the timings) list it and take the next
            # slide; redoing its inspection excluded it and retrained every model
            continue
        if now == recorded:
            seen[str(path)] = _signature(stat)
        else:
            replaced.append((slide, str(path)))
    if seen != known:
        write_cache(workdir / checked, seen)
    return replaced


def outdate_replaced_slides(
    dry_run: bool, paths: Mapping[str, str], workdir: Path = Path(".")
) -> list[str]:
    """Date back the outputs of the `replaced_slides` (dry run: only say so); the note."""
    if snakemake_running(workdir):
        return []  # its jobs may be remaking them now
    replaced = replaced_slides(paths, workdir)
    if not replaced:
        return []
    if not dry_run:
        for slide, path in replaced:
            try:  # the outputs must be older than it
                dated: float | None = (workdir / path).stat().st_mtime
            except OSError:  # gone since it was hashed: 2000 then, as before
                dated = None
            for output in OUTPUTS:
                if (workdir / output.format(slide=slide)).exists():
                    date_back(workdir / output.format(slide=slide), older_than=dated)
    verb = "the next run redoes" if dry_run else "redoing"
    listed = first_few([f"{slide} ({path})" for slide, path in replaced])
    return [
        f"zoommil: {len(replaced)} slide file(s) replaced since their inspection by other "
        f"content with an older file date (a copy that kept the file's date: cp -p, rsync -a): "
        f"{listed}; {verb} their inspection, tissue, tiles and features, and the training "
        "that used them"
    ]
