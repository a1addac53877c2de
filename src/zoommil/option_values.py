"""Value checks of model options that a constructor would accept but train badly with.

Why a module of its own, without torch: `zoommil.models.build_model` runs these when a model
is built, and the workflow runs the same ones when it loads its config (importing torch there
costs ~2 s and ~600 MB at every start), so that ``dropout: 2.0`` or ``sigma: 0`` fails before
any preprocessing instead of as a torch traceback or a NaN loss at training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from zoommil.errors import ZoomMILError

#: Options that are a dropout probability (every model's ``dropout``, DSMIL's ``dropout_v``).
DROPOUT_OPTIONS = ("dropout", "dropout_v")


def _number(value: Any) -> float | None:
    """A finite real number, else None (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def check_option_values(arch: str, options: Mapping[str, Any]) -> None:
    """Raise a `ZoomMILError` naming the option: a dropout outside [0, 1) (1 drops every
    unit; torch refuses > 1 only when the layer is built), or ZoomMIL's top-K noise ``sigma``
    not > 0 (0 divides by zero in the perturbed top-K: a NaN loss from the first step)."""
    for name in DROPOUT_OPTIONS:
        if name in options:
            value = _number(options[name])
            if value is None or not 0 <= value < 1:
                raise ZoomMILError(
                    f"model '{arch}': option {name} must be a number in [0, 1), "
                    f"got {options[name]!r}"
                )
    if arch == "zoommil" and "sigma" in options:
        value = _number(options["sigma"])
        if value is None or value <= 0:
            raise ZoomMILError(
                f"model 'zoommil': option sigma (top-K noise) must be a number > 0, "
                f"got {options['sigma']!r}"
            )
