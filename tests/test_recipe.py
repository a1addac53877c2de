"""The preprocessing recipe: validation, defaults that agree everywhere, and its journey from the
coords file to the feature file to the checkpoint to `zoommil predict`."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoommil.errors import ZoomMILError
from zoommil.io.coords import load_coords, write_coords
from zoommil.io.featurefile import read_attrs, write_feature_file
from zoommil.recipe import (
    NO_TISSUE_POLICIES,
    TISSUE_METHODS,
    PreprocessingRecipe,
    default,
    format_mags,
)
from zoommil.training.config import SELECTIONS, TrainConfig
from zoommil.wsi.lattice import build_lattice

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_mags_are_normalised_and_fields_validated() -> None:
    recipe = PreprocessingRecipe(mags=[10, 2.5, 5])
    assert recipe.mags == (2.5, 5.0, 10.0)
    assert recipe.patch_size == 256 and recipe.tissue_threshold == 0.1
    assert recipe.tissue_method == "gaussian" and recipe.encoder == "resnet50_layer3"
    assert format_mags(recipe.mags) == "2.5x -> 5x -> 10x"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mags": [5, 15]}, "magnifications 5x and 15x are not power-of-two multiples"),
        ({"mags": [0, 5]}, "magnifications must be positive, got [0.0, 5.0]"),
        ({"mags": [5, 5]}, "magnifications must be distinct"),
        ({"mags": []}, "no magnifications given"),
        ({"mags": ["x"]}, "magnifications must be numbers"),
        ({"patch_size": 0}, "patch size must be >= 1, got 0"),
        ({"patch_size": 25.5}, "patch size must be an integer, got 25.5"),
        ({"tissue_method": "magic"}, "unknown tissue method 'magic' (choose from gaussian, otsu)"),
        ({"tissue_threshold": 1.5}, "tissue threshold must be within 0-1, got 1.5"),
        ({"tissue_params": [1]}, "tissue params must be a mapping"),
        ({"no_tissue": "keep"}, "unknown no-tissue policy 'keep' (choose from exclude, all)"),
        ({"weights": ""}, "encoder weights are empty"),
        ({"weights_seed": -1}, "weights seed must be >= 0, got -1"),
        ({"precision": "fp8"}, "unknown precision 'fp8' (choose from fp32, bf16, auto)"),
    ],
)
def test_invalid_values_are_one_line_errors(changes: dict, message: str) -> None:
    values = {"mags": [2.5, 10], **changes}
    with pytest.raises(ZoomMILError) as error:
        PreprocessingRecipe(**values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_schema_defaults_are_the_recipe_defaults() -> None:
    pre = SCHEMA["properties"]["preprocess"]["properties"]
    tissue = pre["tissue"]["properties"]
    features = SCHEMA["properties"]["features"]["properties"]
    assert pre["patch_size"]["default"] == default("patch_size")
    assert tissue["method"]["default"] == default("tissue_method")
    assert tissue["method"]["enum"] == list(TISSUE_METHODS)
    assert tissue["threshold"]["default"] == default("tissue_threshold")
    assert tissue["params"]["default"] == default("tissue_params")
    assert tissue["no_tissue"]["default"] == default("no_tissue")
    assert sorted(tissue["no_tissue"]["enum"]) == sorted(NO_TISSUE_POLICIES)
    assert features["encoder"]["default"] == default("encoder")
    assert "default" not in features["weights"]  # the encoder's own: test below
    assert features["seed"]["default"] == default("weights_seed")
    assert features["precision"]["default"] == default("precision")


def test_the_documented_recipe_is_the_recipe() -> None:
    """docs/ARCHITECTURE.md wrote `PreprocessingRecipe(...)` without allow_upsampling: the
    page's signature has each field, in order, with its default."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    signature = re.search(r"`PreprocessingRecipe\((.*?)\)`", text).group(1)
    documented = ast.parse(f"f({signature})", mode="eval").body
    fields = dataclasses.fields(PreprocessingRecipe)
    assert [a.id for a in documented.args] + [k.arg for k in documented.keywords] == [
        f.name for f in fields
    ]
    for keyword in documented.keywords:
        field = next(f for f in fields if f.name == keyword.arg)
        factory = field.default_factory
        value = field.default if factory is dataclasses.MISSING else factory()
        assert ast.literal_eval(keyword.value) == value, keyword.arg


