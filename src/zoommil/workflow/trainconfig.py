"""Per-method train configs (docs/ARCHITECTURE.md "Train config").

One config per method, so that adding a method or a seed adds jobs and never touches the
configs (and hence the models) of the others, while changing a training parameter changes
every config that carries it. The workflow passes it to the train job as a `params:` value
(YAML text, compared by Snakemake's params rerun trigger) and the job writes it next to the
checkpoint, so no job of its own is needed to write it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from zoommil.errors import ZoomMILError
from zoommil.io.jsonio import to_plain
from zoommil.option_values import (
    RESERVED_OPTIONS,
    check_method_options_not_reserved,
    check_option_values,
    known_arch,
)
from zoommil.workflow.codehash import imported_from

#: The package whose ``__init__`` registers the models (``_CLASSES``).
MODELS_PACKAGE = "zoommil.models"

#: Relative wall time of one training run per architecture: the demo's train jobs (run 18, three
#: seeds of 40 epochs on a 2-core AMD EPYC) in tens of seconds. Only the order matters.
TRAIN_COST = {
    "transmil": 20,
    "msmil": 6,
    "clam_sb": 5,
    "zoommil": 5,
    "abmil": 4,
    "maxmil": 3,
    "meanmil": 3,
    "dsmil": 2,
    "sparseconvmil": 2,
}


def train_priority(method: str, spec: Mapping[str, Any]) -> int:
    """The Snakemake priority of a method's train jobs: its expected cost, so the longest runs
    start first and the short ones fill the end of the stage (longest-processing-time first).

    Why: Snakemake starts jobs of equal priority in no fixed order; in demo runs 18 and 19
    TransMIL, more than three times any other method, started eleventh and twelfth of 15, and
    started last it would run on alone while the other core idles.
    """
    return TRAIN_COST.get(str(spec.get("arch", method)), 1)


def build_train_config(
    method: str,
    spec: Mapping[str, Any],
    train: Mapping[str, Any],
    mags: Sequence[float],
    classes: Sequence[str] | None,
    sheet: str,
    features_dir: str,
    exclude: str,
) -> dict[str, Any]:
    """The `zoommil train --config` content for one method; seeds are not part of it."""
    config: dict[str, Any] = {
        "features_dir": features_dir,
        "sheet": sheet,
        "exclude": exclude,
        "mags": sorted(float(m) for m in mags),
    }
    # Settings left out take `zoommil train`'s defaults (TrainConfig), which the schema repeats.
    settings = (
        ("epochs", int),
        ("lr", float),
        ("weight_decay", float),
        ("selection", str),
        ("early_stopping", int),
    )
    for key, kind in settings:
        if train.get(key) is not None:
            config[key] = kind(train[key])
    if classes:
        config["classes"] = list(classes)
    for key, value in (train.get("extra") or {}).items():
        config.setdefault(key, value)
    config["methods"] = {method: dict(spec)}
    return to_plain(config)


def dump_train_config(config: Mapping[str, Any]) -> str:
    """The YAML text of a train config (plain types), keys sorted at every level: the text is
    the train job's rerun trigger, and a method's options written in another order retrained
    it (review S)."""
    return yaml.safe_dump(to_plain(config), sort_keys=True)


#: Keys of a method entry that are not model options (`zoommil.training.config.resolve_method`).
METHOD_KEYS = ("arch", "train", "mags")


def _models_submodule(node: ast.ImportFrom) -> str | None:
    """``x`` for ``from zoommil.models.x import ...`` and for ``from .x import ...`` in the
    package's ``__init__``; None for any other import."""
    package, _, module = imported_from(node, MODELS_PACKAGE, is_package=True).rpartition(".")
    return module if package == MODELS_PACKAGE else None


