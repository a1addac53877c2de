"""The workflow's checks across config keys (`zoommil.workflow.config_checks`): each bad config
names its key; test_workflow_dryrun shows the message reaches the user through Snakemake."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.exceptions import WorkflowError
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


def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


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


def test_a_method_lr_without_a_dot_is_a_number() -> None:
    """YAML 1.1 (PyYAML, Snakemake) reads ``lr: 1e-4`` as the string '1e-4'; `zoommil train`
    converts it, so the check at load accepts it too."""
    config = demo()
    config["methods"]["meanmil"]["train"] = yaml.safe_load("lr: 1e-4\nweight_decay: 1e-5")
    assert config["methods"]["meanmil"]["train"]["lr"] == "1e-4"
    config_checks.check_config(validated(config), MODELS)


def test_a_top_level_lr_without_a_dot_is_a_number() -> None:
    """The same spelling in the config's `train:` block: the schema alone refuses the string."""
    config = demo()
    config["train"].update(yaml.safe_load("lr: 1e-4\nweight_decay: 5E-6"))
    with pytest.raises(Exception, match="is not of type 'number'"):
        validated(copy.deepcopy(config))
    config_checks.scalars_from_strings(config, schema())
    assert config["train"]["lr"] == 1e-4 and config["train"]["weight_decay"] == 5e-6
    config_checks.check_config(validated(config), MODELS)
    spelled = {"train": {"lr": "nan", "weight_decay": "1e-4x"}}
    config_checks.scalars_from_strings(spelled, schema())
    assert spelled == {"train": {"lr": "nan", "weight_decay": "1e-4x"}}  # left to the schema


def test_nested_command_line_values_become_what_the_schema_wants() -> None:
    """Snakemake reads `--config 'train={epochs: 50, seeds: [0]}'` with YAML's base loader:
    every nested value is a string, and the schema said "'50' is not of type 'integer'"."""
    config = demo()
    nested = yaml.load(
        "{epochs: 50, seeds: [0, 1], seeds_in_one_job: false, lr: 2e-4}", Loader=yaml.BaseLoader
    )
    assert nested["epochs"] == "50"
    config["train"].update(nested)
    config["efficiency"] = {"gpu": "false"}
    config["methods"]["zoommil"]["k"] = "4"  # oneOf: an integer or a list of them
    config["methods"]["zoommil"]["sigma"] = "0.002"  # a model option the schema does not type
    config["methods"]["meanmil"]["train"] = {"epochs": "5", "lr": "1e-3"}
    config["train"]["extra"] = {"lr_patience": "3", "feature_norm": "standardize"}
    config["train"]["early_stopping"] = "null"
    config["ablations"]["seeds"] = ["0", "1", "2"]
    config["dataset"] = "2024"  # a string in the schema: stays one
    with pytest.raises(Exception, match="is not of type"):
        validated(copy.deepcopy(config))
    config_checks.scalars_from_strings(config, schema())
    train = config["train"]
    assert (train["epochs"], train["seeds"], train["seeds_in_one_job"]) == (50, [0, 1], False)
    assert train["lr"] == 2e-4 and config["efficiency"]["gpu"] is False
    assert config["methods"]["zoommil"]["k"] == 4 and config["dataset"] == "2024"
    assert config["methods"]["zoommil"]["sigma"] == 0.002
    assert config["methods"]["meanmil"]["train"] == {"epochs": 5, "lr": 1e-3}
    assert config["train"]["extra"] == {"lr_patience": 3, "feature_norm": "standardize"}
    assert train["early_stopping"] is None and config["ablations"]["seeds"] == [0, 1, 2]
    config_checks.check_config(validated(config), MODELS)
    words = {"train": {"epochs": "fifty", "seeds": ["0.5"]}}
    config_checks.scalars_from_strings(words, schema())
    assert words == {"train": {"epochs": "fifty", "seeds": ["0.5"]}}  # left to the schema


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


def _option_training_sets(config: dict) -> None:
    config["methods"]["zoommil"]["n_classes"] = 5


def _ablation_named_like_a_method(config: dict) -> None:
    config["ablations"]["methods"]["abmil"] = {"arch": "abmil"}


