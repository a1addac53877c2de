"""Slide sheet entries that point at slide files.

A sheet's ``path`` column may hold paths relative to the sheet itself, so a dataset folder can
be moved as a whole.
"""

from __future__ import annotations

from pathlib import Path


def resolve_slide_path(sheet: str | Path, path: str | Path) -> Path:
    """A sheet's `path` entry as an absolute path: relative entries are relative to the sheet."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (Path(sheet).resolve().parent / path).resolve()
