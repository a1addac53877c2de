"""Refuse a command whose output is one of its inputs or another of its outputs.

Why: outputs are written through a temporary file and renamed into place, so an output path
that names an input (``zoommil tile S --out S``) silently replaced the slide, checkpoint or
mask with the command's result, and two outputs naming one file (``--seed 0 1 --out r r``)
kept only the last. The CLI checks every command's declared outputs against its declared
inputs and each other before any work (`check_distinct`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from zoommil.errors import ZoomMILError


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as written
        return path.absolute()


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: `os.path.samefile` when both exist (hard and
    symbolic links included), else equal resolved paths (an output not written yet)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def folder_inputs(
    what: str, folder: str | Path | None, pattern: str = "*.h5"
) -> list[tuple[str, Path]]:
    """The ``pattern`` files of a folder a command reads, as ``(what, path)`` inputs for
    `check_distinct`: `zoommil flops --out FEATURES/x.h5` replaced a feature file it had
    just read, since only the folder was an argument."""
    if folder is None or not Path(folder).is_dir():
        return []
    return [(what, path) for path in sorted(Path(folder).glob(pattern))]


def check_distinct(outputs: Sequence[Path], inputs: Iterable[tuple[str, Path]]) -> None:
    """Raise a one-line `ZoomMILError` when an output names an input (``(what, path)``
    pairs, e.g. ``("slide", S)``) or an earlier output."""
    inputs = list(inputs)
    for index, out in enumerate(outputs):
        for what, path in inputs:
            if same_file(out, path):
                raise ZoomMILError(
                    f"output {out} is the {what} {path}: refusing to overwrite an input; "
                    "give another output path"
                )
        for earlier in outputs[:index]:
            if same_file(out, earlier):
                also = "" if str(out) == str(earlier) else f" (as {earlier} and {out})"
                raise ZoomMILError(
                    f"output {out} is named twice{also}: the second would overwrite the "
                    "first; give each output its own path"
                )
