"""Plain-type conversion (`to_plain`: checkpoints, JSON, YAML train configs) and atomic JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.io.atomic import atomic_path


def to_plain(value: Any) -> Any:
    """``value`` as plain Python types (numpy scalars/arrays, tuples and paths converted)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return None if math.isnan(value) else value
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_plain(v) for v in value]
    raise TypeError(f"cannot store {type(value).__name__} as a plain (JSON/YAML) value")


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temporary file, then rename); NaN -> null."""
    text = json.dumps(to_plain(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
