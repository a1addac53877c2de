"""Outputs finished by jobs that outlived their Snakemake process ("orphans").

When the Snakemake process dies (`kill -9`, a lost SSH session, a cluster login node
reboot) its running jobs go on and rename their complete outputs into place, but nobody
records their metadata or removes their ``.snakemake/incomplete`` marker. Snakemake's
``rerun-incomplete`` looks at the markers of the jobs in the DAG it builds first only: the
per-slide jobs, planned after the QC checkpoints, are never rerun, so such an output stays
without a record of the code and params that made it, and a later config or code change
never redoes it (features of the old weights beside the new ones). Dating these outputs
back to 2000 before planning makes Snakemake's mtime trigger run their jobs again, as
``rerun-incomplete`` would; nothing is deleted (the workflow file is also parsed by
``--lint``, ``--dag`` and ``--report``, which cannot be told apart at parse time).

The marker layout is Snakemake's file persistence (``snakemake.persistence.file``): one file
per output under ``.snakemake/incomplete``, named by the URL-safe base64 of the output's
path, split into ``@``-prefixed folders where longer than a file name may be.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import pwd
import shutil
from collections.abc import Iterable
from pathlib import Path

from zoommil.errors import ZoomMILError, first_few
from zoommil.io.atomic import temp_name

SNAKEMAKE_DIR = Path(".snakemake")
LONG_AGO = 946684800.0  # 2000-01-01: older than inputs made since, so Snakemake reruns the job


def _owner(path: Path) -> str:
    try:
        uid = path.stat().st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "another user"


def date_back(path: Path, older_than: float | None = None) -> None:
    """Set ``path``'s times to `LONG_AGO`, so that Snakemake makes it again; to a second
    before ``older_than`` (an input's mtime) where that is earlier: an input dated before
    2000 (a zip's 1980, a mount that reports 1970) stayed older than the output, and nothing
    was made again.

    Only a file's owner may set its times: in a shared project folder, a colleague's file
    (written by their run) is replaced by a copy of itself owned by this user, which needs
    write access to the folder only (the rename is atomic, the content kept). Where that
    fails too, a `ZoomMILError` names the file, its owner and the reason; so does a read-only
    file system (a snapshot), whose EROFS came out as a traceback."""
    when = LONG_AGO if older_than is None else min(LONG_AGO, older_than - 1)
    try:
        os.utime(path, (when, when))
        return
    except PermissionError:
        pass
    except OSError as error:
        raise ZoomMILError(
            f"cannot date back {path} to have it made again: {error.strerror or error}; run "
            "where the results folder can be written"
        ) from None
    tmp = temp_name(path)
    try:
        shutil.copy2(path, tmp)
        os.utime(tmp, (when, when))
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        stamp = "2000-01-01" if when == LONG_AGO else f"@{math.floor(when)}"
        raise ZoomMILError(
            f"cannot date back {path} to have it made again: it belongs to {_owner(path)} and "
            f"{path.parent} cannot be written here ({error.strerror or error}); ask its owner "
            f"to run `touch -d {stamp} {path}`, or to make the project folder "
            'group-writable (docs/cluster.md, "A project shared by several users")'
        ) from None


def incomplete_outputs(workdir: Path = Path(".")) -> list[Path]:
    """Paths (relative to `workdir`, as the workflow names them) with an incomplete marker."""
    root = workdir / SNAKEMAKE_DIR / "incomplete"
    if not root.is_dir():
        return []
    found = []
    for folder, _, files in os.walk(root):
        parts = Path(folder).relative_to(root).parts
        if any(not part.startswith("@") for part in parts):
            continue  # not a marker folder (e.g. migration_underway)
        for name in files:
            encoded = "".join(part[1:] for part in parts) + name
            try:
                found.append(Path(base64.urlsafe_b64decode(encoded).decode()))
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
    return sorted(found)


def snakemake_running(workdir: Path = Path(".")) -> bool:
    """Another Snakemake process holds locks here (or a killed one left them: then Snakemake
    refuses to run until ``--unlock`` anyway)."""
    locks = workdir / SNAKEMAKE_DIR / "locks"
    return locks.is_dir() and any(locks.iterdir())


def orphaned_outputs(workdir: Path = Path(".")) -> list[Path]:
    """Output files that exist although their job was never recorded as finished."""
    if snakemake_running(workdir):
        return []  # its markers belong to jobs it is running now
    return [path for path in incomplete_outputs(workdir) if (workdir / path).is_file()]


def _oldest_mtime(paths: Iterable[str | Path]) -> float | None:
    """The earliest mtime of the files among ``paths`` that exist; None where none does."""
    times = []
    for path in paths:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    return min(times, default=None)


def outdate_orphaned_outputs(
    dry_run: bool, workdir: Path = Path("."), inputs: Iterable[str | Path] = ()
) -> list[str]:
    """Date the orphaned outputs back (dry run: only name them) and return a message line.
    ``inputs``: files they may be made from (the sheet's slides, relative to ``workdir``),
    which the outputs must end up older than (see `date_back`)."""
    orphans = orphaned_outputs(workdir)
    if not orphans:
        return []
    if not dry_run:
        oldest = _oldest_mtime(workdir / path for path in inputs)
        for path in orphans:
            date_back(workdir / path, older_than=oldest)
    verb = "the next run redoes them" if dry_run else "their jobs run again"
    return [
        f"zoommil: {len(orphans)} output(s) written while their job or its Snakemake "
        f"process was being stopped, with no record of how they were made; {verb}: "
        f"{first_few(orphans)}"
    ]
