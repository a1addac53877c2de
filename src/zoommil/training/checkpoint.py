"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is ``{"state_dict": ..., "config": ...}`` where the config holds only plain
Python types (dict, list, str, int, float, bool, None), so loading it never unpickles
arbitrary objects and `zoommil evaluate` / `zoommil predict` can rebuild the model and redo
the preprocessing from it alone.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.io.atomic import write_bytes_atomic
from zoommil.io.jsonio import to_plain
from zoommil.training import modeling

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], config: Any) -> Path:
    """Write the checkpoint atomically (temporary file, then rename); tensors moved to CPU.

    Serialised in memory first, then written by Python: ``torch.save`` to a path fails on a
    full disk with a C++ ``RuntimeError`` that carries no errno (a traceback, exit 1), where
    a Python write raises the `OSError` that becomes one line naming the file."""
    payload = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "config": to_plain(config),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


#: File signatures of what is often given as a checkpoint by mistake.
_SIGNATURES = (
    (b"\x89HDF", "an HDF5 file, such as a coords or feature file"),
    (b"\x89PNG", "a PNG image"),
    (b"II*\x00", "a TIFF file, such as a slide"),
    (b"MM\x00*", "a TIFF file, such as a slide"),
    (b"{", "JSON"),
)


def recorded_path(
    config: Mapping[str, Any],
    key: str,
    what: str,
    option: str,
    checkpoint: str | Path,
    required: bool = False,
) -> Path | None:
    """The path a checkpoint recorded at training (its ``sheet``, ``exclude``), as the default
    of ``option``; None where it recorded none (an error if ``required``).

    Why the check: a recorded path that is not here (a moved project, another machine, an
    older checkpoint's relative path read from another folder) is an error naming the file and
    the option, never a silent fall back to whatever that path means here.
    """
    value = config.get(key)
    if not value and required:
        raise ZoomMILError(f"{checkpoint}: no {what} recorded in the checkpoint; pass {option}")
    if not value:
        return None
    path = Path(str(value))
    if not path.exists():
        raise ZoomMILError(
            f"{checkpoint}: the {what} recorded at training, {path}, does not exist here; "
            f"pass {option}"
        )
    if not path.is_absolute():
        log.warning(
            "%s: the %s recorded at training, %s, is relative (a checkpoint written before "
            "paths were recorded absolute) and is read from the current folder %s; pass %s "
            "if that is not the file it was trained with",
            checkpoint, what, path, Path.cwd(), option,
        )  # fmt: skip
    return path


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a `torch.save` file (a zip archive), or None if it may be one.

    Why: torch's own errors for other files read ``101`` (a KeyError of a text file's first
    byte) or ``pop from empty list``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as error:
        return f"cannot read it: {error.strerror or error}"
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        if zipfile.is_zipfile(path):
            return None
        return "a truncated or damaged zip archive, e.g. an interrupted copy"
    return next((w for s, w in _SIGNATURES if head.startswith(s)), "not a torch.save zip archive")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config) of a checkpoint written by `zoommil train`."""
    path = Path(path)
    if not path.exists():
        raise ZoomMILError(f"{path}: checkpoint not found")
    hint = "a checkpoint is the checkpoint.pt `zoommil train` writes"
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise ZoomMILError(f"{path}: not a zoommil checkpoint ({not_torch}; {hint})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure is a bad file
        text = str(error)
        if "weights_only" in text or "Weights only load failed" in text:
            raise ZoomMILError(
                f"{path}: refused: the checkpoint holds pickled objects other than tensors and "
                "plain values (loading it could run code); only checkpoints written by "
                "`zoommil train` are accepted"
            ) from None
        first = text.splitlines()[0] if text else type(error).__name__
        raise ZoomMILError(
            f"{path}: not a zoommil checkpoint (a zip archive torch cannot read: {first}; {hint})"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise ZoomMILError(f"{path}: not a zoommil checkpoint (no state_dict/config)")
    config = payload["config"]
    for key in ("arch", "classes", "mags", "in_dim"):
        if key not in config:
            raise ZoomMILError(f"{path}: checkpoint config lacks '{key}'")
    return payload["state_dict"], config


def model_from_state(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | Path
) -> nn.Module:
    """The model a checkpoint ``config`` describes, with ``state_dict`` loaded, in eval mode.

    ``source`` names the checkpoint in the error raised when the weights do not fit.
    """
    model = modeling.make_model(
        config["arch"],
        len(config["classes"]),
        int(config["in_dim"]),
        list(config.get("config_mags") or config["mags"]),
        dict(config.get("kwargs") or {}),
        run_seed=config.get("seed"),
    )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ZoomMILError(f"{source}: weights do not fit '{config['arch']}' ({first})") from error
    return model.eval()


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model with its weights, in eval mode on CPU, config) of a `zoommil train` checkpoint."""
    state_dict, config = load_checkpoint(path)
    return model_from_state(state_dict, config, path), config
