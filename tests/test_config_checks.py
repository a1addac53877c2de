"""The workflow's checks across config keys (`zoommil.workflow.config_checks`): each bad config
names its key; test_workflow_dryrun shows the message reaches the user through Snakemake."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import validate

import zoommil.models
from zoommil.errors import ZoomMILError
from zoommil.workflow import config_checks

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MODELS = Path(zoommil.models.__file__).parent


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the workflow sees it: validated, with the schema's defaults filled in."""
    validate(config, schema=str(SCHEMA))
    return config


def demo() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))


def test_the_demo_config_and_a_minimal_one_pass() -> None:
    config_checks.check_config(validated(demo()), MODELS)
    minimal = {
        "dataset": "d",
        "preprocess": {"mags": [5, 10]},
        "train": {"seeds": [0, 1]},
        "methods": {"zoommil": {"arch": "zoommil"}},
    }
    config_checks.check_config(validated(minimal), MODELS)  # figures from the schema defaults


def test_methods_and_seeds_read_by_the_workflow() -> None:
    config = validated(demo())
    assert config_checks.efficiency_methods(config) == list(config["methods"])
    config["efficiency"]["methods"] = ["zoommil"]
    assert config_checks.efficiency_methods(config) == ["zoommil"]
    assert config_checks.ablation_seeds(config) == [0, 1, 2]
    del config["ablations"]["seeds"]
    config["train"]["seeds"] = [3]
    assert config_checks.ablation_seeds(config) == [3]
    config["ablations"] = None
    assert config_checks.ablation_methods(config) == {}


def _option_typo(config: dict) -> None:
    config["methods"]["zoommil"]["sigm"] = 0.005


def _ablation_named_like_a_method(config: dict) -> None:
    config["ablations"]["methods"]["abmil"] = {"arch": "abmil"}


def _unknown_reference(config: dict) -> None:
    config["ablations"]["reference"] = "zoommil_random"


def _unknown_efficiency_method(config: dict) -> None:
    config["efficiency"]["methods"] = ["zoommil", "zoomil"]


def _unknown_attention_method(config: dict) -> None:
    config["figures"]["attention"]["method"] = "zoomil"


def _attention_of_dsmil(config: dict) -> None:
    config["figures"]["attention"]["method"] = "dsmil"


def _other_ablation_seeds_in_one_job(config: dict) -> None:
    config["ablations"]["seeds"] = [0]


def _attention_seed_not_trained(config: dict) -> None:
    config["figures"]["attention"]["seed"] = 7


def _attention_seed_not_an_ablation_seed(config: dict) -> None:
    config["train"]["seeds_in_one_job"] = False
    config["ablations"]["seeds"] = [0]
    config["figures"]["attention"].update(method="zoommil_random", seed=2)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_option_typo, "method 'zoommil': model 'zoommil' does not take option(s) sigm"),
        (
            _ablation_named_like_a_method,
            "ablation 'abmil' (ablations.methods) is also a method of Tables 1-3 (methods)",
        ),
        (
            _unknown_reference,
            "ablations.reference must name a method of Tables 1-3, got 'zoommil_random'",
        ),
        (_unknown_efficiency_method, "'zoomil' (efficiency.methods) is not a configured method"),
        (
            _unknown_attention_method,
            "'zoomil' (figures.attention.method) is not a configured method",
        ),
        (
            _attention_of_dsmil,
            "figures.attention.method must be a ZoomMIL method (arch zoommil), got 'dsmil' "
            "(arch dsmil)",
        ),
        (
            _other_ablation_seeds_in_one_job,
            "train.seeds_in_one_job needs ablations.seeds equal to train.seeds",
        ),
        (
            _attention_seed_not_trained,
            "figures.attention.seed is not one of the method's seeds: 7 (seeds of 'zoommil': "
            "0, 1, 2)",
        ),
        (
            _attention_seed_not_an_ablation_seed,
            "figures.attention.seed is not one of the method's seeds: 2 (seeds of "
            "'zoommil_random': 0)",
        ),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_a_bad_config_names_its_key(spoil: Callable[[dict], None], message: str) -> None:
    config = demo()
    spoil(config)
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        config_checks.check_config(validated(config), MODELS)
