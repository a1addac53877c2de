"""The trainer's only door to `zoommil.models` (so tests can swap in a stand-in model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from zoommil.errors import ZoomMILError


def _models():
    try:
        import zoommil.models as models
    except ImportError as error:  # pragma: no cover - only while the models are being written
        raise ZoomMILError(f"the model package cannot be imported ({error})") from error
    return models


def known_archs() -> list[str]:
    """Architecture names `build_model` accepts (the registry's `MODEL_NAMES`)."""
    return sorted(_models().MODEL_NAMES)


def model_mags(arch: str, mags: Sequence[float]) -> list[float]:
    """The magnifications an architecture reads (lowest first) out of those configured."""
    return [float(m) for m in _models().default_mags(arch, list(mags))]


def make_model(
    arch: str, n_classes: int, in_dim: int, mags: Sequence[float], kwargs: dict[str, Any]
) -> nn.Module:
    """A fresh model; ``mags`` are all configured magnifications (the model picks its own).

    Bad keyword arguments become a one-line user error.
    """
    try:
        return _models().build_model(
            arch, in_dim=in_dim, n_classes=n_classes, mags=list(mags), **kwargs
        )
    except TypeError as error:
        raise ZoomMILError(f"architecture '{arch}': bad arguments {kwargs} ({error})") from error
