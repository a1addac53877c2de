"""Small helpers the Snakemake rules use to turn config into command lines and file lists.

Kept here (not in the .smk files) so they are unit-tested and the rules stay declarative.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Library files each workflow step imports: editing one of them reruns that step (they are
# listed as `lib=` inputs). Folders stand for every .py file below them.
LIBRARY_MODULES: dict[str, tuple[str, ...]] = {
    "synth": ("synth", "commands/synth.py"),
    "inspect": ("wsi/slide.py", "commands/inspect.py"),
    "tissue": ("wsi/slide.py", "wsi/tissue.py", "commands/tissue.py"),
    "tile": ("wsi/slide.py", "wsi/tissue.py", "wsi/lattice.py", "commands/tile.py"),
    "features": (
        "wsi/slide.py",
        "wsi/lattice.py",
        "features/encoder.py",
        "features/encoders",
        "features/extraction.py",
        "io/featurefile.py",
        "commands/features.py",
    ),
    "train": ("models", "training", "io/featurefile.py", "commands/train.py"),
    "flops": (
        "efficiency",
        "models",
        "features/encoder.py",
        "features/encoders",
        "io/featurefile.py",
        "commands/flops.py",
    ),
    "profile": (
        "efficiency",
        "models",
        "features/encoder.py",
        "features/encoders",
        "wsi/slide.py",
        "wsi/lattice.py",
        "wsi/tissue.py",
        "inference/predict.py",
        "commands/profile.py",
    ),
    "predict": (
        "inference/predict.py",
        "reporting/attention.py",
        "models",
        "features/encoder.py",
        "features/encoders",
        "wsi/slide.py",
        "wsi/lattice.py",
        "wsi/tissue.py",
        "commands/predict.py",
    ),
    "qc": ("workflow/qc.py", "io/sheet.py"),
    "tables": ("reporting/tables.py", "reporting/results.py", "reporting/stats.py"),
    "figures": (
        "reporting/figures.py",
        "reporting/results.py",
        "reporting/tables.py",
        "reporting/stats.py",
    ),
}


def library_root(basedir: str | Path) -> Path:
    """The zoommil sources next to the workflow (a checkout), else the installed package."""
    local = Path(basedir) / "src" / "zoommil"
    if local.is_dir():
        return local.resolve()
    import zoommil

    return Path(zoommil.__file__).resolve().parent


def library_files(root: str | Path, step: str) -> list[str]:
    """Existing library files used by a workflow step, sorted (deterministic inputs)."""
    root = Path(root)
    files: set[Path] = set()
    for name in LIBRARY_MODULES[step]:
        path = root / name
        if path.is_dir():
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            files.add(path)
    return sorted(str(p) for p in files)


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, without importing torch (the Snakefile runs
    this at every start): the driver lists its GPUs under /proc/driver/nvidia/gpus."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def time_on_gpu(setting: bool | str) -> bool:
    """`efficiency.gpu`: true (always: a note is written where there is no GPU), false, or
    auto (only where this machine has one: the demo then starts no job that only writes
    that note)."""
    if setting == "auto":
        return gpu_present()
    return bool(setting)


def cli_flags(args: Mapping[str, Any] | None) -> str:
    """`{"sigma": 20, "keep-empty": True, "mags": [1, 2]}` -> `--sigma 20 --keep-empty --mags 1 2`.

    Underscores become dashes; False/None drop the flag. Values are shell-quoted.
    """
    parts: list[str] = []
    for key, value in (args or {}).items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(flag)
            parts.extend(shlex.quote(_plain(v)) for v in value)
        else:
            parts.extend([flag, shlex.quote(_plain(value))])
    return " ".join(parts)


def param_flags(flag: str, params: Mapping[str, Any] | None) -> str:
    """`("--param", {"sigma": 20})` -> `--param sigma=20` (repeatable NAME=VALUE flags)."""
    return " ".join(
        f"{flag} {shlex.quote(f'{key}={_plain(value)}')}" for key, value in (params or {}).items()
    )


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_mags(mags: Iterable[float]) -> str:
    """Magnifications as CLI words, lowest first: [10, 2.5] -> '2.5 10.0'."""
    return " ".join(str(float(m)) for m in sorted(float(m) for m in mags))
