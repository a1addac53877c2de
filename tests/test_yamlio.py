"""YAML configs refuse a key given twice (`zoommil.io.yamlio`), where PyYAML keeps the last."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from zoommil.errors import ZoomMILError
from zoommil.io.yamlio import check_unique_keys, load_yaml
from zoommil.training.config import load_config

TRAIN_CONFIG = """\
features_dir: feats
sheet: slides.tsv
mags: [5, 10]
methods:
  abmil:
    arch: abmil
    train:
      lr: 1.0e-3
      epochs: 5
      lr: 1.0e-2
"""


def test_a_duplicate_key_names_the_source_the_key_and_both_lines() -> None:
    text = "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n"
    assert yaml.safe_load(text) == {"a": 1, "b": {"c": 4, "d": 3}}  # what it replaces
    message = "cfg.yaml: key 'c' is given twice (lines 3 and 5)"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        load_yaml(text, "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("1: a\n1.0: b\n", "1.0", (1, 2)),  # equal as dict keys
        ("yes: a\ntrue: b\n", "True", (1, 2)),  # both YAML 1.1 booleans
        ('{"lr": 1, "epochs": 2,\n "lr": 3}\n', "lr", (1, 2)),  # JSON is YAML too
        ("top:\n- x: 1\n  x: 2\n", "x", (2, 3)),  # in a list item
    ],
)
def test_keys_equal_once_loaded_are_duplicates(text: str, key: str, lines: tuple) -> None:
    with pytest.raises(
        ZoomMILError, match=re.escape(f"'{key}' is given twice (lines {lines[0]} and {lines[1]})")
    ):
        load_yaml(text, "x.yaml")


def test_two_equal_keys_on_one_line_name_that_line_once() -> None:
    message = "x.yaml: key '1.0' is given twice on line 2;"
    with pytest.raises(ZoomMILError, match=re.escape(message)):
        load_yaml("a: 0\nb: {1: a, 1.0: b}\n", "x.yaml")


def test_equal_keys_in_different_mappings_and_merge_overrides_are_fine() -> None:
    text = "a: {k: 1}\nb: {k: 2}\nbase: &base {lr: 1, epochs: 2}\nm:\n  <<: *base\n  lr: 3\n"
    assert load_yaml(text, "x.yaml") == yaml.safe_load(text)
    assert load_yaml(text, "x.yaml")["m"] == {"lr": 3, "epochs": 2}


def test_the_train_config_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(TRAIN_CONFIG)
    message = f"{path}: key 'lr' is given twice (lines 8 and 10)"
    with pytest.raises(ZoomMILError, match=f"^{re.escape(message)}"):
        load_config(path)


def test_check_unique_keys_skips_what_the_safe_loader_cannot_read(tmp_path: Path) -> None:
    """Snakemake's own loader read these files; a tag the safe loader refuses is its business."""
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("a: !!python/tuple [1, 2]\n")
    clean = tmp_path / "clean.yaml"
    clean.write_text("a: 1\n")
    check_unique_keys([tagged, clean])
    twice = tmp_path / "twice.yaml"
    twice.write_text("a: 1\na: 2\n")
    with pytest.raises(ZoomMILError, match=re.escape(f"{twice}: key 'a' is given twice")):
        check_unique_keys([clean, twice])