def _unknown_reference(config: dict) -> None:
    config["ablations"]["reference"] = "zoommil_random"


def _unknown_efficiency_method(config: dict) -> None:
    config["efficiency"]["methods"] = ["zoommil", "zoomil"]


def _unknown_attention_method(config: dict) -> None:
    config["figures"]["attention"]["method"] = "zoomil"


def _attention_of_meanmil(config: dict) -> None:
    config["figures"]["attention"]["method"] = "meanmil"


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
            # the load check let it through and every train job of the method failed
            _option_training_sets,
            "method 'zoommil': model 'zoommil': n_classes cannot be set as an option; training "
            "sets n_classes from the number of classes",
        ),
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
            "'zoomil' (figures.attention.method, default zoommil) is not a configured method; "
            "set figures.attention.method to one with attention (zoommil, maxmil, abmil, ",
        ),
        (
            _attention_of_meanmil,
            "figures.attention.method must be a method with attention (any architecture but "
            "meanmil and sparseconvmil), got 'meanmil' (arch meanmil)",
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


def test_figure_4_may_show_any_method_with_attention() -> None:
    """Figure 4 and `zoommil predict --heatmap` draw every baseline's attention but MeanMIL's
    and SparseConvMIL's: a DSMIL figure passes the check."""
    config = demo()
    config["figures"]["attention"]["method"] = "dsmil"
    config_checks.check_config(validated(config), MODELS)


def test_a_baseline_only_config_without_figures_is_told_what_figure_4_can_show() -> None:
    """The schema's default method 'zoommil' was refused as "not a configured method" in a
    config that never names it (review B); the message now lists the methods that qualify."""
    config = demo()
    del config["figures"]
    config["methods"] = {m: config["methods"][m] for m in ("meanmil", "abmil", "dsmil")}
    config["ablations"] = None
    config["efficiency"]["methods"] = ["abmil"]
    with pytest.raises(ZoomMILError) as info:
        config_checks.check_config(validated(config), MODELS)
    assert str(info.value) == (
        "'zoommil' (figures.attention.method, default zoommil) is not a configured method; "
        "set figures.attention.method to one with attention (abmil, dsmil) or to null to "
        "leave Figure 4 out"
    )


def test_a_config_without_attention_can_leave_figure_4_out() -> None:
    """MeanMIL and SparseConvMIL alone have no attention to draw: the check refused every
    value of figures.attention.method, so such a config could not run; null now passes."""
    config = demo()
    config["methods"] = {m: config["methods"][m] for m in ("meanmil", "sparseconvmil")}
    config["ablations"] = None
    config["efficiency"]["methods"] = ["meanmil"]
    with pytest.raises(ZoomMILError, match=r"one with attention \(none is configured\)"):
        config_checks.check_config(validated(config), MODELS)
    config["figures"]["attention"]["method"] = None
    config_checks.check_config(validated(config), MODELS)


# --- the schema: every section refuses keys it does not know ---------------------------------


def _set(config: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.epoch", 5),
        ("preprocess.tissue.treshold", 0.5),
        ("features.wieghts", "random"),
        ("efficency", {"n_slides": 1}),
        ("figures.attention.nslides", 1),
        ("ablations.seed", [0]),
        ("efficiency.warmups", 1),
        ("preprocess.patchsize", 128),
    ],
)
def test_the_schema_refuses_a_misspelled_key(key: str, value: Any) -> None:
    config = demo()
    _set(config, key, value)
    with pytest.raises(WorkflowError, match=f"'{key.rsplit('.', 1)[-1]}' was unexpected"):
        validated(config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "default_mmp",
            0.5,
            "unknown key 'default_mmp' (did you mean 'default_mpp'?); allowed at the top level: ",
        ),
        (
            "preprocess.tissue.treshold",
            0.5,
            "unknown key 'preprocess.tissue.treshold' (did you mean "
            "'preprocess.tissue.threshold'?); allowed under 'preprocess.tissue': method, "
            "threshold, params, no_tissue",
        ),
        ("figures.attention.nslides", 1, "(did you mean 'figures.attention.n_slides'?)"),
    ],
)
def test_a_misspelled_key_is_named_by_its_path_before_the_schema(
    key: str, value: Any, message: str
) -> None:
    """Snakemake's own message for these buried the key under a dump of the whole config."""
    config = demo()
    _set(config, key, value)
    with pytest.raises(ZoomMILError) as caught:
        config_checks.check_config_keys(config, schema())
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_config_with_only_the_keys_to_change_names_every_missing_key() -> None:
    """A --configfile replaces config.yaml; a file holding only `sheet` and `classes` got one
    missing key per run, each under a dump of the whole schema."""
    only = {"sheet": "s.tsv", "classes": ["a", "b"]}
    with pytest.raises(ZoomMILError) as caught:
        config_checks.check_config_keys(only, schema())
    assert str(caught.value).startswith(
        "missing key(s) dataset, preprocess, train, methods (a --configfile replaces "
        "config/config.yaml"
    )
    # the small file of changes works after a complete config (Snakemake layers the files)
    assert "`--configfile config/config.yaml changes.yaml`" in str(caught.value)
    config_checks.check_config_keys(demo(), schema())