def _model_inits(models_root: str | Path) -> dict[str, ast.FunctionDef | None]:
    """arch -> the ``__init__`` of its class in the sources of `zoommil.models` (None: the
    class has none of its own), found through the package's ``_CLASSES``; a registration
    this reader cannot follow is an error naming the form it reads."""
    root = Path(models_root)
    init = root / "__init__.py"
    package = ast.parse(init.read_text(encoding="utf-8"))
    imported: dict[str, tuple[str, str]] = {}  # local name -> (module, class name there)
    classes: dict[str, str] = {}
    for node in ast.walk(package):
        if isinstance(node, ast.ImportFrom) and (module := _models_submodule(node)):
            for alias in node.names:
                imported[alias.asname or alias.name] = (module, alias.name)
        elif isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(target, "id", None) == "_CLASSES" for target in targets):
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    arch = getattr(key, "value", None)
                    classes[str(arch)] = value.id if isinstance(value, ast.Name) else ""
    inits: dict[str, ast.FunctionDef | None] = {}
    for arch, local in classes.items():
        module, name = imported.get(local, ("", local))
        source = root / f"{module}.py"
        tree = ast.parse(source.read_text(encoding="utf-8")) if module else None
        found = [
            node
            for node in (tree.body if tree else [])
            if isinstance(node, ast.ClassDef) and node.name == name
        ]
        if not found:
            raise ZoomMILError(
                f"{init}: model '{arch}': cannot find its class in the package's sources; "
                'register it as `"name": Class` in _CLASSES with the class imported as '
                "`from zoommil.models.<module> import Class`"
            )
        inits[arch] = next(
            (
                item
                for item in found[0].body
                if isinstance(item, ast.FunctionDef) and item.name == "__init__"
            ),
            None,
        )
    return inits


def model_options(models_root: str | Path) -> dict[str, tuple[frozenset[str], bool]]:
    """arch -> (constructor keyword names, whether it takes **kwargs) of every model, read
    from the sources of `zoommil.models` (its ``_CLASSES`` and each class's ``__init__``).

    Why ast and not `zoommil.models._accepted_options`: the workflow checks the methods when
    it loads, and importing the models imports torch (~2 s and ~600 MB in the Snakemake
    process, at every start and on every cluster node). A class without its own ``__init__``
    is taken to accept anything.
    """
    options = {}
    for arch, init in _model_inits(models_root).items():
        if init is None:
            options[arch] = (frozenset(), True)
            continue
        names = {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}
        options[arch] = (frozenset(names), init.args.kwarg is not None)
    return options


def model_defaults(models_root: str | Path) -> dict[str, dict[str, Any]]:
    """arch -> {keyword: default} of every model's constructor, for the defaults written as
    literals (tuples as lists, as a config gives them); read from the sources, as
    `model_options`, so the tables need no torch. Table 4 compares an ablation with its
    reference over these: a default written out is no change."""
    defaults: dict[str, dict[str, Any]] = {}
    for arch, init in _model_inits(models_root).items():
        values: dict[str, Any] = {}
        if init is not None:
            positional = init.args.args[len(init.args.args) - len(init.args.defaults) :]
            pairs = list(zip(positional, init.args.defaults, strict=True))
            keyword = zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True)
            pairs += [(a, d) for a, d in keyword if d is not None]  # None: no default
            for arg, node in pairs:
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                values[arg.arg] = list(value) if isinstance(value, tuple) else value
        defaults[arch] = values
    return defaults


def models_root() -> Path:
    """The folder of `zoommil.models`, found without importing it (it imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("zoommil.models")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def check_method_options(methods: Mapping[str, Mapping[str, Any]], models_root: str | Path) -> None:
    """Every method's options are keyword arguments its model takes, with plausible values,
    as `build_model` checks when training starts; a typo (``sigm``) or a ``dropout: 2.0``
    fails here, when the workflow loads."""
    options = model_options(models_root)
    for name, spec in methods.items():
        spec = dict(spec or {})
        written = spec.get("arch", name)
        arch = known_arch(written, options)
        if arch is None:
            raise ZoomMILError(
                f"method '{name}': unknown architecture '{written}' (known: {', '.join(options)})"
            )
        accepted, var_kwargs = options[arch]
        accepted = accepted - set(RESERVED_OPTIONS)  # set by training: refused just below
        unknown = sorted(set(spec) - set(METHOD_KEYS) - accepted - set(RESERVED_OPTIONS))
        if unknown and not var_kwargs:
            raise ZoomMILError(
                f"method '{name}': model '{arch}' does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(sorted(accepted))}"
            )
        try:
            check_method_options_not_reserved(arch, spec)
            check_option_values(arch, spec)
        except ZoomMILError as error:
            raise ZoomMILError(f"method '{name}': {error}") from None
