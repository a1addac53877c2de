"""Small checks shared by the baselines: turn the model interface's inputs into one bag.

Every model receives ``feats`` as a list (lowest magnification first) of [1, N_m, D] tensors
and optional ``coords`` as a list of [N_m, 2] (row, col). These helpers validate that once,
so each model raises the same clear `ZoomMILError` for a malformed bag.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from zoommil.errors import ZoomMILError

Feats = Sequence[torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray
Coords = Sequence[torch.Tensor] | torch.Tensor | None


def as_list(feats: Feats, like: nn.Module | None = None) -> list[torch.Tensor]:
    """Feature list, every entry [1, N, D] (a bare tensor counts as one magnification; NumPy
    arrays are taken as float32 tensors). Several magnifications must come lowest first, each
    with a whole multiple of the previous one's rows (the descendant layout of a feature file):
    a list in the other order gave single-scale models the lowest magnification's rows and
    MS-MIL its scales swapped, without an error.

    ``like``: the model the features are for; they are given its parameters' dtype and device,
    so float64 or float16 features, or CPU features for a model moved to a GPU, run as they do
    from NumPy (they were a raw torch dtype or device error)."""
    if isinstance(feats, torch.Tensor | np.ndarray):
        feats = [feats]
    out = [as_bag(f, like) for f in feats]
    if not out:
        raise ZoomMILError("a bag needs features of at least one magnification")
    check_descendant_counts([f.shape[1] for f in out])
    return out


def as_bag(feats: torch.Tensor | np.ndarray, like: nn.Module | None = None) -> torch.Tensor:
    """One magnification's features as a [1, N, D] tensor with ``like``'s dtype and device
    (see :func:`as_list`); for the per-step calls (``zoom_step``, ``classify``) too."""
    if isinstance(feats, np.ndarray) and np.issubdtype(feats.dtype, np.floating):
        feats = feats.astype(np.float32, copy=False)  # NumPy's default is float64; models are fp32
    f = torch.as_tensor(feats)
    if f.dim() == 2:
        f = f.unsqueeze(0)
    if f.dim() != 3 or f.shape[0] != 1:
        raise ZoomMILError(f"expected features of shape [1, N, D] (one bag), got {tuple(f.shape)}")
    if not f.is_floating_point():
        raise ZoomMILError(
            f"expected floating-point features (float32, as feature files store them), got "
            f"{f.dtype}: convert them with .float()"
        )
    return f.to(**_placement(like))


def _placement(model: nn.Module | None) -> dict[str, Any]:
    """The dtype and device of ``model``'s first floating-point parameter ({} when none)."""
    if model is None:
        return {}
    for param in model.parameters():
        if param.is_floating_point():
            return {"dtype": param.dtype, "device": param.device}
    return {}


def check_descendant_counts(rows: Sequence[int]) -> None:
    """Rows per magnification, lowest first: each a whole multiple (> 1) of the one before."""
    for before, after in itertools.pairwise(rows):
        if before and (after <= before or after % before):
            raise ZoomMILError(
                f"features of {len(rows)} magnifications have {list(rows)} rows: expected the "
                "lowest magnification first, each with a whole multiple of the previous one's "
                "rows (the feature file's descendant layout)"
            )


def highest(feats: Feats, in_dim: int, like: nn.Module | None = None) -> torch.Tensor:
    """The highest-magnification features [1, N, D] (the last listed), checked against in_dim
    and placed like the model ``like`` (`as_list`)."""
    f = as_list(feats, like)[-1]
    check_bag(f, in_dim)
    return f


def check_bag(f: torch.Tensor, in_dim: int) -> None:
    """A bag must have at least one instance of the dimension the model was built for."""
    if f.shape[-1] != in_dim:
        raise ZoomMILError(f"model expects {in_dim}-d features, got {f.shape[-1]}-d")
    if f.shape[1] == 0:
        raise ZoomMILError("empty bag: this slide has no patches at the model's magnification")


def coords_list(coords: Coords) -> list[torch.Tensor] | None:
    """Coordinates as a list of [N_m, 2] tensors, or None."""
    if coords is None:
        return None
    if isinstance(coords, torch.Tensor):
        return [coords.reshape(-1, 2)]
    return [torch.as_tensor(c).reshape(-1, 2) for c in coords]