@pytest.mark.parametrize("null", [None, "null"])  # a layered file's, a --config value's
def test_a_method_set_to_null_is_refused_naming_it(null: Any) -> None:
    """`methods: {meanmil: null}` layered over a complete config, or `--config
    'methods={meanmil: null}'`, removes no method (Snakemake merges mappings key by key); the
    schema refused it as "None is not of type 'object'", naming no key."""
    config = demo()
    config["methods"]["meanmil"] = null
    config["ablations"]["methods"]["zoommil_random"] = null
    with pytest.raises(ZoomMILError) as caught:
        config_checks.check_config_keys(config, schema())
    assert str(caught.value).startswith(
        "methods.meanmil is null: a method cannot be removed by --config or by a file layered "
        "after a complete config"
    )
    assert "; ablations.methods.zoommil_random is null" in str(caught.value)


@pytest.mark.parametrize(
    ("mags", "k"), [([5, 10], [4]), ([5, 10, 20], [4, 2]), ([5, 10], 8), ([5, 10, 20], [4, 16])]
)
def test_zoommil_k_one_per_zoom_step_passes_as_the_model_takes_it(mags: list, k: Any) -> None:
    config = demo()
    config["preprocess"]["mags"] = mags
    config["methods"]["zoommil"]["k"] = k
    config_checks.check_config(validated(config), MODELS)


def test_a_k_list_of_another_length_than_the_zoom_steps_fails_at_load() -> None:
    """[4, 2] with two magnifications (one zoom step) was refused only by the train job,
    after all the preprocessing, in a message naming neither the method nor the config."""
    config = demo()
    config["methods"]["zoommil"]["k"] = [4, 2]
    message = (
        "method 'zoommil': model 'zoommil': option k has 2 values, one per zoom step, but the "
        "magnifications 5x -> 10x give 1 step(s): got [4, 2]"
    )
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}$"):
        config_checks.check_config(validated(config), MODELS)


def test_configured_classes_that_differ_only_in_case_fail_at_load() -> None:
    """`classes: [normal, Tumor, tumor]` passed the schema (the names are distinct) and was
    refused, if at all, as an error of the slide sheet's."""
    config = demo()
    config["classes"] = ["normal", "Tumor", "tumor"]
    with pytest.raises(ZoomMILError, match="^classes: labels 'Tumor' and 'tumor' differ only"):
        config_checks.check_config(validated(config), MODELS)


def test_a_zoom_step_keeping_more_than_it_can_choose_from_fails_at_load() -> None:
    """k [2, 12] over 1.25x -> 2.5x -> 10x: the second step chooses among the 2 x 4 children
    of the first step's 2, so it can never keep 12; it passed, and trained as [2, 8]."""
    config = demo()
    config["preprocess"]["mags"] = [1.25, 2.5, 10]
    config["methods"]["zoommil"]["k"] = [2, 12]
    message = (
        "method 'zoommil': model 'zoommil': option k [2, 12]: zoom step 2 chooses among the 8 "
        "patches at 2.5x under the 2 kept at 1.25x, so it cannot keep 12"
    )
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}$"):
        config_checks.check_config(validated(config), MODELS)


