"""Slides whose file went away after their features were made stop the run, named.

Snakemake sees a slide input that disappeared as a new input set: it ran the slide's
inspection again, which reported it `missing`, and QC then excluded it and every model was
retrained without it, with only a count in the QC table to show for it (review E). Keeping
the path as an input instead would keep results that no longer follow the config: Snakemake
leaves the outputs of a missing input alone even when their params change. So a slide that
the feature manifest lists as encoded but whose file is gone (archived after extraction, an
unmounted share) stops the run before any job, with what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from zoommil.errors import first_few
from zoommil.workflow.manifest import MANIFEST, listed_rows


def vanished_slides(
    paths: Mapping[str, str],
    manifest: Path = MANIFEST,
    workdir: Path = Path("."),
    rows: list[dict[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """(slide id, path) of the manifest's slides whose feature file exists but whose sheet
    path does not (a slide whose features are gone too is made again, or fails alone).
    ``rows``: the manifest's `listed_rows`, where the caller has read them already."""
    rows = listed_rows(workdir, manifest) if rows is None else rows
    encoded = [row["slide_id"] for row in rows if (workdir / row["path"]).exists()]
    return [
        (slide, str(paths[slide]))
        for slide in encoded
        if slide in paths and not os.path.exists(workdir / str(paths[slide]))
    ]


SHOWN = 20  # an unmounted share takes every slide: the first 20 tell which share it was


def vanished_message(vanished: list[tuple[str, str]]) -> str:
    """The run's one error for them: which, and the three ways on."""
    listed = first_few([f"{slide} ({path})" for slide, path in vanished], shown=SHOWN)
    return (
        f"{len(vanished)} slide file(s) gone since their features were made: {listed}. "
        "Restore them (or fix their paths in the sheet), or remove their rows from the sheet "
        "to go on without them (the models are then retrained without them)"
    )
