"""Checks across the keys of the workflow config, which its JSON schema cannot express.

Why at load: each names a method or seed that a later rule would look up, so a mistake here
would otherwise fail hours in, after training (or plan nothing at all). The config is the one
`snakemake.utils.validate` checked against workflow/schemas/config.schema.yaml, so the
schema's defaults (e.g. figures.attention.method) are filled in; the workflow and these
checks read the methods and seeds through the same functions below.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.workflow.trainconfig import check_method_options


def main_methods(config: Mapping[str, Any]) -> dict[str, Any]:
    """The methods of Tables 1-3 (``methods``)."""
    return dict(config["methods"])


def ablation_methods(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Table 4 ablations (``ablations.methods``); none without an ``ablations`` block."""
    return dict((config.get("ablations") or {}).get("methods") or {})


def train_seeds(config: Mapping[str, Any]) -> list[int]:
    """The seeds of the methods of Tables 1-3 (``train.seeds``)."""
    return list(config["train"]["seeds"])


def ablation_seeds(config: Mapping[str, Any]) -> list[int]:
    """The seeds of the ablations: ``ablations.seeds``, else ``train.seeds``."""
    return list((config.get("ablations") or {}).get("seeds") or train_seeds(config))


def efficiency_methods(config: Mapping[str, Any]) -> list[str]:
    """The methods timed for Table 3 (``efficiency.methods``), else every one of Tables 1-3."""
    return list(config["efficiency"].get("methods") or main_methods(config))


def check_config(config: Mapping[str, Any], models_root: str | Path) -> None:
    """Raise a `ZoomMILError` naming the first config key that disagrees with another:
    a method option its model does not take, an ablation named like a main method, an
    unknown reference, efficiency or Figure 4 method, a Figure 4 method that is not ZoomMIL,
    ``train.seeds_in_one_job`` with other ablation seeds, or a Figure 4 seed not trained."""
    main, ablations = main_methods(config), ablation_methods(config)
    every = {**main, **ablations}
    # a typo in a method's options fails here, not when its training starts
    check_method_options(every, models_root)
    for name in ablations:
        if name in main:
            raise ZoomMILError(
                f"ablation '{name}' (ablations.methods) is also a method of Tables 1-3 (methods)"
            )
    if ablations and config["ablations"]["reference"] not in main:
        raise ZoomMILError(
            "ablations.reference must name a method of Tables 1-3, got "
            f"'{config['ablations']['reference']}'"
        )
    for name in efficiency_methods(config):
        if name not in every:
            raise ZoomMILError(f"'{name}' (efficiency.methods) is not a configured method")
    attention = config["figures"]["attention"]
    method = attention["method"]
    if method not in every:
        raise ZoomMILError(f"'{method}' (figures.attention.method) is not a configured method")
    arch = every[method].get("arch")
    if arch != "zoommil":
        # Figure 4 draws ZoomMIL's attention over the regions it zooms into; `zoommil predict
        # --heatmap` refuses other architectures, which would fail only after training.
        raise ZoomMILError(
            "figures.attention.method must be a ZoomMIL method (arch zoommil), got "
            f"'{method}' (arch {arch})"
        )
    seeds = train_seeds(config)
    if config["train"]["seeds_in_one_job"] and ablations and ablation_seeds(config) != seeds:
        raise ZoomMILError("train.seeds_in_one_job needs ablations.seeds equal to train.seeds")
    if method in ablations:
        seeds = ablation_seeds(config)
    if attention["seed"] not in seeds:
        raise ZoomMILError(
            f"figures.attention.seed is not one of the method's seeds: {attention['seed']} "
            f"(seeds of '{method}': {', '.join(map(str, seeds))})"
        )
