"""The train config (YAML or JSON) and how `--model NAME` resolves to an architecture.

A *method* is an architecture plus keyword arguments, so an ablation variant is simply another
method. Keys of a method entry other than ``arch`` and ``train`` go to the model constructor;
``train`` overrides training settings (epochs, lr, weight_decay, selection, mags, ...) for that
method only (a ``mags`` key is taken as such an override). A name that is not under
``methods`` is an architecture with default arguments.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoommil.errors import ZoomMILError
from zoommil.io.sheet import check_label_case
from zoommil.io.yamlio import load_yaml
from zoommil.option_values import (
    check_method_options_not_reserved,
    check_option_values,
    known_arch,
)

log = logging.getLogger(__name__)

SELECTIONS = ("val_loss", "val_weighted_f1")
#: ``feature_norm`` values (`zoommil.training.normalize`); here so that this module, which the
#: workflow imports when it loads, does not import torch.
FEATURE_NORMS = ("none", "standardize")
CACHE_MODES = ("auto", "memory", "disk")
TRAIN_KEYS = (
    "epochs",
    "lr",
    "weight_decay",
    "selection",
    "mags",
    "lr_factor",
    "lr_patience",
    "early_stopping",
)
TOP_KEYS = (
    "features_dir",
    "sheet",
    "exclude",
    "classes",
    "mags",
    "epochs",
    "lr",
    "weight_decay",
    "selection",
    "methods",
    "cache",
    "cache_max_gb",
    "lr_factor",
    "lr_patience",
    "early_stopping",
    "feature_norm",
)


@dataclass
class TrainConfig:
    """Everything `zoommil train` needs besides the method, seed and output folder."""

    features_dir: Path
    sheet: Path
    mags: list[float]
    exclude: Path | None = None
    classes: list[str] | None = None
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    selection: str = "val_loss"
    lr_factor: float = 0.8
    lr_patience: int = 5
    #: Stop after this many epochs without a better validation result (by ``selection``);
    #: None trains every epoch. The kept epoch is the best one either way.
    early_stopping: int | None = None
    cache: str = "auto"
    cache_max_gb: float = 8.0
    feature_norm: str = "none"
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""


#: Defaults of every setting a train config may leave out (the workflow schema repeats the
#: ones it exposes; tests/test_workflow_dryrun.py checks that they agree).
_DEFAULTS = TrainConfig(features_dir=Path(), sheet=Path(), mags=[])


@dataclass
class MethodSpec:
    """One method: its name, architecture, model kwargs and per-method training overrides."""

    name: str
    arch: str
    kwargs: dict[str, Any]
    train: dict[str, Any]


def _unique_pairs(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """One JSON object, refusing a key given twice (`json.loads` keeps the last, as YAML)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ZoomMILError(
                f"{path}: key '{key}' is given twice in one object; JSON would silently keep "
                "the last, so remove one"
            )
        data[key] = value
    return data


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ZoomMILError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ZoomMILError(
            f"{path}: not a text file (binary content); a train config is YAML or JSON"
        ) from None
    except OSError as error:
        raise ZoomMILError(f"{path}: cannot read the config ({error.strerror})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(pairs, path))
        else:
            data = load_yaml(text, str(path))
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ZoomMILError(f"{path}: not valid YAML/JSON ({first})") from error
    if not isinstance(data, dict):
        raise ZoomMILError(f"{path}: the config must be a mapping of keys to values")
    return data


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ZoomMILError(f"{where}: '{name}' must be a positive integer, got {value!r}")
    return value


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (a bool is not a number here). A string that
    spells a number counts: YAML 1.1 (PyYAML) reads ``1e-4``, without a dot, as '1e-4'."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _non_negative_float(value: Any, name: str, where: str) -> float:
    number = _finite(value)
    if number is None or number < 0:
        raise ZoomMILError(f"{where}: '{name}' must be a finite number >= 0, got {value!r}")
    return number


def _non_negative_int(value: Any, name: str, where: str) -> int:
    """A count of epochs such as ``lr_patience``: 2.5 was cut to 2 without a word."""
    number = _finite(value)
    if number is None or number < 0 or not number.is_integer():
        raise ZoomMILError(f"{where}: '{name}' must be a whole number >= 0, got {value!r}")
    return int(number)


def _learning_rate(value: Any, where: str) -> float:
    """``lr``: > 0 (Adam takes 0, which trains nothing; NaN fails inside torch)."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ZoomMILError(f"{where}: 'lr' must be a finite number > 0, got {value!r}")
    return number


def _lr_factor(value: Any, where: str) -> float:
    """``lr_factor``: in [0, 1), as ReduceLROnPlateau requires (else a torch traceback)."""
    number = _finite(value)
    if number is None or not 0 <= number < 1:
        raise ZoomMILError(
            f"{where}: 'lr_factor' must be a number in [0, 1) (the lr is multiplied by it on a "
            f"plateau), got {value!r}"
        )
    return number


def _patience(value: Any, where: str) -> int | None:
    """``early_stopping``: null (off) or a positive number of epochs."""
    return None if value is None else _positive_int(value, "early_stopping", where)


def _selection(value: Any, where: str) -> str:
    if value not in SELECTIONS:
        raise ZoomMILError(
            f"{where}: 'selection' must be one of {', '.join(SELECTIONS)}, got {value!r}"
        )
    return str(value)


def _mags(value: Any, where: str) -> list[float]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, int | float) and not isinstance(m, bool) for m in value)
    ):
        raise ZoomMILError(f"{where}: 'mags' must be a non-empty list of numbers, got {value!r}")
    return sorted(float(m) for m in value)


def _train_setting(key: str, value: Any, where: str) -> Any:
    """One of `TRAIN_KEYS`, checked and converted as `TrainConfig` holds it; the same checks
    for the config's top level and a method's ``train`` overrides."""
    if key == "epochs":
        return _positive_int(value, key, where)
    if key == "lr":
        return _learning_rate(value, where)
    if key == "lr_factor":
        return _lr_factor(value, where)
    if key == "lr_patience":
        return _non_negative_int(value, key, where)
    if key == "weight_decay":
        return _non_negative_float(value, key, where)
    if key == "selection":
        return _selection(value, where)
    if key == "mags":
        return _mags(value, where)
    if key == "early_stopping":
        return _patience(value, where)
    raise ZoomMILError(f"{where}: unknown training setting '{key}'")


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read and validate a train config; ``overrides`` (from the CLI) win over the file.

    Relative ``features_dir``, ``sheet`` and ``exclude`` are relative to the current working
    directory (where Snakemake runs), not to the config file.
    """
    path = Path(path)
    data = _read_mapping(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return parse_config(data, str(path))


def parse_config(data: Mapping[str, Any], where: str, strict: bool = False) -> TrainConfig:
    """Validate a train config's mapping (`load_config` without the file); ``where`` names it
    in the errors. Unknown keys are a warning, or with ``strict`` an error (the workflow's
    check at load, `zoommil.workflow.config_checks`, where a typo would otherwise be noticed
    only in a train log)."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown and strict:
        raise ZoomMILError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(TOP_KEYS)})"
        )
    if unknown:
        log.warning("%s: ignoring unknown config key(s): %s", where, ", ".join(unknown))
    for key in ("features_dir", "sheet", "mags"):
        if data.get(key) in (None, ""):
            raise ZoomMILError(f"{where}: missing required key '{key}'")
    classes = data.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or len(classes) < 2:
            raise ZoomMILError(f"{where}: 'classes' must be a list of at least two labels")
        if booleans := [c for c in classes if isinstance(c, bool)]:
            raise ZoomMILError(
                f"{where}: classes {classes}: {booleans[0]} is a boolean, not a label (YAML reads "
                "unquoted yes/no/on/off/true/false so); quote the names, e.g. ['no', 'yes']"
            )
        classes = [str(c) for c in classes]
        check_label_case(classes, f"{where}: classes")
        if len(set(classes)) != len(classes):
            raise ZoomMILError(f"{where}: 'classes' has duplicates: {classes}")
    methods = data.get("methods") or {}
    if not isinstance(methods, dict) or not all(
        isinstance(v, dict) or v is None for v in methods.values()
    ):
        raise ZoomMILError(f"{where}: 'methods' must map method names to mappings of arguments")
    cache = data.get("cache", "auto")
    if cache not in CACHE_MODES:
        raise ZoomMILError(f"{where}: 'cache' must be one of {', '.join(CACHE_MODES)}")
    feature_norm = str(data.get("feature_norm", "none"))
    if feature_norm not in FEATURE_NORMS:
        raise ZoomMILError(
            f"{where}: 'feature_norm' must be one of {', '.join(FEATURE_NORMS)}, "
            f"got {feature_norm!r}"
        )
    settings = {
        key: _train_setting(key, data[key] if key in data else getattr(_DEFAULTS, key), where)
        for key in TRAIN_KEYS
    }
    return TrainConfig(
        features_dir=Path(str(data["features_dir"])),
        sheet=Path(str(data["sheet"])),
        exclude=Path(str(data["exclude"])) if data.get("exclude") else None,
        classes=classes,
        cache=cache,
        cache_max_gb=_non_negative_float(
            data.get("cache_max_gb", _DEFAULTS.cache_max_gb), "cache_max_gb", where
        ),
        feature_norm=feature_norm,
        methods={str(k): dict(v or {}) for k, v in methods.items()},
        source=where,
        **settings,
    )


def method_label(source: str, name: str) -> str:
    """``train.yaml: method 'abmil'``, or ``method 'abmil'`` for a config without a file (the
    workflow's), as the errors about a method name it."""
    return f"{source}: method '{name}'" if source else f"method '{name}'"


def resolve_method(config: TrainConfig, name: str, known_archs: Iterable[str]) -> MethodSpec:
    """Method ``name`` from ``config.methods``, or the architecture ``name`` with defaults."""
    known = sorted(known_archs)
    if name in config.methods:
        # `zoommil train`'s errors name the file too (the workflow's, with no source, not)
        where = method_label(config.source, name)
        entry = copy.deepcopy(config.methods[name])
        arch = str(entry.pop("arch", name))
        train = entry.pop("train", None) or {}
        if not isinstance(train, dict):
            raise ZoomMILError(f"{where}: 'train' must be a mapping of training settings")
        bad = sorted(set(train) - set(TRAIN_KEYS))
        if bad:
            raise ZoomMILError(
                f"{where}: unknown training setting(s) {', '.join(bad)} "
                f"(allowed: {', '.join(TRAIN_KEYS)})"
            )
        if "mags" in entry:  # a method's magnifications decide the data, not just the model
            train.setdefault("mags", _mags(entry.pop("mags"), where))
        train = {key: _train_setting(key, value, f"{where}: train") for key, value in train.items()}
        if known_arch(arch, known) is None:
            raise ZoomMILError(
                f"{where}: unknown architecture '{arch}' (known: {', '.join(known)})"
            )
        arch = str(known_arch(arch, known))
        try:
            check_method_options_not_reserved(arch, entry)
            check_option_values(arch, entry)
        except ZoomMILError as error:
            raise ZoomMILError(f"{where}: {error}") from None
        return MethodSpec(name=name, arch=arch, kwargs=entry, train=train)
    arch = known_arch(name, known)
    if arch is not None:
        return MethodSpec(name=name, arch=arch, kwargs={}, train={})
    methods = ", ".join(sorted(config.methods)) or "none"
    raise ZoomMILError(
        f"unknown model '{name}': not a method of {config.source or 'the config'} "
        f"(methods: {methods}) nor an architecture (known: {', '.join(known)})"
    )


def apply_overrides(config: TrainConfig, method: MethodSpec) -> TrainConfig:
    """The config with the method's ``train`` overrides applied."""
    merged = copy.copy(config)
    for key, value in method.train.items():
        setattr(merged, key, value)
    return merged