@pytest.mark.parametrize("k", [[], [4, 0], 0, 2.5, "4"])
def test_the_schema_refuses_a_k_the_model_would(k: Any) -> None:
    config = demo()
    config["methods"]["zoommil"]["k"] = k
    with pytest.raises(WorkflowError, match="Failed validating"):
        validated(config)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("preprocess.tile_args", {"patch_size": 128}),
        ("preprocess.tile_args", {"tissue-threshold": 0.5}),
        ("features.args", {"weights": "random"}),
        ("features.args", {"device": "cpu"}),
        ("default_mpp", 0.01),
        ("default_mpp", 352.8),
        ("synth.n_slides", 4),
        ("figures.attention.n_slides", 0),  # a figure "no test slides to show" (review B)
    ],
)
def test_the_schema_refuses_values_a_rule_or_the_demo_would_get_wrong(key: str, value: Any) -> None:
    config = demo()
    _set(config, key, value)
    with pytest.raises(WorkflowError, match="Failed validating"):
        validated(config)


def test_the_schema_and_the_check_refuse_the_same_flags() -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    pre = schema["properties"]["preprocess"]["properties"]["tile_args"]
    features = schema["properties"]["features"]["properties"]["args"]
    for block, flags in ((pre, config_checks.TILE_FLAGS), (features, config_checks.FEATURES_FLAGS)):
        names = {name.replace("_", "-") for name in block["propertyNames"]["not"]["enum"]}
        assert names == set(flags)
        assert all(
            name.replace("-", "_") in block["propertyNames"]["not"]["enum"] for name in flags
        )


def test_the_smallest_demo_has_every_split() -> None:
    """synth.n_slides' minimum is the fewest slides that give train, val and test slides."""
    from zoommil.synth.dataset import plan_slides

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    smallest = schema["properties"]["synth"]["properties"]["n_slides"]["minimum"]
    assert {split for _, split in plan_slides(smallest, 0)} == {"train", "val", "test"}
    assert {split for _, split in plan_slides(smallest - 1, 0)} != {"train", "val", "test"}


# --- checks at load of what only training, tiling or extraction would refuse ----------------


def _demo_with_a_sheet(config: dict) -> None:
    config["sheet"] = "my_slides.tsv"


def _abbreviated_tile_flag(config: dict) -> None:
    config["preprocess"]["tile_args"] = {"patch": 128}


def _abbreviated_features_flag(config: dict) -> None:
    config["features"]["args"] = {"batch_size": 16, "weight": "imagenet"}


def _features_slide_id(config: dict) -> None:
    config["features"]["args"] = {"slide": "x"}


def _features_flag_typo(config: dict) -> None:
    config["features"]["args"] = {"batchsize": 16}


def _missing_weights_file(config: dict) -> None:
    config["features"]["weights"] = "no/such/weights.pth"


def _imagenet_for_uni(config: dict) -> None:
    config["features"].update(encoder="uni", weights="imagenet")


def _one_magnification_for_zoommil(config: dict) -> None:
    config["preprocess"]["mags"] = [10]


def _dropout_above_one(config: dict) -> None:
    config["methods"]["abmil"]["dropout"] = 2.0


def _sigma_zero(config: dict) -> None:
    config["methods"]["zoommil"]["sigma"] = 0


def _method_mags_not_preprocessed(config: dict) -> None:
    config["methods"]["meanmil"]["mags"] = [10, 30]


def _unknown_method_train_setting(config: dict) -> None:
    config["methods"]["meanmil"]["train"] = {"epoch": 5}


def _method_train_epochs_zero(config: dict) -> None:
    config["methods"]["meanmil"]["train"] = {"epochs": 0}


def _method_train_lr_nan(config: dict) -> None:
    config["methods"]["meanmil"]["train"] = {"lr": float("nan")}


def _features_flag_abbreviated(config: dict) -> None:
    config["features"]["args"] = {"batch": 8}


def _misspelled_feature_norm(config: dict) -> None:
    config["train"]["extra"] = {"feature_norm": "standardise"}


def _unknown_extra_key(config: dict) -> None:
    config["train"]["extra"] = {"feature_norm": "standardize", "lr_patiance": 3}


