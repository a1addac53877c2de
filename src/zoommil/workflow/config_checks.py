"""Checks across the keys of the workflow config, which its JSON schema cannot express.

Why at load: each names a method or seed that a later rule would look up, so a mistake here
would otherwise fail hours in, after training (or plan nothing at all). The config is the one
`snakemake.utils.validate` checked against workflow/schemas/config.schema.yaml, so the
schema's defaults (e.g. figures.attention.method) are filled in; the workflow and these
checks read the methods and seeds through the same functions below.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.registry import check_weights
from zoommil.io.sheet import check_label_case
from zoommil.option_values import check_zoom_steps, known_arch
from zoommil.recipe import (
    DEFAULT_ENCODER,
    WITHOUT_ATTENTION,
    arch_mags,
    default_weights,
    format_mags,
)
from zoommil.training.config import TOP_KEYS, parse_config, resolve_method
from zoommil.workflow.trainconfig import build_train_config, check_method_options, model_options

#: `zoommil tile` / `zoommil features` flags that preprocess.smk already passes (from the
#: recipe, the rule or Snakemake) or that inspection decides (the mpp): one in
#: ``preprocess.tile_args`` / ``features.args`` comes after them and argparse keeps the last,
#: so the files would record another recipe than the tables name. The schema refuses these
#: names; `check_extra_flags` also refuses their abbreviations, which argparse accepts.
TILE_FLAGS = (
    "mags", "patch-size", "mpp", "default-mpp", "tissue-mask", "tissue-method", "tissue-param",
    "tissue-threshold", "no-tissue", "allow-upsampling", "out", "no-fail", "help",
)  # fmt: skip
FEATURES_FLAGS = (
    "encoder", "weights", "seed", "precision", "device", "threads", "mpp", "default-mpp",
    "coords", "out", "slide-id", "no-progress", "no-fail", "help",
)  # fmt: skip
#: `zoommil features` flags that set how features are computed, not what they are: the same
#: features bit for bit (batch 4 or 16, 0 or 1 reader process: measured on a demo slide), as
#: for --threads and --device, whose values the file records the same way. Here, not in
#: `params`: no job imports this module, so a change of it reruns no job (code hash).
FEATURES_EXECUTION_FLAGS = frozenset({"batch-size", "workers"})
#: Train config keys the workflow writes itself (`build_train_config`) or that are `train:`
#: keys of their own: ``train.extra`` may not set them (it would be ignored, or disagree).
WORKFLOW_TRAIN_KEYS = (
    "features_dir", "sheet", "exclude", "mags", "classes", "methods",
    "epochs", "lr", "weight_decay", "selection", "early_stopping",
)  # fmt: skip


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_KEEP = object()

#: The schema of a value the schema does not type (a model's keyword argument, a method's
#: `train:` block, `train.extra`): a scalar becomes what YAML would read it as.
LOOSE: dict[str, Any] = {"type": ["integer", "number", "boolean", "null", "string"]}
LOOSE["additionalProperties"] = LOOSE
LOOSE["items"] = LOOSE


def scalars_from_strings(config: Any, schema: Mapping[str, Any]) -> Any:
    """``config`` with strings that spell what the schema wants there (an integer, a number,
    a boolean, null; read as YAML reads them, plus ``1e-4``) turned into it, and a number
    where the schema wants a string turned into its text, in place where it can be; every
    other value is left to the schema. Call before `snakemake.utils.validate`.

    Why: Snakemake reads a nested ``--config 'train={epochs: 50}'`` with YAML's base loader,
    so every value in it is a string and the schema said "'50' is not of type 'integer'";
    YAML 1.1 (PyYAML, so a config file too) reads ``lr: 1e-4``, without a dot, as the string
    '1e-4'; and Snakemake reads a top-level ``--config dataset=2024`` as the integer 2024.
    Values the schema does not type (model options, a method's `train:`, `train.extra`) get
    the same reading, so that ``sigma: 0.002`` given on the command line is a number.
    """
    definitions = dict(schema.get("definitions") or {})
    if "method" in definitions:
        definitions["method"] = {**definitions["method"], "additionalProperties": LOOSE}
    properties = dict(schema.get("properties") or {})
    train = properties.get("train")
    if isinstance(train, Mapping) and "extra" in (train.get("properties") or {}):
        loose_extra = {"type": "object", "additionalProperties": LOOSE}
        train_properties = {**train["properties"], "extra": loose_extra}
        properties["train"] = {**train, "properties": train_properties}
    return _convert(config, {**schema, "properties": properties}, definitions)


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _read_scalar(text: str) -> Any:
    """``text`` as YAML reads a scalar (``1e-4`` a number too), `_KEEP` if it is not one."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return _KEEP


def _typed(value: str, types: list[str]) -> Any:
    """``value`` read as a scalar where its type is one of ``types``, else ``value``."""
    read = _read_scalar(value)
    if isinstance(read, bool):
        return read if "boolean" in types else value
    if isinstance(read, int):
        return read if "integer" in types or "number" in types else value
    if isinstance(read, float):
        return read if "number" in types else value
    if read is None:
        return None if "null" in types else value
    return value


def _convert(value: Any, schema: Any, definitions: Mapping[str, Any]) -> Any:
    if not isinstance(schema, Mapping):
        return value
    ref = schema.get("$ref", "")
    if ref.startswith("#/definitions/"):
        schema = definitions.get(ref.rsplit("/", 1)[1], {})
    for options in (schema.get("oneOf"), schema.get("anyOf")):
        for option in options or []:
            converted = _convert(value, option, definitions)
            if converted is not value:
                return converted
    types = _types(schema)
    if isinstance(value, str):
        return _typed(value, types)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # a number where only text is wanted: Snakemake reads `--config dataset=2024` as 2024
        return str(value) if types and set(types) <= {"string", "null"} else value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            value[key] = _convert(item, properties.get(key, extra), definitions)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        value[:] = [_convert(item, schema["items"], definitions) for item in value]
    return value


def main_methods(config: Mapping[str, Any]) -> dict[str, Any]:
    """The methods of Tables 1-3 (``methods``), each one's options in key order."""
    return _options_in_key_order(config["methods"])


def ablation_methods(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Table 4 ablations (``ablations.methods``); none without an ``ablations`` block."""
    return _options_in_key_order((config.get("ablations") or {}).get("methods") or {})


def _options_in_key_order(methods: Mapping[str, Any]) -> dict[str, Any]:
    """The methods in their order (it sets the tables' rows), each one's options in key order.

    Why: the tables rule passes the methods on as a param, its rerun trigger, and a method's
    options written in another order (``{k: 4, arch: zoommil}``) redid the tables.
    """
    return {
        name: dict(sorted(spec.items())) if isinstance(spec, Mapping) else spec
        for name, spec in methods.items()
    }


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
    a ``sheet`` in demo mode, classes that differ only in case, an extra tile/features flag
    the workflow passes itself, weights the encoder cannot load, a method option its model
    does not take (or a value out of range), a method train config `zoommil train` would
    refuse, an ablation named like a main method, an unknown reference, efficiency or
    Figure 4 method, a Figure 4 method without attention, ``train.seeds_in_one_job`` with
    other ablation seeds, or a Figure 4 seed not trained."""
    main, ablations = main_methods(config), ablation_methods(config)
    every = {**main, **ablations}
    check_demo_sheet(config)
    check_label_case(config.get("classes") or [], "classes")
    check_extra_flags(config)
    check_encoder_weights(config)
    # a typo in a method's options fails here, not when its training starts
    check_method_options(every, models_root)
    check_train_configs(config, every, models_root)
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
    seeds = train_seeds(config)
    if config["train"]["seeds_in_one_job"] and ablations and ablation_seeds(config) != seeds:
        raise ZoomMILError("train.seeds_in_one_job needs ablations.seeds equal to train.seeds")
    check_attention_figure(config, main, ablations)


def check_attention_figure(
    config: Mapping[str, Any], main: Mapping[str, Any], ablations: Mapping[str, Any]
) -> None:
    """Figure 4's method must be trained, have attention and a trained seed; ``null``
    leaves the figure out (a config of baselines without attention has nothing to draw)."""
    every = {**main, **ablations}
    attention = config["figures"]["attention"]
    method = attention["method"]
    if method is None:
        return
    if method not in every:
        # the schema's default 'zoommil' too, in a config that never names figures (review B)
        with_attention = [m for m, c in every.items() if c.get("arch") not in WITHOUT_ATTENTION]
        raise ZoomMILError(
            f"'{method}' (figures.attention.method, default zoommil) is not a configured "
            "method; set figures.attention.method to one with attention "
            f"({', '.join(with_attention) or 'none is configured'}) or to null to leave "
            "Figure 4 out"
        )
    arch = every[method].get("arch")
    if arch in WITHOUT_ATTENTION:
        # Figure 4 draws the method's attention; `zoommil predict --heatmap` refuses a model
        # without any, which would fail only after training.
        raise ZoomMILError(
            "figures.attention.method must be a method with attention (any architecture but "
            f"{' and '.join(WITHOUT_ATTENTION)}), got '{method}' (arch {arch})"
        )
    seeds = ablation_seeds(config) if method in ablations else train_seeds(config)
    if attention["seed"] not in seeds:
        raise ZoomMILError(
            f"figures.attention.seed is not one of the method's seeds: {attention['seed']} "
            f"(seeds of '{method}': {', '.join(map(str, seeds))})"
        )


def check_demo_sheet(config: Mapping[str, Any]) -> None:
    """Demo mode (``synth`` set) writes its own sheet: a ``sheet`` given with it would be
    silently ignored, and the run would benchmark demo slides instead of the user's."""
    if config.get("synth") is not None and config.get("sheet"):
        raise ZoomMILError(
            f"sheet: '{config['sheet']}' is ignored in demo mode (synth is set: the demo writes "
            "its own sheet); to use your own sheet set synth: null, e.g. with a preset "
            "(--configfile config/bright.yaml --config sheet=...) or in your config file"
        )


#: Where a reserved flag is set instead (`check_extra_flags`); the rest come from the recipe's
#: own config keys.
FLAG_ADVICE = {
    "mpp": "set the top-level default_mpp or the sheet's mpp column",
    "default-mpp": "set the top-level default_mpp or the sheet's mpp column",
    "threads": "the rule's threads set it: snakemake --set-threads features=N",
    "device": "a GPU is used where the rule's resources request one (gpu, gres: profiles/)",
}
WORKFLOW_SETS = ("out", "coords", "slide-id", "tissue-mask", "no-progress", "no-fail", "help")


def _command_actions(command: str) -> list[argparse.Action]:
    """The arguments of `zoommil <command>`, from its own parser (torch-free: the CLI builds
    it at every start)."""
    from zoommil.cli import build_parser

    return build_parser((command,)).get_default("command_parsers")[command]._actions


def command_flags(command: str) -> list[str]:
    """The long flags of `zoommil <command>`, without their dashes."""
    actions = _command_actions(command)
    return sorted(o[2:] for a in actions for o in a.option_strings if o.startswith("--"))


def command_defaults(command: str) -> dict[str, Any]:
    """`zoommil <command>`'s defaults by destination (``n_slides``)."""
    return {
        a.dest: a.default
        for a in _command_actions(command)
        if a.option_strings and a.default is not argparse.SUPPRESS
    }


def synth_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The demo's `zoommil synth` settings: the config's ``synth`` block over the command's
    own defaults (a block without ``n_slides`` makes 60 slides, as `zoommil synth` does);
    empty for real data (``synth: null``)."""
    given = config.get("synth")
    if given is None:
        return {}
    defaults = command_defaults("synth")
    return {key: given.get(key, defaults[key]) for key in ("n_slides", "seed", "scale")}


def check_config_keys(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Every key of ``config`` is one the schema names where it forbids others, and every
    required key is there; the error names each key by its dotted path, with the nearest
    allowed name.

    Why before the schema: Snakemake's validation reports a misspelled key as "Additional
    properties are not allowed ('default_mmp' was unexpected)" followed by the whole config
    and schema (~600 lines for a top-level key), so the line that matters scrolled away, and
    a config holding only the keys one wants to change (a --configfile replaces
    config/config.yaml) got its missing keys one run at a time."""
    problems = _key_problems(config, schema, "") + _null_methods(config)
    if problems:
        raise ZoomMILError("; ".join(problems))


def _null_methods(config: Any) -> list[str]:
    """A method set to null, as one would remove it with `--config 'methods={abmil: null}'` or
    a file layered after a complete config: Snakemake merges both into the config key by key,
    so null removes nothing, and the schema's refusal ("None is not of type 'object'") named no
    key."""
    if not isinstance(config, Mapping):
        return []
    sections = {"methods": config.get("methods")}
    if isinstance(config.get("ablations"), Mapping):
        sections["ablations.methods"] = config["ablations"].get("methods")
    return [
        f"{section}.{name} is null: a method cannot be removed by --config or by a file "
        "layered after a complete config (Snakemake merges them in key by key); leave it out "
        "of a complete config instead"
        for section, methods in sections.items()
        if isinstance(methods, Mapping)
        for name, spec in methods.items()
        if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "null", "~"))
    ]


#: Where a new architecture goes (the docs' list of every place).
ADDING_A_MODEL = "docs/ARCHITECTURE.md, 'Adding a model'"
#: The two lists of architectures (a test checks that they agree).
PACKAGE_LIST = "src/zoommil/models/__init__.py (_CLASSES)"
SCHEMA_LIST = "workflow/schemas/config.schema.yaml (definitions.method.properties.arch.enum)"


def check_method_archs(
    config: Mapping[str, Any], schema: Mapping[str, Any], models_root: str | Path
) -> None:
    """Every method's ``arch`` is a model `zoommil.models` registers and the schema lists.

    Why before the schema: its refusal of an ``arch`` ("'mymil' is not one of [...]") came
    with a dump of the schema's enum and said nothing of the two lists a model is added to,
    so a model registered in the package but not in the schema, as a user adding one easily
    leaves it, read like a typo; a typo (``abmi``, or the papers' ``CLAM-SB``, which
    `build_model` takes) got no suggestion."""
    listed = schema["definitions"]["method"]["properties"]["arch"]["enum"]
    registered = list(model_options(models_root))
    sections = {"methods": config.get("methods"), "ablations.methods": None}
    if isinstance(config.get("ablations"), Mapping):
        sections["ablations.methods"] = config["ablations"].get("methods")
    for section, methods in sections.items():
        for name, spec in (methods if isinstance(methods, Mapping) else {}).items():
            arch = spec.get("arch") if isinstance(spec, Mapping) else None
            if not isinstance(arch, str) or (arch in listed and arch in registered):
                continue  # a missing or mistyped arch is the schema's to report
            where = f"{section}.{name}.arch"
            if arch in registered or arch in listed:
                has, lacks = (PACKAGE_LIST, SCHEMA_LIST)
                if arch not in registered:
                    has, lacks = lacks, has
                raise ZoomMILError(
                    f"{where}: architecture '{arch}' is registered in {has} but not in "
                    f"{lacks}: add it there too ({ADDING_A_MODEL})"
                )
            spelt = known_arch(arch, listed) or next(
                iter(difflib.get_close_matches(arch, listed, n=1)), None
            )
            hint = f" (did you mean '{spelt}'?)" if spelt else ""
            raise ZoomMILError(
                f"{where}: unknown architecture '{arch}'{hint}; known: {', '.join(listed)} "
                f"(a model of your own: {ADDING_A_MODEL})"
            )


def _key_problems(config: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    """`check_config_keys` for one mapping of the config and the schema of that mapping."""
    if not isinstance(config, Mapping):
        return []  # a wrong type is the schema's to report
    allowed = schema.get("properties", {})
    problems = []
    missing = [key for key in schema.get("required", ()) if key not in config]
    if missing:
        problems.append(
            f"missing key(s) {', '.join(where + key for key in missing)}"
            + (MISSING_TOP_KEYS_ADVICE if not where else "")
        )
    if schema.get("additionalProperties") is False:
        for key in config:
            if key in allowed:
                continue
            near = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean '{where}{near[0]}'?)" if near else ""
            problems.append(
                f"unknown key '{where}{key}'{hint}; allowed "
                f"{'under ' + repr(where[:-1]) if where else 'at the top level'}: "
                f"{', '.join(allowed)}"
            )
    for key, part in allowed.items():
        if key in config and isinstance(part, Mapping):
            problems += _key_problems(config[key], part, f"{where}{key}.")
    return problems


#: Said with the top level's missing keys: the usual cause is a config file holding only
#: the keys one meant to change (an ablation, a sweep's settings), which Snakemake layers over
#: a complete file named before it in the same --configfile.
MISSING_TOP_KEYS_ADVICE = (
    " (a --configfile replaces config/config.yaml, it does not add to it: name the complete "
    "config first and this one after it, `--configfile config/config.yaml changes.yaml` (its "
    "values win, mappings merged key by key), or copy a preset, config/bright.yaml, crc.yaml "
    "or camelyon16.yaml, and edit it)"
)


def merged_configfiles_warning(loaded: Sequence[str | Path], given: Sequence[str | Path]) -> str:
    """A warning where a `configfile:` statement loaded a file under the ``given``
    --configfile(s) (``loaded``: Snakemake's `workflow.configfiles`, the given ones first);
    "" otherwise.

    Why: zoommil's Snakefile loads config/config.yaml only without a --configfile, so a
    preset replaces the demo. A deployment's own Snakefile (snakedeploy writes an unguarded
    `configfile: "config/config.yaml"` above `module zoommil:`) loaded it anyway, and
    Snakemake merged the preset over it key by key: the demo's methods and ablations
    stayed in the run, silently. A statement that loads one of the given files (the
    layered `--configfile config/config.yaml changes.yaml`) merges nothing new: Snakemake
    names the given ones by absolute path and the statement's by its own, so the paths are
    compared resolved (from the working directory, where Snakemake opened them)."""
    given_paths = {Path(name).resolve() for name in given}
    extra = [str(name) for name in loaded[len(given) :] if Path(name).resolve() not in given_paths]
    if not given or not extra:
        return ""
    return (
        f"zoommil: warning: config: {', '.join(extra)} (a `configfile:` of the Snakefile) was "
        f"loaded besides --configfile {' '.join(map(str, given))}, which Snakemake merged over "
        "it key by key: methods, ablations and other keys only the first has stay in the run. "
        "For a --configfile that replaces it, as in zoommil's own Snakefile, put that "
        "`configfile:` under `if not workflow.overwrite_configfiles:` (README, section Using "
        "it as a Snakemake module)"
    )


def sheet_beside_configfile(sheet: str, configfiles: Sequence[str | Path]) -> str:
    """A hint for a ``sheet:`` not found: the same relative name beside a config file, where
    users keep the two (``sheet:`` is relative to the working directory, as Snakemake's
    paths are); "" when there is none to give."""
    path = Path(sheet).expanduser()
    if path.is_absolute() or path.exists():
        return ""
    for configfile in configfiles:
        beside = Path(configfile).expanduser().resolve().parent / path
        if beside.is_file():
            return (
                f"; `sheet:` is relative to the working directory ({Path.cwd()}), not to the "
                f"config file: write the sheet's absolute path, {beside}"
            )
    return ""


def check_extra_flags(config: Mapping[str, Any]) -> None:
    """Every key of ``preprocess.tile_args`` / ``features.args`` is a flag of `zoommil tile`
    / `zoommil features`, written in full, and none the workflow passes itself (`TILE_FLAGS`,
    `FEATURES_FLAGS`), nor abbreviates one (argparse accepts abbreviations).

    Why at load: a typo (``batchsize``) reached the command line and failed every features
    job with "unrecognized arguments", after all the tiling."""

    def block(section: str, key: str) -> Any:
        part = config.get(section)
        return part.get(key) if isinstance(part, Mapping) else None

    blocks = (
        ("preprocess.tile_args", "tile", block("preprocess", "tile_args"), TILE_FLAGS),
        ("features.args", "features", block("features", "args"), FEATURES_FLAGS),
    )
    for where, command, args, reserved in blocks:
        if not isinstance(args, Mapping):
            continue  # absent, or for the schema to refuse
        known: list[str] | None = None
        seen: dict[str, Any] = {}
        for key in args:
            flag = str(key).replace("_", "-")
            if flag in seen:
                raise ZoomMILError(
                    f"{where}: '{seen[flag]}' and '{key}' both set --{flag} (argparse would "
                    "keep the last without a word); keep one"
                )
            seen[flag] = key
            taken = [name for name in reserved if name.startswith(flag)]
            if taken:
                name = taken[0]
                if name in FLAG_ADVICE:
                    advice = FLAG_ADVICE[name]
                elif name in WORKFLOW_SETS:
                    advice = "the workflow sets it for each job"
                else:
                    advice = "set it in the config's own key (config/README.md) instead"
                raise ZoomMILError(
                    f"{where}: '{key}' sets (or abbreviates) --{name}, which the workflow "
                    f"passes itself; {advice}"
                )
            known = known if known is not None else command_flags(command)
            if flag not in known:
                others = [name for name in known if name not in reserved]
                longer = [name for name in others if name.startswith(flag)]
                if len(longer) == 1:
                    raise ZoomMILError(
                        f"{where}: '{key}' abbreviates --{longer[0]}; write it in full "
                        f"('{longer[0]}'), as the workflow checks full names"
                    )
                raise ZoomMILError(
                    f"{where}: '{key}' is not a flag of zoommil {command} (written in full; "
                    f"the ones this block may set: {', '.join(others) or 'none'})"
                )


def check_encoder_weights(config: Mapping[str, Any]) -> None:
    """``features.weights`` is a keyword ``features.encoder`` takes or an existing path
    (`check_weights`), so a typo fails now and not at the first features job, after tiling."""
    features = config.get("features") or {}
    encoder = features.get("encoder") or DEFAULT_ENCODER
    weights = features.get("weights") or default_weights(encoder)
    try:
        check_weights(encoder, str(weights))
    except ZoomMILError as error:
        raise ZoomMILError(f"features.weights: {error}") from None


def check_train_configs(
    config: Mapping[str, Any], methods: Mapping[str, Any], models_root: str | Path
) -> None:
    """Build every method's train config as the workflow does and check it as `zoommil
    train` would (`parse_config`, strictly; `resolve_method`), plus the magnifications its
    model reads: what `zoommil train` refuses would otherwise fail only after all the
    preprocessing."""
    train = config["train"]
    allowed = [key for key in TOP_KEYS if key not in WORKFLOW_TRAIN_KEYS]
    unknown = sorted(set(train.get("extra") or {}) - set(allowed))
    if unknown:
        raise ZoomMILError(
            f"train.extra: unknown key(s) {', '.join(unknown)}; it takes {', '.join(allowed)} "
            "(epochs, lr, weight_decay, selection and early_stopping are keys of train itself)"
        )
    available = sorted(float(m) for m in config["preprocess"]["mags"])
    archs = model_options(models_root)
    for name, spec in methods.items():
        data = build_train_config(
            name, spec, train, available, config.get("classes"), "slides.tsv", "features", ""
        )
        parsed = parse_config(data, "train.extra", strict=True)
        # the method as written (the train config has NaN as null), and no source: its errors
        # name no file (common.smk adds "config: ")
        method = resolve_method(
            replace(parsed, source="", methods={name: dict(spec or {})}), name, archs
        )
        where = f"method '{name}'"
        mags = parse_config({**data, **method.train}, f"{where}: train", strict=True).mags
        foreign = [m for m in mags if m not in available]
        if foreign:
            raise ZoomMILError(
                f"{where}: mags {format_mags(foreign)} not among preprocess.mags "
                f"({format_mags(available)}): there are no features at them"
            )
        used = arch_mags(method.arch, mags)
        try:
            check_zoom_steps(method.arch, method.kwargs, used)
        except ZoomMILError as error:
            raise ZoomMILError(f"{where}: {error}") from None
        if method.arch == "zoommil" and len(used) < 2:
            raise ZoomMILError(
                f"{where}: ZoomMIL needs at least 2 magnifications, got {format_mags(used)} "
                "(preprocess.mags, or the method's mags)"
            )


def split_execution_args(
    args: Mapping[str, Any] | None, execution: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``args`` as (flags that change the output, flags in ``execution``).

    Why: a rule's params are its rerun trigger, so `features.args: {workers: 2}` re-extracted
    every slide's features and retrained every model for the same results; the rule passes
    the second part through a param Snakemake does not compare (a function of `threads`).
    """
    results: dict[str, Any] = {}
    how: dict[str, Any] = {}
    for key, value in (args or {}).items():
        part = how if str(key).replace("_", "-") in execution else results
        part[key] = value
    return results, how
