"""The preprocessing recipe: how a slide becomes a bag of features, in one validated value.

Every stage that needs a preprocessing setting reads it from a `PreprocessingRecipe`: the
commands (`zoommil tile/tissue/features/predict/profile/flops` take their defaults from here),
the workflow rules (`PreprocessingRecipe.from_config`) and the schema (a test checks that its
defaults are these). The recipe travels with the data: the coords file carries its tiling
part, the feature file all of it, the checkpoint the feature files' one, and `zoommil predict`
redoes exactly that recipe on a new slide (`to_attrs` / `from_attrs`).

Importable without torch or OpenSlide: the CLI parsers and the Snakefile read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.features.precision import PRECISION_CHOICES

TISSUE_METHODS = ("gaussian", "otsu")
#: A slide where no lowest-magnification patch passes the tissue threshold: ``exclude`` it (the
#: workflow reports it in results/qc/slides.tsv; `zoommil tile` fails it) or keep ``all`` its
#: patches with a warning.
NO_TISSUE_POLICIES = ("exclude", "all")
DEFAULT_ENCODER = "resnet50_layer3"
#: Encoder names written by versions that named the encoder after its pooling too.
_ENCODER_ALIASES = {"resnet50_layer3_avgpool": DEFAULT_ENCODER}

#: Attribute names in coords/feature files and checkpoints (kept from the files' first layout).
_ATTR_NAMES = {"no_tissue": "no_tissue_policy"}
#: The part of the recipe a coords file knows (the encoder comes with `zoommil features`).
TILING_FIELDS = ("mags", "patch_size", "tissue_method", "tissue_params", "tissue_threshold",
                 "no_tissue", "allow_upsampling")  # fmt: skip
#: The part `zoommil features` adds.
ENCODER_FIELDS = ("encoder", "weights", "weights_seed", "precision")
#: What every output made from random-weight features says (DESIGN.md, "Encoder"): the
#: JSONs' ``weights_note``, the figures' titles, the heatmap's caption; `RANDOM_WEIGHTS_TAG` is
#: the short form for one-line console output.
RANDOM_WEIGHTS_NOTE = "random encoder weights (offline demo): not a measure of the methods"
RANDOM_WEIGHTS_TAG = "(random encoder weights: demo only)"


def mag_key(mag: float) -> str:
    """Name of a magnification in files: ``f"{float(mag)}x"`` (1.25x, 2.5x, 10.0x)."""
    return f"{float(mag)}x"


def format_mags(mags: Sequence[float]) -> str:
    """Magnifications for people, lowest first: [10, 2.5] -> '2.5x -> 10x'."""
    return " -> ".join(f"{m:g}x" for m in sorted(float(m) for m in mags))


#: Architectures that read every configured magnification; DSMIL reads the lowest and the
#: highest; every other architecture the highest. Here, not in `zoommil.models`, so that the
#: tables read it without importing torch.
MULTI_SCALE_ALL = ("zoommil", "msmil")
LOWEST_AND_HIGHEST = ("dsmil",)
#: Architectures whose pooling weighs every patch alike: they have no attention for `zoommil
#: predict --heatmap` or Figure 4 to draw (every other model has `attention_scores`).
WITHOUT_ATTENTION = ("meanmil", "sparseconvmil")


def arch_mags(arch: str, mags: Sequence[float]) -> list[float]:
    """The magnifications architecture ``arch`` reads, ascending (see the constants above)."""
    values = sorted(float(m) for m in mags)
    if not values:
        raise ZoomMILError(f"model '{arch}' needs at least one magnification")
    if arch in MULTI_SCALE_ALL:
        return values
    if arch in LOWEST_AND_HIGHEST:
        return [values[0], values[-1]] if len(values) > 1 else values
    return [values[-1]]


def method_mags(method: str, spec: Mapping[str, Any] | None, mags: Sequence[float]) -> list[float]:
    """The magnifications a configured method reads: its own ``mags`` (its ``train:`` one
    first, as `zoommil train` takes them; BRIGHT's ZoomMIL-Eff stops at 2.5x), else the
    preprocessing's, narrowed by its architecture (`arch_mags`)."""
    spec = spec or {}
    own = (spec.get("train") or {}).get("mags") or spec.get("mags")
    return arch_mags(str(spec.get("arch", method)), own or mags)


def validate_mags(mags: Sequence[float]) -> list[float]:
    """Sorted ascending; each a power-of-two multiple of the lowest, else `ZoomMILError`."""
    if isinstance(mags, str | bytes) or not isinstance(mags, Sequence) or not mags:
        raise ZoomMILError(f"no magnifications given (got {mags!r})")
    try:
        values = sorted(float(m) for m in mags)
    except (TypeError, ValueError):
        raise ZoomMILError(f"magnifications must be numbers, got {list(mags)}") from None
    if any(not math.isfinite(m) or m <= 0 for m in values):
        raise ZoomMILError(f"magnifications must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ZoomMILError(f"magnifications must be distinct, got {values}")
    for low, high in zip(values, values[1:], strict=False):
        steps = math.log2(high / low)
        if abs(steps - round(steps)) > 1e-9:
            raise ZoomMILError(
                f"magnifications {low:g}x and {high:g}x are not power-of-two multiples of each "
                f"other (ratio {high / low:g}); a patch at one must cover exactly 2^d x 2^d "
                "patches at the other, such as 2.5x -> 5x -> 10x or 1.25x -> 2.5x -> 10x"
            )
    return values


def _choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ZoomMILError(f"unknown {name} {value!r} (choose from {', '.join(choices)})")
    return str(value)


def _number(value: Any, name: str, kind: type, minimum: float, maximum: float = math.inf):
    """``value`` as ``kind`` within [minimum, maximum], else a one-line `ZoomMILError`."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or (kind is int and number != value):
        raise ZoomMILError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                           f"got {value!r}")  # fmt: skip
    if not minimum <= number <= maximum:
        bound = f"within {minimum:g}-{maximum:g}" if math.isfinite(maximum) else f">= {minimum:g}"
        raise ZoomMILError(f"{name} must be {bound}, got {value!r}")
    return number


#: Each tissue detector's parameters and defaults, at 8 um/px (`zoommil.wsi.tissue` has the
#: detectors). The paper's presets at 1.25x: BRIGHT and CAMELYON16 sigma 20 / kernel 100; CRC
#: sigma 10 / kernel 7. kernel_size 20 is the original detector's default.
TISSUE_PARAMS: dict[str, dict[str, Any]] = {
    "gaussian": {
        "sigma": 20.0,
        "kernel_size": 20,
        "min_size": 10,
        "background_gray": 228,
        "prewhiten": True,
        "max_regions": 100,
        "min_saturation": 8,
    },
    "otsu": {
        "median_kernel": 7,
        "min_saturation": 8,
        "close_kernel": 4,
        "min_area_um2": 50000.0,
    },
}
#: Allowed values of the numeric tissue parameters, as (operator, bound) pairs: sigma 0 is an
#: OpenCV error deep in the blur, a kernel or region count below 1 a silently empty mask; gray
#: levels and saturations are bytes. ``close_kernel`` 0 means no closing, ``min_size`` 0 no
#: size filter. Integers (the defaults' type) must be integral: 7.0 is 7, 7.5 an error.
_TISSUE_PARAM_BOUNDS: dict[str, tuple[tuple[str, float], ...]] = {
    "sigma": ((">", 0),),
    "kernel_size": ((">=", 1),),
    "min_size": ((">=", 0),),
    "background_gray": ((">=", 0), ("<=", 255)),
    "max_regions": ((">=", 1),),
    "min_saturation": ((">=", 0), ("<=", 255)),
    "median_kernel": ((">=", 1),),
    "close_kernel": ((">=", 0),),
    "min_area_um2": ((">=", 0),),
}
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def tissue_params(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of tissue detector ``method`` updated by ``params`` (`checked_tissue_params`)."""
    return {**TISSUE_PARAMS[_choice(method, "tissue method", TISSUE_METHODS)],
            **checked_tissue_params(method, params)}  # fmt: skip


def checked_tissue_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` of detector ``method``, each typed like its default and checked: a bad name
    or value is a one-line `ZoomMILError` here (the recipe, the CLI), not an OpenCV traceback
    mid-detection or a silently wrong ``bool("false")``."""
    defaults = TISSUE_PARAMS[_choice(method, "tissue method", TISSUE_METHODS)]
    out = {}
    for name, value in (params or {}).items():
        if name not in defaults:
            raise ZoomMILError(
                f"unknown parameter {name!r} for tissue method {method!r} "
                f"(known: {', '.join(sorted(defaults))})"
            )
        out[name] = _tissue_param(method, name, value, type(defaults[name]))
    return out


def _tissue_param(method: str, name: str, value: Any, kind: type) -> Any:
    """One tissue parameter as ``kind`` (bool, int or float) within its bounds."""
    plain = value.item() if hasattr(value, "item") else value  # NumPy scalars from HDF5
    parsed = _as_bool(plain) if kind is bool else _as_number(plain, kind, name)
    if parsed is None:
        raise ZoomMILError(
            f"tissue parameter {name}={value!r} ({method} detector): must be "
            f"{_allowed_text(name, kind)}"
        )
    return parsed


def _as_bool(value: Any) -> bool | None:
    """A real bool, a word true/false, yes/no, on/off, 1/0 (any case), or the number 1 or 0;
    None for anything else (``bool("false")`` is True: no string is taken by truthiness)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return None


def _as_number(value: Any, kind: type, name: str) -> int | float | None:
    """A finite number (or numeric string) within the parameter's bounds, integral for an
    int parameter; None for anything else (a bool is not a number here)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        return None
    for op, bound in _TISSUE_PARAM_BOUNDS.get(name, ()):
        if not (
            number > bound if op == ">" else number >= bound if op == ">=" else number <= bound
        ):
            return None
    return int(number) if kind is int else number


def _allowed_text(name: str, kind: type) -> str:
    """What a tissue parameter may be, for its error: 'an integer >= 1', 'true or false'."""
    if kind is bool:
        return "true or false (or yes/no, on/off, 1/0)"
    bounds = " and ".join(f"{op} {bound:g}" for op, bound in _TISSUE_PARAM_BOUNDS.get(name, ()))
    return f"{'an integer' if kind is int else 'a finite number'} {bounds}".strip()


@dataclass(frozen=True)
class PreprocessingRecipe:
    """Magnifications, patch size, tissue detection, no-tissue policy, encoder and precision.

    Validated (and normalised: mags sorted floats) on construction, so a recipe that exists is
    a usable one; every error is one line naming the setting.
    """

    mags: tuple[float, ...]
    patch_size: int = 256
    tissue_method: str = "gaussian"
    tissue_params: Mapping[str, Any] = field(default_factory=dict)
    tissue_threshold: float = 0.1
    no_tissue: str = "exclude"
    allow_upsampling: bool = False
    encoder: str = DEFAULT_ENCODER
    weights: str = "imagenet"
    weights_seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "mags", tuple(validate_mags(self.mags)))
        set_(self, "patch_size", _number(self.patch_size, "patch size", int, 1))
        set_(self, "tissue_method", _choice(self.tissue_method, "tissue method", TISSUE_METHODS))
        if not isinstance(self.tissue_params, Mapping):
            raise ZoomMILError(
                f"tissue params must be a mapping NAME: VALUE, got {self.tissue_params!r}"
            )
        params = checked_tissue_params(self.tissue_method, self.tissue_params)
        set_(self, "tissue_params", params)
        threshold = _number(self.tissue_threshold, "tissue threshold", float, 0.0, 1.0)
        set_(self, "tissue_threshold", threshold)
        set_(self, "no_tissue", _choice(self.no_tissue, "no-tissue policy", NO_TISSUE_POLICIES))
        allow = self.allow_upsampling
        if hasattr(allow, "item") and not isinstance(allow, bool):
            allow = allow.item()  # a numpy bool read back from HDF5 attributes
        if not isinstance(allow, bool):
            raise ZoomMILError(f"allow_upsampling must be true or false, got {allow!r}")
        set_(self, "allow_upsampling", allow)
        encoder = _ENCODER_ALIASES.get(str(self.encoder), str(self.encoder))
        if not encoder.strip():
            raise ZoomMILError("encoder name is empty")
        set_(self, "encoder", encoder)
        if not str(self.weights).strip():
            raise ZoomMILError("encoder weights are empty (imagenet, random or a path)")
        set_(self, "weights", str(self.weights))
        set_(self, "weights_seed", _number(self.weights_seed, "weights seed", int, 0))
        set_(self, "precision", _choice(self.precision, "precision", PRECISION_CHOICES))

    def replace(self, **changes: Any) -> PreprocessingRecipe:
        """A copy with ``changes`` (validated again); ``None`` values keep the current one."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_attrs(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain values for HDF5 attributes / checkpoint configs (``names``: a subset)."""
        out = {}
        for name in names or [f.name for f in fields(self)]:
            value = getattr(self, name)
            if name == "mags":
                value = [float(m) for m in value]
            elif name == "tissue_params":
                value = dict(value)
            out[_ATTR_NAMES.get(name, name)] = value
        return out

    def tiling_attrs(self) -> dict[str, Any]:
        """What a coords file records (the encoder is not chosen yet)."""
        return self.to_attrs(TILING_FIELDS)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], **overrides: Any) -> PreprocessingRecipe:
        """The recipe recorded by `to_attrs` (missing keys: the defaults, the weights the
        encoder's own default); ``overrides`` win unless they are None.

        Why the encoder's default weights: training records only the attributes all feature
        files share, so ``weights`` is missing when the files name one file differently (an
        absolute and a relative path, same sha256); the dataclass default imagenet is the
        ResNet's only, and a UNI checkpoint then failed with a misleading error. The recorded
        sha256 still decides whether the weights found are the right ones (`make_encoder`)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = _ATTR_NAMES.get(f.name, f.name)
            if key in attrs and attrs[key] is not None:
                values[f.name] = attrs[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "mags" not in values:
            raise ZoomMILError("the preprocessing recipe has no magnifications")
        if "weights" not in values:
            values["weights"] = default_weights(values.get("encoder"))
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PreprocessingRecipe:
        """The recipe of a workflow config (`preprocess:` and `features:`; see the schema)."""
        pre = config.get("preprocess") or {}
        tissue = pre.get("tissue") or {}
        features = config.get("features") or {}
        return cls.from_attrs(
            {
                "mags": pre.get("mags"),
                "patch_size": pre.get("patch_size"),
                "tissue_method": tissue.get("method"),
                "tissue_params": tissue.get("params"),
                "tissue_threshold": tissue.get("threshold"),
                "no_tissue_policy": tissue.get("no_tissue"),
                "allow_upsampling": pre.get("allow_upsampling"),
                "encoder": features.get("encoder"),
                # unset: the encoder's own default (`from_attrs`; imagenet is the ResNet's only)
                "weights": features.get("weights"),
                "weights_seed": features.get("seed"),
                "precision": features.get("precision"),
            }
        )


def weights_note(weights: Any) -> str | None:
    """`RANDOM_WEIGHTS_NOTE` for ``random`` weights, None for any other (or unknown) weights."""
    return RANDOM_WEIGHTS_NOTE if str(weights) == "random" else None


def encoder_provenance(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``encoder`` and ``weights`` of recorded recipe attributes (a checkpoint's
    ``preprocessing``, or an output that already carries these keys), plus ``weights_seed``
    and ``weights_note`` for random weights: the keys every JSON made from a checkpoint
    carries, so that none made from random-weight features passes for a real result.

    What is not recorded is None, not a default: a checkpoint of an older version, or one
    whose feature files name one weights file by two paths, must not claim ImageNet."""
    encoder, weights = attrs.get("encoder"), attrs.get("weights")
    out: dict[str, Any] = {
        "encoder": _ENCODER_ALIASES.get(str(encoder), str(encoder)) if encoder else None,
        "weights": str(weights) if weights is not None else None,
    }
    note = weights_note(weights)
    if note:
        seed = attrs.get("weights_seed")
        out["weights_seed"] = int(seed) if seed is not None else None
        out["weights_note"] = note
    return out


def default_weights(encoder: str | None = None) -> str:
    """``imagenet`` for the paper's ResNet-50, the offline Hugging Face cache (``hf``) for the
    foundation-model encoders."""
    encoder = _ENCODER_ALIASES.get(str(encoder), encoder) if encoder else DEFAULT_ENCODER
    return default("weights") if encoder == DEFAULT_ENCODER else "hf"


def default(name: str) -> Any:
    """The recipe's default for one field (what a command uses when the flag is absent)."""
    for f in fields(PreprocessingRecipe):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            break
    raise KeyError(f"the recipe has no default for {name!r}")
