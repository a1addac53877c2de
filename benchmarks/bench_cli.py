"""The benchmark scripts' command-line checks and result writes, shared so that each says the same.

A benchmark runs for minutes to hours, so a missing input or an output folder that cannot be
made must stop it before the work, in one line naming the path and the reason, with exit
status 2 (a usage error, as argparse and the `zoommil` commands exit), not with a traceback
at the end. Results are written through a temporary file and a rename, so a run stopped
with Ctrl-C leaves the previous result or none, never a half-written JSON to be read as one.
Standard library only, so that every script can import it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

USAGE_ERROR = 2


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """Stop with ``error: message`` on stderr and ``status`` (default 2)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def input_file(path: Path, what: str = "input file") -> Path:
    """``path`` if it is a file this process can read, else `fail` naming it."""
    path = Path(path)
    if not path.exists():
        fail(f"{path}: {what} not found")
    if not path.is_file():
        fail(f"{path}: {what} is not a file")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        fail(f"{path}: {what} cannot be read ({error.strerror})")
    return path


def input_folder(path: Path, what: str = "input folder") -> Path:
    """``path`` if it is a folder this process can list, else `fail` naming it."""
    path = Path(path)
    if not path.exists():
        fail(f"{path}: {what} not found")
    if not path.is_dir():
        fail(f"{path}: {what} is not a folder")
    try:
        next(iter(os.scandir(path)), None)
    except OSError as error:
        fail(f"{path}: {what} cannot be read ({error.strerror})")
    return path


def output_folder(path: Path) -> Path:
    """Make ``path`` now (it is written at the end of the run) or `fail` naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(f"{path}: output folder is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"{path}: cannot make the output folder ({error.strerror})")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"{path}: output folder is not writable")
    return path


def output_file(path: Path) -> Path:
    """``path`` if it can be written at the end of the run (its folder made now), else `fail`."""
    path = Path(path)
    if path.is_dir():
        fail(f"{path}: output file is a folder")
    output_folder(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in its folder and a rename.

    The file gets the permissions of any new file (0666 less the umask): `mkstemp` makes it
    0600, which hid a benchmark's results from the rest of a lab's group on a shared folder.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def run_meta(script: str, argv: list[str] | None, quick: bool, started: float) -> dict:
    """The head of a result's meta every benchmark writes: the command as typed (``argv``, or
    the process's arguments), whether it was ``--quick``, and the wall seconds since
    ``started`` (`time.perf_counter`)."""
    given = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([f"python benchmarks/{script}", *given]),
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
    }


def args_json(args: argparse.Namespace) -> dict:
    """The parsed options as JSON values (paths as strings), for a result's meta."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_result(folder: Path, stem: str, result: dict, text: str) -> None:
    """``stem``.json (``result``) and ``stem``.md (``text``) in ``folder``, each by
    `write_text`, then ``text`` on stdout."""
    write_text(Path(folder) / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text(Path(folder) / f"{stem}.md", text)
    print(text)


def zoommil(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m zoommil ARGS``; if it fails, stop with its own last error line and
    exit status (its stderr was captured, so a bare CalledProcessError would hide why)."""
    proc = subprocess.run(
        [sys.executable, "-m", "zoommil", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        fail(f"zoommil {args[0]} failed: {reason}", proc.returncode if proc.returncode > 0 else 1)
    return proc
