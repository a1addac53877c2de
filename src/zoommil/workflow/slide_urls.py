"""A slide path that is a URL (``s3://``, ``gs://``, ``https://``): say to stage the files.

Cohorts often live in buckets (TCGA through NCI IDC on GCS and S3, an institution's MinIO).
zoommil opens slides with OpenSlide, which reads files on a file system only. A sheet row
``s3://bucket/x.svs`` was taken for a relative path: the dry run warned of a missing file
``<sheet folder>/s3:/bucket/x.svs`` (``Path`` keeps one slash of ``//``) and the slide was
excluded at inspection as `missing`; ``zoommil predict s3://...`` loaded the checkpoint, then
said "slide file not found: <cwd>/s3:/bucket/x.svs". Kept out of `zoommil.io` and
`zoommil.wsi`, whose code hash reruns every user's features and training.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from zoommil.errors import ZoomMILError
from zoommil.workflow.slide_folders import first_and_others

if TYPE_CHECKING:
    import pandas as pd

#: A scheme of two or more characters and a slash: ``C:/`` (a Windows drive) is a path.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")

#: Per bucket scheme: a command that copies a bucket's slides to a folder, and mount tools.
_BUCKETS = {
    "s3": (
        "`aws s3 sync s3://BUCKET/PREFIX /data/slides` (MinIO: `mc mirror`)",
        "mountpoint-s3, s3fs",
    ),
    "gs": ("`gcloud storage rsync -r gs://BUCKET/PREFIX /data/slides`", "gcsfuse"),
    "az": ("`azcopy sync`", "blobfuse2"),
}
_BUCKETS |= {"gcs": _BUCKETS["gs"], "abfs": _BUCKETS["az"], "abfss": _BUCKETS["az"]}


def url_scheme(path: str | Path, folder: str | Path | None = None) -> str | None:
    """The scheme of ``path`` when it is a URL (``'s3'``, ``'https'``), else None. One slash
    after the colon is enough, as a `Path` keeps one of ``//``; a path that exists (relative
    to ``folder``, else the working directory) is a file, whatever its name."""
    match = _URL.match(str(path))
    if match is None or os.path.exists(Path(folder or ".") / path):
        return None
    return match.group(1).lower()


def as_written(path: str | Path) -> str:
    """``path`` with the ``//`` a `Path` made one slash of put back (``s3:/b/x`` ->
    ``s3://b/x``, ``file:/data/x`` -> ``file:///data/x``), for the message."""
    text = str(path)
    match = _URL.match(text)
    if match is None or text.startswith(f"{match.group(1)}://"):
        return text
    rest = text[len(match.group(1)) + 1 :]
    return f"{match.group(1)}:/{'/' if match.group(1).lower() == 'file' else ''}{rest}"


def url_advice(path: str | Path) -> str:
    """Why a URL cannot be a slide, and what to write instead, for the end of a message."""
    scheme = url_scheme(path) or ""
    if scheme == "file":
        return f"a file URL: write the path itself, {as_written(path)[len('file://') :]}"
    reads = "a URL, and zoommil reads slides from a file system (OpenSlide opens paths only)"
    if scheme in _BUCKETS:
        sync, mounts = _BUCKETS[scheme]
        return (
            f"{reads}: copy them to a local or network file system, e.g. {sync}, and write "
            f"their paths (or those of a mount of the bucket: {mounts}, rclone mount; slower)"
        )
    return (
        f"{reads}: download them to a local or network file system (e.g. with wget or curl) "
        "and write their paths"
    )


def check_sheet_path(sheet: str | Path) -> None:
    """Refuse a slide sheet given as a URL (`sheet: s3://bucket/slides.tsv`), which was
    "slide sheet not found: s3:/bucket/slides.tsv"."""
    if url_scheme(sheet):
        raise ZoomMILError(
            f"slide sheet {sheet} is a URL: the workflow reads its sheet, and zoommil the "
            "slides, from a file system; copy both to a local or network file system and give "
            "the sheet's path"
        )


def check_no_urls(frame: pd.DataFrame, sheet: str | Path) -> None:
    """Refuse a sheet whose paths hold URLs, naming the first one's row and what to write
    there, and the slide ids of the others. ``frame`` is the sheet as read
    (`zoommil.io.sheet.read_table`), before its paths are resolved: resolved, they are
    ``<sheet folder>/s3:/bucket/x.svs``, which the loader warns of as missing files. A sheet
    without the columns is left to the loader, which names them."""
    if not {"slide_id", "path"} <= set(frame.columns):
        return
    slide_ids = [str(s).strip() for s in frame["slide_id"]]
    paths = [str(p).strip() for p in frame["path"]]
    folder = Path(sheet).expanduser().resolve().parent
    rows = [i for i, path in enumerate(paths) if url_scheme(path, folder)]
    if not rows:
        return
    first, more = first_and_others(slide_ids, rows)
    raise ZoomMILError(
        f"{sheet}: row {first + 1} (slide_id '{slide_ids[first]}'){more}: path "
        f"{paths[first]} is {url_advice(paths[first])}"
    )