def test_schema_training_defaults_are_zoommil_trains() -> None:
    train = SCHEMA["properties"]["train"]["properties"]
    defaults = TrainConfig(features_dir=Path(), sheet=Path(), mags=[])
    assert train["selection"]["default"] == defaults.selection == "val_loss"
    assert train["selection"]["enum"] == list(SELECTIONS)
    for key in ("epochs", "lr", "weight_decay", "early_stopping"):
        assert train[key]["default"] == getattr(defaults, key), key


def test_from_config_reads_the_workflow_keys() -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    recipe = PreprocessingRecipe.from_config(config)
    assert recipe.mags == tuple(float(m) for m in config["preprocess"]["mags"])
    assert recipe.weights == "random" and recipe.precision == config["features"]["precision"]
    assert recipe.no_tissue == "exclude"


@pytest.mark.parametrize(
    ("features", "weights"),
    [({}, "imagenet"), ({"encoder": "uni"}, "hf"), ({"encoder": "phikon-v2"}, "hf"),
     ({"encoder": "uni", "weights": "random"}, "random")],
)  # fmt: skip
def test_unset_weights_are_the_encoders_default(features: dict, weights: str) -> None:
    """A foundation encoder without `features.weights` got `--weights imagenet` (the schema's
    default), which `zoommil features` refuses: every feature job of the cohort failed."""
    config = {"preprocess": {"mags": [10, 20]}, "features": features}
    assert PreprocessingRecipe.from_config(config).weights == weights


def test_recipe_travels_coords_features_checkpoint_predict(tmp_path: Path) -> None:
    from zoommil.inference.predict import Predictor
    from zoommil.training.checkpoint import save_checkpoint
    from zoommil.training.data import shared_attrs

    recipe = PreprocessingRecipe(
        mags=[5, 20], patch_size=128, tissue_method="otsu", tissue_params={"median_kernel": 5},
        tissue_threshold=0.25, no_tissue="all", weights="random", weights_seed=3,
        allow_upsampling=True,  # a bool that HDF5 gives back as numpy's
    )  # fmt: skip
    lattice = build_lattice("s.svs", (2048, 1024), 0.5, recipe, attrs={"mpp_source": "test"})
    coords = load_coords(write_coords(tmp_path / "s.coords.h5", lattice))
    tiling = PreprocessingRecipe.from_attrs(coords.attrs)
    assert tiling.mags == recipe.mags and tiling.patch_size == 128
    assert tiling.tissue_method == "otsu" and tiling.tissue_params == {"median_kernel": 5}
    assert tiling.tissue_threshold == 0.25 and tiling.no_tissue == "all"
    # the feature file: the coords file's attributes plus the encoder part (as extract does)
    attrs = {**coords.attrs, **recipe.to_attrs()}
    feats = [np.zeros((len(x), 4), np.float32) for x in coords.xy]
    path = write_feature_file(
        tmp_path / "s.h5", coords.mags, feats, coords.coords, coords.xy, attrs
    )
    assert PreprocessingRecipe.from_attrs(read_attrs(path)) == recipe
    # training copies what all feature files share into the checkpoint; predict redoes it
    from zoommil.models import build_model

    model = build_model("abmil", in_dim=4, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [20.0], "in_dim": 4,
              "preprocessing": shared_attrs([path])}  # fmt: skip
    save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    predictor = Predictor.from_checkpoint(tmp_path / "c.pt")
    # tiled as the feature files were (tissue filtered at 5x); the model reads its 20x rows
    assert predictor.recipe == recipe and predictor.mags == [20.0]
    assert Predictor.from_checkpoint(tmp_path / "c.pt", weights="imagenet").recipe.weights == (
        "imagenet"
    )


