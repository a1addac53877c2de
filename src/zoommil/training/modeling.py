"""How training builds models: names, magnifications and constructor errors as user errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from zoommil import models
from zoommil.errors import ZoomMILError


def known_archs() -> list[str]:
    """Architecture names `build_model` accepts (the registry's `MODEL_NAMES`)."""
    return sorted(models.MODEL_NAMES)


def model_mags(arch: str, mags: Sequence[float]) -> list[float]:
    """The magnifications an architecture reads (lowest first) out of those configured."""
    return [float(m) for m in models.default_mags(arch, list(mags))]


def make_model(
    arch: str,
    n_classes: int,
    in_dim: int,
    mags: Sequence[float],
    kwargs: dict[str, Any],
    run_seed: int | None = None,
) -> nn.Module:
    """A fresh model; ``mags`` are all configured magnifications (the model picks its own),
    ``run_seed`` the training run's seed (see `zoommil.models.build_model`).

    Bad keyword arguments become a one-line user error.
    """
    try:
        return models.build_model(
            arch, in_dim=in_dim, n_classes=n_classes, mags=list(mags), run_seed=run_seed, **kwargs
        )
    except TypeError as error:
        raise ZoomMILError(f"architecture '{arch}': bad arguments {kwargs} ({error})") from error
