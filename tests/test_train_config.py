"""The train config's values (`zoommil.training.config`): what YAML makes of them, and
errors that name the file, the method and the key a bad value came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.models import MODEL_NAMES
from zoommil.training.config import apply_overrides, load_config, resolve_method

HEAD = "features_dir: feats\nsheet: slides.tsv\nmags: [5, 10, 20]\n"


def _method(tmp_path: Path, lines: str, name: str = "zm") -> tuple[Path, str]:
    """A config whose method ``name`` (ZoomMIL) has ``lines`` (indented under it)."""
    path = tmp_path / "train.yaml"
    body = "".join(f"    {line}\n" for line in lines.splitlines())
    path.write_text(f"{HEAD}methods:\n  {name}:\n    arch: zoommil\n{body}")
    return path, name


def _resolve(path: Path, name: str):
    return resolve_method(load_config(path), name, MODEL_NAMES)


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4", "0.0001"])
def test_an_lr_without_a_dot_is_a_number(tmp_path: Path, text: str) -> None:
    """YAML 1.1 (PyYAML) reads ``1e-4``, without a dot, as the string '1e-4'."""
    path, name = _method(tmp_path, f"train:\n  lr: {text}\n  weight_decay: 1e-5")
    config = load_config(path)
    method = resolve_method(config, name, MODEL_NAMES)
    merged = apply_overrides(config, method)
    assert merged.lr == 1e-4 and isinstance(merged.lr, float)
    assert merged.weight_decay == 1e-5
    path.write_text(f"{HEAD}lr: {text}\nweight_decay: 2e-5\n")
    assert load_config(path).lr == 1e-4 and load_config(path).weight_decay == 2e-5


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "0", "-1.0e-4", "nan", "fast"])
def test_an_lr_that_is_not_a_positive_number_names_the_method_and_key(
    tmp_path: Path, text: str
) -> None:
    path, name = _method(tmp_path, f"train:\n  lr: {text}")
    message = f"{path}: method 'zm': train: 'lr' must be a finite number > 0, got "
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        _resolve(path, name)
    path.write_text(f"{HEAD}lr: {text}\n")
    with pytest.raises(ZoomMILError, match=re.escape(f"{path}: 'lr' must be a finite number > 0")):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "text", "rule"),
    [
        ("weight_decay", ".nan", "a finite number >= 0"),
        ("weight_decay", "-1", "a finite number >= 0"),
        ("lr_factor", "1.5", "a number in [0, 1) (the lr is multiplied by it on a plateau)"),
        ("lr_factor", ".inf", "a number in [0, 1) (the lr is multiplied by it on a plateau)"),
        ("lr_patience", "2.5", "a whole number >= 0"),
        ("lr_patience", "-1", "a whole number >= 0"),
    ],
)
def test_other_float_settings_refuse_what_torch_would(
    tmp_path: Path, key: str, text: str, rule: str
) -> None:
    path, name = _method(tmp_path, f"train:\n  {key}: {text}")
    with pytest.raises(ZoomMILError, match=re.escape(f"train: '{key}' must be {rule}")):
        _resolve(path, name)


@pytest.mark.parametrize("text", ["2.7", "0", "true", "[4, 2.5]", "[]", "'12'"])
def test_zoommil_k_must_be_positive_integers(tmp_path: Path, text: str) -> None:
    path, name = _method(tmp_path, f"k: {text}")
    message = (
        f"{path}: method 'zm': model 'zoommil': option k (parents zoomed into per step) must be "
        "a positive integer or a list of them, one per zoom step, got "
    )
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        _resolve(path, name)


@pytest.mark.parametrize("text", ["4", "[4, 2]"])
def test_zoommil_k_as_an_integer_or_one_per_step(tmp_path: Path, text: str) -> None:
    path, name = _method(tmp_path, f"k: {text}")
    assert _resolve(path, name).kwargs["k"] in (4, [4, 2])


def test_a_k_list_of_another_length_than_the_zoom_steps_fails_before_any_bag_is_read(
    tmp_path: Path,
) -> None:
    """HEAD has 3 magnifications, so 2 zoom steps; the features folder does not exist, so an
    error about k shows that it came before the data."""
    from zoommil.training import train

    path, name = _method(tmp_path, "k: [4, 2, 1]")
    config = load_config(path)
    message = (
        f"{path}: method 'zm': model 'zoommil': option k has 3 values, one per zoom step, but "
        "the magnifications 5x -> 10x -> 20x give 2 step(s): got [4, 2, 1]"
    )
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}$"):
        train(config, resolve_method(config, name, MODEL_NAMES), 0, tmp_path / "run", "cpu")


def test_epochs_zero_in_a_method_names_the_file_and_method_not_the_cli_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, name = _method(tmp_path, "train:\n  epochs: 0")
    message = f"{path}: method 'zm': train: 'epochs' must be a positive integer, got 0"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}$"):
        _resolve(path, name)
    out = tmp_path / "run"
    args = ["train", "--config", str(path), "--model", name, "--out", str(out)]
    assert main([*args, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "--epochs" not in err and "Traceback" not in err


@pytest.mark.parametrize(("text", "patience"), [("3", 3), ("3.0", 3), ("0", 0)])
def test_lr_patience_takes_whole_numbers(tmp_path: Path, text: str, patience: int) -> None:
    path, name = _method(tmp_path, f"train:\n  lr_patience: {text}")
    config = load_config(path)
    merged = apply_overrides(config, resolve_method(config, name, MODEL_NAMES))
    assert merged.lr_patience == patience and isinstance(merged.lr_patience, int)


def test_a_json_config_refuses_a_key_given_twice(tmp_path: Path) -> None:
    """`json.loads` keeps the last of two equal keys without a word, as PyYAML does."""
    path = tmp_path / "train.json"
    path.write_text('{"features_dir": "f", "sheet": "s.tsv", "lr": 0.1, "lr": 0.001}')
    message = f"{path}: key 'lr' is given twice in one object"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        load_config(path)
    path.write_text('{"features_dir": "f", "sheet": "s.tsv", "mags": [5, 10], "lr": 0.001}')
    assert load_config(path).lr == 0.001


def test_an_option_training_sets_itself_is_refused_naming_it(tmp_path: Path) -> None:
    """``in_dim: 512`` under a method: `build_model` got it twice ("got multiple values for
    keyword argument") when the run started."""
    path, name = _method(tmp_path, "in_dim: 512")
    with pytest.raises(ZoomMILError, match=r"in_dim cannot be set as an option; training sets "
                       r"in_dim from the feature files' dimension"):  # fmt: skip
        _resolve(path, name)


def test_the_papers_spellings_resolve_to_the_registered_architecture(tmp_path: Path) -> None:
    """`arch: CLAM-SB` passed the workflow's check and then failed `zoommil train` (which
    compared the name as written); `--model MS-MIL` was not an architecture."""
    path = tmp_path / "train.yaml"
    path.write_text(f"{HEAD}methods:\n  clam:\n    arch: CLAM-SB\n")
    assert _resolve(path, "clam").arch == "clam_sb"
    assert _resolve(path, "MS-MIL").arch == "msmil"
    path.write_text(f"{HEAD}methods:\n  x:\n    arch: MS-MIL-2\n")
    with pytest.raises(ZoomMILError, match="unknown architecture 'MS-MIL-2'"):
        _resolve(path, "x")