def _extra_key_of_train_itself(config: dict) -> None:
    config["train"]["extra"] = {"epochs": 3}


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_demo_with_a_sheet, "sheet: 'my_slides.tsv' is ignored in demo mode"),
        (
            _abbreviated_tile_flag,
            "preprocess.tile_args: 'patch' sets (or abbreviates) --patch-size",
        ),
        (_abbreviated_features_flag, "features.args: 'weight' sets (or abbreviates) --weights"),
        (_features_slide_id, "features.args: 'slide' sets (or abbreviates) --slide-id"),
        (
            _features_flag_typo,
            "features.args: 'batchsize' is not a flag of zoommil features (written in full; "
            "the ones this block may set: batch-size, workers)",
        ),
        (
            _features_flag_abbreviated,
            "features.args: 'batch' abbreviates --batch-size; write it in full ('batch-size')",
        ),
        (
            _missing_weights_file,
            "features.weights: weights 'no/such/weights.pth' is neither a keyword nor an existing "
            "file (encoder resnet50_layer3)",
        ),
        (_imagenet_for_uni, "features.weights: encoder uni does not take weights 'imagenet'"),
        (
            _one_magnification_for_zoommil,
            "method 'zoommil': ZoomMIL needs at least 2 magnifications, got 10x",
        ),
        (
            _dropout_above_one,
            "method 'abmil': model 'abmil': option dropout must be a number in [0, 1), got 2.0",
        ),
        (
            _sigma_zero,
            "method 'zoommil': model 'zoommil': option sigma (top-K noise) must be a number > 0",
        ),
        (
            _method_mags_not_preprocessed,
            "method 'meanmil': mags 30x not among preprocess.mags (5x -> 10x)",
        ),
        (_unknown_method_train_setting, "method 'meanmil': unknown training setting(s) epoch"),
        (
            _method_train_epochs_zero,
            "method 'meanmil': train: 'epochs' must be a positive integer, got 0",
        ),
        (
            _method_train_lr_nan,
            "method 'meanmil': train: 'lr' must be a finite number > 0, got nan",
        ),
        (
            _misspelled_feature_norm,
            "train.extra: 'feature_norm' must be one of none, standardize, got 'standardise'",
        ),
        (_unknown_extra_key, "train.extra: unknown key(s) lr_patiance; it takes"),
        (_extra_key_of_train_itself, "train.extra: unknown key(s) epochs; it takes"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_what_a_later_job_refuses_fails_at_load(
    spoil: Callable[[dict], None], message: str
) -> None:
    config = demo()
    spoil(config)
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        config_checks.check_config(validated(config), MODELS)


def test_existing_weights_files_and_hf_pass(tmp_path: Path) -> None:
    """Only keywords and existence are checked: the caches may be on other machines."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    for encoder, value in (("resnet50_layer3", str(weights)), ("uni", "hf"), ("uni", "random")):
        config = demo()
        config["features"].update(encoder=encoder, weights=value)
        config_checks.check_config(validated(config), MODELS)


@pytest.mark.parametrize(
    ("arch", "options"),
    [("abmil", {"dropout": 2.0}), ("dsmil", {"dropout_v": -0.1}), ("zoommil", {"sigma": 0})],
)
def test_build_model_refuses_the_same_values(arch: str, options: dict) -> None:
    with pytest.raises(ZoomMILError, match=f"^model '{arch}': option"):
        zoommil.models.build_model(arch, mags=[5, 10], **options)


def test_extra_flags_written_in_full_pass_and_tile_args_has_none_left() -> None:
    config = demo()
    config["features"]["args"] = {"batch_size": 8, "workers": 2}
    config_checks.check_config(validated(config), MODELS)
    config["preprocess"]["tile_args"] = {"overlap": 0}
    with pytest.raises(ZoomMILError, match=re.escape("the ones this block may set: none)")):
        config_checks.check_extra_flags(config)


@pytest.mark.parametrize(
    ("key", "advice"),
    [
        ("threads", "the rule's threads set it: snakemake --set-threads features=N"),
        ("device", "a GPU is used where the rule's resources request one"),
        ("out", "the workflow sets it for each job"),
        ("weights", "set it in the config's own key (config/README.md) instead"),
    ],
)
def test_a_flag_the_workflow_passes_says_where_it_is_set(key: str, advice: str) -> None:
    """The workflow checks these before the schema, whose own refusal of the exact names
    said only "'threads' should not be valid under {'enum': [...]}"."""
    config = demo()
    config["features"]["args"] = {key: 1}
    message = f"features.args: '{key}' sets (or abbreviates) --{key}, which the workflow passes "
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}itself; {re.escape(advice)}"):
        config_checks.check_extra_flags(config)


def test_yaml_words_and_numbers_where_text_is_wanted() -> None:
    """`--config dataset=2024` reaches the workflow as the integer 2024 (Snakemake tries int
    first) and nested `yes` / `~` as strings; each becomes what the schema wants there."""
    config = demo()
    config["dataset"] = 2024
    config["train"]["seeds_in_one_job"] = "yes"
    config["train"]["early_stopping"] = "~"
    config["efficiency"] = {"gpu": "Off"}
    config_checks.scalars_from_strings(config, schema())
    assert config["dataset"] == "2024" and config["train"]["seeds_in_one_job"] is True
    assert config["train"]["early_stopping"] is None and config["efficiency"]["gpu"] is False
    validated(config)


def test_two_keys_for_one_flag_are_refused() -> None:
    config = demo()
    config["features"]["args"] = {"batch_size": 16, "batch-size": 8}
    message = "features.args: 'batch_size' and 'batch-size' both set --batch-size"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        config_checks.check_extra_flags(config)


def test_one_magnification_and_a_k_list_name_the_magnifications_not_k() -> None:
    config = demo()
    config["preprocess"]["mags"] = [10]
    config["methods"]["zoommil"]["k"] = [4]
    message = "method 'zoommil': ZoomMIL needs at least 2 magnifications, got 10x"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        config_checks.check_config(validated(config), MODELS)


def test_synth_settings_fill_zoommil_synths_own_defaults() -> None:
    """The rule had its own default (24 slides) where `zoommil synth` makes 60; schema
    defaults cannot do it, since snakemake's validate then fails on `synth: null`."""
    from zoommil.synth import DEMO_N_SLIDES
    from zoommil.workflow.config_checks import synth_settings

    assert synth_settings({"synth": {"seed": 3}}) == {
        "n_slides": DEMO_N_SLIDES,
        "seed": 3,
        "scale": 1.0,
    }
    assert synth_settings({"synth": {"n_slides": 9, "scale": 0.5}})["n_slides"] == 9
    assert synth_settings({"synth": None}) == synth_settings({}) == {}


def test_a_sheet_beside_the_config_file_is_named_when_not_found(tmp_path, monkeypatch) -> None:
    """`sheet: slides.tsv` in a config file kept beside the sheet: 'slide sheet not found'
    named only the working directory's path; it now says where the sheet is."""
    (tmp_path / "cohort").mkdir()
    configfile = tmp_path / "cohort" / "my.yaml"
    (tmp_path / "cohort" / "slides.tsv").write_text("x")
    monkeypatch.chdir(tmp_path)
    hint = config_checks.sheet_beside_configfile("slides.tsv", [configfile])
    assert hint == (
        f"; `sheet:` is relative to the working directory ({tmp_path}), not to the config "
        f"file: write the sheet's absolute path, {tmp_path / 'cohort' / 'slides.tsv'}"
    )
    assert config_checks.sheet_beside_configfile("other.tsv", [configfile]) == ""
    assert config_checks.sheet_beside_configfile("cohort/slides.tsv", [configfile]) == ""


def test_a_configfile_statement_under_a_given_configfile_is_warned_of() -> None:
    """A deployment's Snakefile (snakedeploy's: `configfile: "config/config.yaml"` above
    `module zoommil:`) loaded the demo config under a --configfile, which Snakemake merged
    over it: the demo's methods stayed in the run, without a word."""
    given = ["/d/config/bright.yaml"]
    warning = config_checks.merged_configfiles_warning(given + ["config/config.yaml"], given)
    assert warning.startswith(
        "zoommil: warning: config: config/config.yaml (a `configfile:` of the Snakefile) was "
        "loaded besides --configfile /d/config/bright.yaml, which Snakemake merged over it"
    )
    assert "`if not workflow.overwrite_configfiles:`" in warning
    # zoommil's own Snakefile: no statement under a --configfile; none without one
    assert config_checks.merged_configfiles_warning(given, given) == ""
    assert config_checks.merged_configfiles_warning(["config/config.yaml"], []) == ""


def test_a_configfile_statement_of_a_given_configfile_is_not_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--configfile config/config.yaml changes.yaml` (README's layered form) in a deployment
    whose Snakefile loads config/config.yaml unguarded: Snakemake lists the given files by
    absolute path and the statement's as written, and the warning named the one file as
    merged over itself."""
    monkeypatch.chdir(tmp_path)
    given = [tmp_path / "config" / "config.yaml", tmp_path / "changes.yaml"]
    loaded = [*given, "config/config.yaml"]
    assert config_checks.merged_configfiles_warning(loaded, given) == ""


def test_split_execution_args_keeps_result_flags_in_the_trigger() -> None:
    """Only the flags named as execution flags leave the rerun trigger; any other (a later
    flag that changes the features) stays in it."""
    execution = config_checks.FEATURES_EXECUTION_FLAGS
    args = {"batch_size": 8, "workers": 0, "new-flag": 1}
    results, how = config_checks.split_execution_args(args, execution)
    assert results == {"new-flag": 1}
    assert how == {"batch_size": 8, "workers": 0}
    assert config_checks.split_execution_args(None, execution) == ({}, {})


def test_a_models_arch_missing_from_one_list_is_named_before_the_schema(tmp_path: Path) -> None:
    """A model of one's own registered in `zoommil.models` but not yet in the schema's enum
    (or the other way round), or a typo, got Snakemake's "'mymil' is not one of [...]" under
    a dump of the enum, naming neither list a model is added to; the load check naming them
    ran only after the schema. Now one line, before the schema, says which list lacks it."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "mymil.py").write_text(
        "from torch import nn\n\n\nclass MyMIL(nn.Module):\n"
        "    def __init__(self, in_dim: int = 1024, n_classes: int = 2) -> None:\n"
        "        super().__init__()\n"
    )
    init = root / "__init__.py"
    text = init.read_text()
    text = text.replace('"dsmil": DSMIL,\n', '"dsmil": DSMIL,\n    "mymil": MyMIL,\n')
    init.write_text(text.replace("import ABMIL\n", "import ABMIL\nfrom .mymil import MyMIL\n"))
    config = demo()
    config["methods"]["mine"] = {"arch": "mymil"}
    config_checks.check_method_archs(demo(), schema(), root)  # the shipped methods pass
    cases = [
        (config, "methods.mine.arch: architecture 'mymil' is registered in "
         "src/zoommil/models/__init__.py (_CLASSES) but not in workflow/schemas/config.schema"
         ".yaml (definitions.method.properties.arch.enum): add it there too (docs/"
         "ARCHITECTURE.md, 'Adding a model')"),
    ]  # fmt: skip
    typo = demo()
    typo["ablations"]["methods"]["zoommil_random"]["arch"] = "zoomil"
    cases.append((typo, "ablations.methods.zoommil_random.arch: unknown architecture 'zoomil' "
                  "(did you mean 'zoommil'?); known: zoommil, maxmil,"))  # fmt: skip
    papers = demo()
    papers["methods"]["clam_sb"] = {"arch": "CLAM-SB"}
    cases.append(
        (papers, "methods.clam_sb.arch: unknown architecture 'CLAM-SB' (did you mean 'clam_sb'?)")
    )
    for bad, message in cases:
        with pytest.raises(ZoomMILError) as caught:
            config_checks.check_method_archs(bad, schema(), root)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    listed = schema()
    listed["definitions"]["method"]["properties"]["arch"]["enum"].append("yourmil")
    config["methods"]["mine"] = {"arch": "yourmil"}
    with pytest.raises(ZoomMILError, match=re.escape(
        "'yourmil' is registered in workflow/schemas/config.schema.yaml (definitions.method."
        "properties.arch.enum) but not in src/zoommil/models/__init__.py (_CLASSES)"
    )):  # fmt: skip
        config_checks.check_method_archs(config, listed, root)
