"""What the `python -m zoommil.interop.*` and `zoommil.cv.*` tools share with the `zoommil`
commands: ``--version``, outputs checked before the work, and a user error as one line naming
the tool, exit 2.

Why: these tools do not run through `zoommil.cli`, and had none of it. ``regions_geojson
PRED.json --out PRED.json`` replaced the prediction with its GeoJSON and ``geojson_mask SLIDE
REGIONS.geojson --out REGIONS.geojson`` a pathologist's annotations with a PNG, both with exit
0 (`zoommil` refuses an output that names an input: `zoommil.io.clobber`); an output under a
file said "File exists", and errors began with a bare ``error:``, not the tool's name.

Imported by the interop tools and `zoommil.cv`'s, which no command or rule imports: editing it
reruns no workflow job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from zoommil import __version__
from zoommil.errors import ZoomMILError

T = TypeVar("T")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``, as `zoommil --version` prints it."""
    parser.add_argument("--version", action="version", version=f"zoommil {__version__}")


def run_checked(
    prog: str,
    work: Callable[[], T],
    outputs: Sequence[Path],
    inputs: Sequence[tuple[str, Path | None]],
) -> T | None:
    """``work()`` once ``outputs`` are known to name no input (``(what, path)`` pairs) and to
    be writable; None after printing a user error (`ZoomMILError`, `OSError`) as one line
    ``PROG: error: ...`` on stderr. Output folders this call made are removed again then."""
    from zoommil.cli import _missing_folders, _remove_empty
    from zoommil.io.atomic import check_writable
    from zoommil.io.clobber import check_distinct

    created = _missing_folders(outputs)
    try:
        check_distinct(outputs, [(what, Path(p)) for what, p in inputs if p is not None])
        for path in outputs:
            check_writable(path)
        return work()
    except ZoomMILError as error:
        message = str(error)
    except OSError as error:
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        message = where + (error.strerror or str(error) or type(error).__name__)
    _remove_empty(created)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return None
