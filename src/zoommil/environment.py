"""What a result was computed with: the code's version and commit, the libraries, the CPU.

Why: fp32 results move with the CPU (summation order, README "Features are fp32 in the
demo"), bf16 is native only with AVX512-BF16 or AMX, and timings differ ~3x between CPUs, so a
results folder read months later must say which code and which machine made it. Versions are
read from the installed distributions, not by importing them (no torch import for a record).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import zoommil

#: The instruction sets that change fp32 sums, bf16 speed or both (see the module docstring).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
LIBRARIES = ("torch", "torchvision", "timm", "numpy", "openslide-python", "openslide-bin")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of `ISA_FLAGS` the CPU has (Linux; empty elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags") and ":" in line:
            have = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in have]
    return []


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, asked of the driver, not of torch (whose CPU
    build sees none, and whose import the Snakefile should not pay at every start):
    /proc/driver/nvidia/gpus lists them."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return gpus.is_dir() and any(gpus.iterdir())
    except OSError:
        return False


def code_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the checkout ``zoommil`` is imported from (``+dirty`` with tracked
    files changed); None outside a git checkout, without git, or for an installed copy (a
    venv inside some checkout would otherwise report that checkout's commit)."""
    package = Path(zoommil.__file__).resolve().parent
    if root is None:
        root = package.parents[1]
        if package != root / "src" / "zoommil":  # not an editable install of a checkout
            return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def openslide_library() -> str | None:
    """The OpenSlide C library's version: conda envs have it without the openslide-bin wheel
    (whose version `LIBRARIES` records for pip installs), so it is asked of the library."""
    try:
        import openslide
    except ImportError:
        return None
    return getattr(openslide, "__library_version__", None)


def environment() -> dict[str, Any]:
    """The record written into metrics.json and results/provenance.json."""
    return {
        "zoommil_version": zoommil.__version__,
        "zoommil_commit": code_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "openslide_library": openslide_library(),
    }
