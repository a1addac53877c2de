"""Encoder weights: seeded random, torchvision ImageNet, a local file, or the offline HF cache.

Why offline only: foundation-model weights are gated (the user accepts a licence on Hugging Face
and fetches the file); a pipeline that downloads at run time breaks on cluster nodes without
internet and silently changes what it computes. So ``hf`` only *looks* in the standard hub cache
layout (``$HF_HUB_CACHE``, else the legacy ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``, with ``~`` and
``$VARS`` expanded as huggingface_hub does; then
``models--{org}--{name}/snapshots/{revision}/{file}``) and a missing file is a one-line error
naming the repo and the file to place there.

Loading is strict: every key present, every shape equal. A file made for another architecture,
or of the wrong shapes, fails with one line naming the file and the encoder.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.registry import EncoderSpec
from zoommil.features.encoders.weight_files import (
    local_weights_path,
    resolve_hf_weights,
    sha256_file,
)

log = logging.getLogger(__name__)


def sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of parameter names, shapes and values: identifies weights that have no file."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- files
# (where a file is, the HF cache or a path, is found in `weight_files`, without torch)


#: What a weights file may be (said where one is refused).
ACCEPTED = (
    "weights are accepted as a .safetensors file, or as a torch file holding only a state "
    "dict of tensors (torch.save(model.state_dict(), path))"
)


def _unpickler_detail(text: str) -> str:
    """What torch's weights-only unpickler found (``Unsupported global: GLOBAL m.Cls``,
    ``Unsupported operand 110``), without its advice."""
    _, _, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return lines[0].split(" was not an allowed global")[0] if lines else ""


def read_state_file(path: Path, spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a torch file loaded with ``weights_only``."""
    if path.is_file() and path.stat().st_size == 0:  # an interrupted copy, a full disk
        raise ZoomMILError(
            f"{path}: empty file (0 bytes), not weights for encoder {spec.name}: copy it again"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip/safetensors errors have many types
        text = str(error)
        if "Weights only load failed" not in text and "weights_only" not in text:
            # torch reads a text file's first byte as a pickle opcode: KeyError('101')
            if isinstance(error, KeyError):
                detail = "not a torch file"
            elif isinstance(error, EOFError):
                detail = "empty or truncated"
            else:
                detail = (text.splitlines() or [""])[0]
            raise ZoomMILError(
                f"{path}: cannot load weights for encoder {spec.name} as a state dict "
                f"({detail or type(error).__name__}); {ACCEPTED}"
            ) from error
        # torch's message advises weights_only=False or allow-listing the file's classes,
        # i.e. running the file's pickled code: pass on only what it found
        detail = _unpickler_detail(text)
        if detail.startswith("Unsupported global"):
            raise ZoomMILError(
                f"{path}: refused: the weights file for encoder {spec.name} holds pickled objects "
                f"other than tensors and plain values ({detail}; loading it could run code); "
                f"{ACCEPTED}"
            ) from None
        raise ZoomMILError(
            f"{path}: cannot load weights for encoder {spec.name} as a state dict (not a "
            f"torch file of tensors: {detail or 'unreadable'}); {ACCEPTED}"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "teacher"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ZoomMILError(f"{path}: not a state dict of tensors (encoder {spec.name})")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    # a training script's wrapper saved whole (`self.model = timm.create_model(...)`)
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state


def check_and_load(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, spec: EncoderSpec
) -> None:
    """Strict load with one line naming the file, the encoder and what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} vs "
            f"model {tuple(expected[k].shape)}"
        )
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise ZoomMILError(
            f"{path}: not weights of encoder {spec.name} ({spec.architecture}): "
            + "; ".join(problems)
        )
    model.load_state_dict(dict(state), strict=True)


# --------------------------------------------------------------------------- build


def family(spec: EncoderSpec) -> ModuleType:
    """The module that builds this spec's architecture (``resnet``, ``vit``)."""
    return importlib.import_module(f"zoommil.features.encoders.{spec.family}")


def build_with_weights(spec: EncoderSpec, weights: str, seed: int) -> tuple[nn.Module, dict]:
    """Build ``spec`` seeded, load ``weights`` into it, freeze it; returns (model, info)."""
    fam = family(spec)
    path, note = None, ""
    if weights == "imagenet":  # resolved before building: a missing file fails fast
        path, note = fam.imagenet_weights(spec)
    elif weights == "hf":
        path = resolve_hf_weights(spec)
        note = f"{spec.hf_repo}/{path.name} from the offline Hugging Face cache"
    elif weights != "random":
        path = local_weights_path(weights, spec).absolute()  # recorded as weights_file
        note = f"state dict {path}"
    with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
        torch.manual_seed(seed)
        model = fam.build(spec)
    model.encoder_spec = spec  # PatchEncoder reads the transform and dimension from it
    info: dict[str, Any] = {
        "encoder": spec.name,
        "encoder_arch": spec.architecture,
        "feature_dim": int(spec.dim),
        "encoder_input_size": int(spec.input_size),
        "weights": weights,
    }
    if weights == "random":
        info["weights_seed"] = int(seed)
        info["weights_sha256"] = sha256_state_dict(model.state_dict())
        info["weights_note"] = (
            f"RANDOM weights (seed {seed}): demo/test features only, not {spec.name} features"
        )
        log.warning("encoder %s uses RANDOM weights (seed %d)", spec.name, seed)
    else:
        state = fam.convert_state(read_state_file(path, spec), spec)
        fam.load_state(model, state, path, spec)
        info["weights_file"] = str(path)
        info["weights_sha256"] = sha256_file(path)
        info["weights_note"] = note
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, info
