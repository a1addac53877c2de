"""Small helpers the Snakemake rules use to turn config and the recipe into command lines.

Kept here (not in the .smk files) so they are unit-tested and the rules stay declarative.
What a rule's code is (its rerun input) is `zoommil.workflow.codehash`.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoommil.environment import nvidia_gpu_present
from zoommil.errors import ZoomMILError
from zoommil.recipe import PreprocessingRecipe


def library_root(basedir: str | Path) -> Path:
    """The zoommil sources next to the workflow (a checkout), else the installed package."""
    local = Path(basedir) / "src" / "zoommil"
    if local.is_dir():
        return local.resolve()
    import zoommil

    return Path(zoommil.__file__).resolve().parent


def run_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """A file as the rules name it (params, inputs): relative to the run's folder (``root``,
    default the working directory) when inside it, normalised (``./x`` is ``x``), else
    absolute. Why: params are rerun triggers; the sheet's paths resolved to absolute ones made
    a copied or moved project folder redo every slide from inspection on, and the sheet named
    as ``./slides.tsv`` instead of ``slides.tsv`` retrained every model (review S)."""
    base = os.path.abspath(root if root is not None else os.getcwd())
    full = os.path.abspath(path)  # no symlink resolution: the user's own spelling of folders
    relative = os.path.relpath(full, base)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return Path(full).as_posix()
    return Path(relative).as_posix()


def check_imported_library(root: str | Path) -> None:
    """Refuse a run whose imported zoommil is not the library at ``root`` (`library_root`).

    Why: the rules' `code` params hash the sources at ``root``, but the jobs run the zoommil
    that Python imports. Beside another install (a non-editable `pip install .`, another
    clone's editable one) an edit of ``root`` reruns jobs that do not run it, and the code
    that does run is tracked by nothing.
    """
    import zoommil

    imported = Path(zoommil.__file__).resolve()
    root = Path(root).resolve()
    if not imported.is_relative_to(root):
        raise ZoomMILError(
            f"this workflow tracks the zoommil sources in {root}, but Python imports zoommil "
            f"from {imported.parent}: run `pip install -e .` in {root.parent.parent} (or set "
            f"PYTHONPATH={root.parent}) so that the jobs run the code the workflow tracks"
        )


def export_checkout(basedir: str | Path, library: str | Path) -> None:
    """Export, for the jobs, the checkout of the Snakefile (``ZOOMMIL_SOURCE``: what the conda
    envs' post-deploy scripts install) and the zoommil sources the workflow tracks
    (``ZOOMMIL_LIBRARY``: a job importing another zoommil refuses to run, `zoommil/__init__`).

    Both are set whatever the shell had: a ZOOMMIL_SOURCE left there (the post-deploy
    script's error suggests setting it) installed another checkout into the envs.
    """
    os.environ["ZOOMMIL_SOURCE"] = str(Path(basedir).resolve())
    os.environ["ZOOMMIL_LIBRARY"] = str(Path(library).resolve())


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, without importing torch (the Snakefile runs
    this at every start)."""
    return nvidia_gpu_present()


def time_on_gpu(setting: bool | str) -> bool:
    """`efficiency.gpu`: true (always: a note is written where there is no GPU), false, or
    auto (only where this machine has one: the demo then starts no job that only writes
    that note)."""
    if setting == "auto":
        return gpu_present()
    return bool(setting)


def cli_flags(args: Mapping[str, Any] | None) -> str:
    """`{"sigma": 20, "keep-empty": True, "mags": [1, 2]}` -> `--keep-empty --mags 1 2 --sigma 20`.

    Underscores become dashes; False/None drop the flag. Values are shell-quoted. Flags in
    key order: the text is a rerun trigger, and the same settings written in another order
    redid every slide's tissue, tiles and features (review S).
    """
    parts: list[str] = []
    for key, value in sorted((args or {}).items()):
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(flag)
            parts.extend(shlex.quote(_cli_word(v)) for v in value)
        else:
            parts.extend([flag, shlex.quote(_cli_word(value))])
    return " ".join(parts)


def param_flags(flag: str, params: Mapping[str, Any] | None) -> str:
    """`("--param", {"sigma": 20})` -> `--param sigma=20` (repeatable NAME=VALUE flags), in
    key order (`cli_flags`)."""
    return " ".join(
        f"{flag} {shlex.quote(f'{key}={_cli_word(value)}')}"
        for key, value in sorted((params or {}).items())
    )


def _cli_word(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def tiling_flags(recipe: PreprocessingRecipe) -> str:
    """`zoommil tile` flags of the recipe's tiling part (the tissue mask comes from a file)."""
    return cli_flags(
        {
            "mags": list(recipe.mags),
            "patch_size": recipe.patch_size,
            "tissue_threshold": recipe.tissue_threshold,
            "allow_upsampling": recipe.allow_upsampling,
        }
    )


def encoder_flags(recipe: PreprocessingRecipe) -> str:
    """`zoommil features` flags of the recipe's encoder part."""
    return cli_flags(
        {
            "encoder": recipe.encoder,
            "weights": recipe.weights,
            "seed": recipe.weights_seed,
            "precision": recipe.precision,
        }
    )


#: mpp sources of `zoommil.wsi.resolution.resolve_mpp` that are not the slide's own metadata
#: ("sheet": a "default" that came from the sheet's mpp column, `zoommil.workflow.qc`).
_GIVEN_MPP_SOURCES = ("default", "sheet", "override")


def inspect_mpp_flag(override: Any, sheet_mpp: Any, default_mpp: Any) -> str:
    """`zoommil inspect`'s mpp flag for a slide: the sheet's mpp_override as `--mpp` (it
    replaces the metadata), else the sheet's mpp, else the config's `default_mpp`, as
    `--default-mpp`.

    Why a fallback for the last two and not `--mpp`: DESIGN's order puts both after every
    metadata source, so they only reach slides whose metadata has no plausible mpp. A slide
    whose metadata is plausible but wrong needs a value that wins: mpp_override, which
    inspection records as source "override" and every later command gets as `--mpp`
    (`resolved_mpp_flag`).
    """
    given = _mpp_value(override)
    if given is not None:
        return f"--mpp {given}"
    for value in (sheet_mpp, default_mpp):
        given = _mpp_value(value)
        if given is not None:
            return f"--default-mpp {given}"
    return ""


def _mpp_value(value: Any) -> float | None:
    """A sheet or config mpp as a float; None when absent (None or NaN)."""
    if value is None or math.isnan(float(value)):
        return None
    return float(value)


def resolved_mpp_flag(mpp: Any, source: str) -> str:
    """The flag that makes a command after inspection resolve a slide's mpp as it did.

    Why not `--mpp` for every slide: a slide whose mpp came from its metadata resolves the
    same again without a flag, so its params (hence its tissue mask, tiles, features and
    prediction) do not change when `default_mpp` or the sheet's mpp does, and its files keep
    the metadata as the source. A slide resolved from a fallback gets that value as
    `--default-mpp` (its source stays "default"), so its params change exactly when its
    resolved mpp does. An "override" is always passed as `--mpp`.
    """
    text = "" if mpp is None else str(mpp).strip()
    if not text or text.lower() == "nan" or source not in _GIVEN_MPP_SOURCES:
        return ""
    return f"{'--mpp' if source == 'override' else '--default-mpp'} {float(text)}"


def gres_gpus(gres: Any) -> int:
    """GPUs a SLURM `gres` resource asks for: `gpu` -> 1, `gpu:2`, `gpu:a100:2` -> 2, no gpu
    entry -> 0.

    Why: sites whose SLURM only knows `--gres=gpu:1` request the GPU this way (with `gpu: 0`),
    and snakemake-executor-plugin-slurm then submits a GPU job for any gres naming a gpu.
    """
    for entry in str(gres or "").split(","):
        fields = entry.strip().split(":")
        if fields[0].startswith("gpu"):
            count = fields[-1] if len(fields) > 1 else "1"
            return int(count) if count.isdigit() else 1
    return 0


def torch_device(gpus: Any, gres: Any = None, gpu_model: Any = None) -> str:
    """`--device` of a rule's torch command: `auto` where its resources request a GPU, else
    `cpu`.

    Why: the commands default to `auto`, which takes CUDA wherever it is visible, so a rule
    that declares no GPU (train, predict) used one anyway: unscheduled by `--resources gpu=N`
    or SLURM, and training is deterministic only on CPU. Declaring a GPU for a rule (in a
    profile's `set-resources`) is what moves it to the GPU, in any of the forms the SLURM
    executor plugin submits as one: `gpu: N`, `gres: "gpu:N"` (with `gpu: 0`), or
    `gpu_model` without `gpu` (it then asks for one GPU of that model).
    """
    if gpus is not None and str(gpus).strip():
        if float(gpus) > 0:
            return "auto"
    elif gpu_model:
        return "auto"
    return "auto" if gres_gpus(gres) > 0 else "cpu"
