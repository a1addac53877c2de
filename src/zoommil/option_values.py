"""Value checks of model options that a constructor would accept but train badly with.

Why a module of its own, without torch: `zoommil.models.build_model` runs these when a model
is built, and the workflow runs the same ones when it loads its config (importing torch there
costs ~2 s and ~600 MB at every start), so that ``dropout: 2.0`` or ``sigma: 0`` fails before
any preprocessing instead of as a torch traceback or a NaN loss at training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.recipe import format_mags

#: Options that are a dropout probability (every model's ``dropout``, DSMIL's ``dropout_v``).
DROPOUT_OPTIONS = ("dropout", "dropout_v")

#: Constructor arguments that training sets from the data, never a method's options (given
#: twice, ``build_model`` fails with "got multiple values" when the train job starts).
RESERVED_OPTIONS = {
    "in_dim": "the feature files' dimension",
    "n_classes": "the number of classes",
    "run_seed": "the training seed",
}


def known_arch(name: Any, known: Iterable[str]) -> str | None:
    """The registered architecture ``name`` spells, ignoring case, hyphens and underscores
    (the papers' ``MS-MIL``, ``CLAM-SB``: ``msmil``, ``clam_sb``), else None. One rule for
    `build_model`, `zoommil train` and the workflow's config check."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    return next((arch for arch in known if arch.replace("_", "") == key), None)


def _number(value: Any) -> float | None:
    """A finite real number, else None (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _positive_ints(value: Any) -> bool:
    """A positive int, or a non-empty list (or tuple) of them (bools are not ints here)."""
    values = value if isinstance(value, list | tuple) and value else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


def check_method_options_not_reserved(arch: str, options: Mapping[str, Any]) -> None:
    """A method's options (a config's ``methods:`` entry) set none of `RESERVED_OPTIONS`:
    training passes those itself, so the workflow's load check and `zoommil train` refuse
    them naming the option, not the train job's "got multiple values" after preprocessing."""
    reserved = [name for name in RESERVED_OPTIONS if name in options]
    if reserved:
        raise ZoomMILError(
            f"model '{arch}': {', '.join(reserved)} cannot be set as an option; training sets "
            + "; ".join(f"{name} from {RESERVED_OPTIONS[name]}" for name in reserved)
        )


def check_option_values(arch: str, options: Mapping[str, Any]) -> None:
    """Raise a `ZoomMILError` naming the option: a dropout outside [0, 1) (1 drops every
    unit; torch refuses > 1 only when the layer is built), ZoomMIL's ``k`` not a positive
    integer or a list of them (the length the model checks: it depends on the magnifications),
    or ZoomMIL's top-K noise ``sigma`` not > 0 (0 divides by zero in the perturbed top-K: a
    NaN loss from the first step)."""
    for name in DROPOUT_OPTIONS:
        if name in options:
            value = _number(options[name])
            if value is None or not 0 <= value < 1:
                raise ZoomMILError(
                    f"model '{arch}': option {name} must be a number in [0, 1), "
                    f"got {options[name]!r}"
                )
    if arch == "zoommil" and "k" in options and not _positive_ints(options["k"]):
        # the model would iterate a float (a "'float' object is not iterable" error) and
        # truncate 2.5 in a list to 2
        raise ZoomMILError(
            "model 'zoommil': option k (parents zoomed into per step) must be a positive "
            f"integer or a list of them, one per zoom step, got {options['k']!r}"
        )
    if arch == "zoommil" and "sigma" in options:
        value = _number(options["sigma"])
        if value is None or value <= 0:
            raise ZoomMILError(
                f"model 'zoommil': option sigma (top-K noise) must be a number > 0, "
                f"got {options['sigma']!r}"
            )


def check_zoom_steps(arch: str, options: Mapping[str, Any], mags: Sequence[float]) -> None:
    """ZoomMIL's ``k`` as a list has one value per zoom step, len(mags) - 1: checked where
    the magnifications are known (the workflow's config, `zoommil train` before any data),
    since the model refuses another length only when it is built, after the bags are read."""
    k = options.get("k")
    if arch != "zoommil" or not isinstance(k, list | tuple) or len(mags) < 2:
        return  # fewer than 2 magnifications: the callers' (and the model's) own error
    steps = len(mags) - 1
    if len(k) != steps:
        raise ZoomMILError(
            f"model 'zoommil': option k has {len(k)} values, one per zoom step, but the "
            f"magnifications {format_mags(mags)} give {steps} step(s): got {list(k)!r}"
        )
    ordered = sorted(float(m) for m in mags)
    for step in range(1, steps):
        children = 4 ** round(math.log2(ordered[step] / ordered[step - 1]))
        if int(k[step]) > int(k[step - 1]) * children:
            raise ZoomMILError(
                f"model 'zoommil': option k {list(k)!r}: zoom step {step + 1} chooses among the "
                f"{int(k[step - 1]) * children} patches at {ordered[step]:g}x under the "
                f"{k[step - 1]} kept at {ordered[step - 1]:g}x, so it cannot keep {k[step]}"
            )
