"""MIL models: ZoomMIL and the eight baselines, built by name.

Every model is a plain ``nn.Module`` called as ``model(feats, coords=None) -> logits [1, C]``
with ``feats`` a list of [1, N_m, D] tensors, lowest magnification first (see
docs/ARCHITECTURE.md). `default_mags` says which magnifications each architecture reads;
`build_model` builds one by name and checks its options, so a typo in a config is an error
and not a silently ignored setting (and a dropout or sigma out of range an error, not a torch
traceback or a NaN loss).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.models.abmil import ABMIL
from zoommil.models.clam import CLAMSB
from zoommil.models.dsmil import DSMIL
from zoommil.models.maxmil import MaxMIL
from zoommil.models.meanmil import MeanMIL
from zoommil.models.msmil import MSMIL
from zoommil.models.sparseconvmil import SparseConvMIL
from zoommil.models.transmil import TransMIL
from zoommil.models.zoommil import ZoomMIL
from zoommil.option_values import check_option_values, known_arch
from zoommil.recipe import arch_mags

_CLASSES: dict[str, type[nn.Module]] = {
    "zoommil": ZoomMIL,
    "maxmil": MaxMIL,
    "meanmil": MeanMIL,
    "sparseconvmil": SparseConvMIL,
    "abmil": ABMIL,
    "clam_sb": CLAMSB,
    "transmil": TransMIL,
    "msmil": MSMIL,
    "dsmil": DSMIL,
}
#: The architectures: ``_CLASSES`` is the one list a new model is added to (with its class
#: imported above as ``from zoommil.models.<module> import <Class>``).
MODEL_NAMES: tuple[str, ...] = tuple(_CLASSES)


def canonical_name(name: str) -> str:
    """``CLAM-SB`` -> ``clam_sb``, ``MS-MIL`` -> ``msmil`` (the papers' spellings: case,
    hyphens and underscores do not count, `known_arch`); unknown names raise a `ZoomMILError`
    listing the valid ones."""
    key = known_arch(name, _CLASSES)
    if key is None:
        raise ZoomMILError(f"unknown model '{name}'; valid models: {', '.join(MODEL_NAMES)}")
    return key


def default_mags(arch: str, mags: Sequence[float]) -> list[float]:
    """The magnifications an architecture reads, ascending.

    ZoomMIL and MS-MIL read all of them, DSMIL the lowest and the highest (one if only one is
    configured), the single-scale models the highest.
    """
    return arch_mags(canonical_name(arch), mags)


def _accepted_options(cls: type[nn.Module]) -> tuple[set[str], bool]:
    """Constructor keyword names of a model, and whether it also takes **kwargs."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names.discard("self")
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def build_model(
    name: str,
    *,
    mags: Sequence[float] | None = None,
    run_seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name: ``build_model("abmil", in_dim=1024, n_classes=3)``.

    ``mags`` (optional, all configured magnifications) is turned into what each architecture
    needs: ZoomMIL gets ``mags=default_mags(...)``, MS-MIL ``n_scales=len(mags)``, DSMIL
    ``n_scales`` 2 (multi-scale) or 1; single-scale models ignore it. ``run_seed`` (the
    training run's seed) becomes ZoomMIL's ``seed`` unless the options set one: its random
    ablations draw their evaluation regions from it, so each training seed is evaluated on
    its own draw. Options a model does not take raise a `ZoomMILError` that lists the ones
    it does.
    """
    arch = canonical_name(name)
    cls = _CLASSES[arch]
    if arch == "zoommil" and run_seed is not None:
        kwargs.setdefault("seed", int(run_seed))
    if mags is not None:
        used = default_mags(arch, mags)
        if arch == "zoommil":
            kwargs.setdefault("mags", used)
        elif arch in ("msmil", "dsmil"):
            kwargs.setdefault("n_scales", len(used))
    accepted, var_kwargs = _accepted_options(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown and not var_kwargs:
        raise ZoomMILError(
            f"model '{arch}' does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(accepted))}"
        )
    check_option_values(arch, kwargs)
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ZoomMILError(f"model '{arch}': {error}") from error


__all__ = [
    "ABMIL",
    "CLAMSB",
    "DSMIL",
    "MODEL_NAMES",
    "MSMIL",
    "MaxMIL",
    "MeanMIL",
    "SparseConvMIL",
    "TransMIL",
    "ZoomMIL",
    "build_model",
    "canonical_name",
    "default_mags",
]