def test_old_encoder_name_reads_as_the_current_one() -> None:
    attrs = {"mags": [5.0], "encoder": "resnet50_layer3_avgpool"}
    assert PreprocessingRecipe.from_attrs(attrs).encoder == default("encoder")


def test_numpy_bool_from_hdf5_reads_as_bool() -> None:
    recipe = PreprocessingRecipe.from_attrs({"mags": [5.0], "allow_upsampling": np.bool_(True)})
    assert recipe.allow_upsampling is True


def test_run_settings_of_feature_extraction_stay_out_of_the_recipe(tmp_path: Path) -> None:
    """Features made with 2 encoder processes equal those made with 1; the count must not
    reach the checkpoint's preprocessing, or the checkpoint's bytes (and predict --resume's
    match on its sha256) would depend on how the features were run."""
    from zoommil.training.data import shared_attrs

    attrs = {**PreprocessingRecipe(mags=[20.0]).to_attrs(), "encoder_processes": 2,
             "threads": 2, "batch_size": 8}  # fmt: skip
    feats = [np.zeros((1, 4), np.float32)]
    coords = [np.zeros((1, 2), np.int64)]
    paths = [write_feature_file(tmp_path / f"s{i}.h5", [20.0], feats, coords, coords, attrs)
             for i in range(2)]  # fmt: skip
    shared = shared_attrs(paths)
    assert shared["mags"] is not None
    assert not {"encoder_processes", "threads", "batch_size"} & set(shared)


def test_recorded_attrs_without_weights_take_the_encoders_default(tmp_path) -> None:
    """Training keeps only the attributes all feature files share: two UNI files that name
    one weights file by an absolute and a relative path (same sha256) leave no `weights`, and
    the recipe took the dataclass default imagenet, so predict failed with "--weights imagenet
    is for resnet50_layer3 only". The encoder's own default is taken, as from a config; the
    recorded sha256 still checks the weights found."""
    from zoommil.inference.predict import Predictor
    from zoommil.models import build_model
    from zoommil.training.checkpoint import save_checkpoint
    from zoommil.training.data import shared_attrs

    recipe = PreprocessingRecipe(mags=[20.0], encoder="uni", weights="/models/uni.safetensors")
    paths = []
    for i, weights in enumerate(["/models/uni.safetensors", "uni.safetensors"]):
        attrs = {**recipe.to_attrs(), "weights": weights, "weights_sha256": "ab" * 32}
        feats = [np.zeros((1, 4), np.float32)]
        coords = [np.zeros((1, 2), np.int64)]
        paths.append(
            write_feature_file(tmp_path / f"s{i}.h5", [20.0], feats, coords, coords, attrs)
        )
    shared = shared_attrs(paths)
    assert "weights" not in shared and shared["encoder"] == "uni"
    assert PreprocessingRecipe.from_attrs(shared).weights == "hf"
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [20.0], "in_dim": 4,
              "preprocessing": shared}  # fmt: skip
    model = build_model("abmil", in_dim=4, n_classes=2)
    predictor = Predictor.from_checkpoint(
        save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    )
    assert predictor.recipe.weights == "hf" and predictor.weights_sha256 == "ab" * 32
    # the ResNet's default is still imagenet; recorded or given weights win
    assert PreprocessingRecipe.from_attrs({"mags": [5.0]}).weights == "imagenet"
    recorded = {"mags": [5.0], "encoder": "uni", "weights": "random"}
    assert PreprocessingRecipe.from_attrs(recorded).weights == "random"
    assert PreprocessingRecipe.from_attrs(recorded, weights="w.pt").weights == "w.pt"
