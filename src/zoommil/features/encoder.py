"""The patch encoder of ZoomMIL: torchvision ResNet-50 truncated after ``layer3``, average-pooled.

The paper (and the official code, via histocartography) encodes 256x256 patches with an
ImageNet-1k ResNet-50 cut after ``layer3`` and ``AdaptiveAvgPool2d(1)``: 1024-d features, no
resize, ImageNet mean/std. CLAM/TRIDENT resize to 224 px, so their features are not
interchangeable with these.

Weights (``build_encoder(weights=...)``):

- ``"imagenet"``: torchvision's IMAGENET1K_V1 file from the torch hub cache (downloaded there
  once on a machine with internet; offline, a clear error names the file to place).
- ``"random"``: a seeded random init for offline demos and tests; the returned info says so and
  every output made with it must carry that info.
- a path: a state dict loaded with ``torch.load(..., weights_only=True)`` (a full resnet50 state
  dict, whose ``layer4``/``fc`` keys are ignored, or an already truncated one).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet50

from zoommil.device import resolve_device
from zoommil.errors import ZoomMILError
from zoommil.features.precision import PRECISION_CHOICES

log = logging.getLogger(__name__)

ENCODER_NAME = "resnet50_layer3_avgpool"
FEATURE_DIM = 1024
PATCH_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
IMAGENET_FILE = "resnet50-0676ba61.pth"
IMAGENET_HASH_PREFIX = "0676ba61"
OFFLINE_ENV = "ZOOMMIL_OFFLINE"


class ResNet50Layer3(nn.Module):
    """ResNet-50 stem + ``layer1..layer3`` + global average pool -> [B, 1024].

    Module names equal torchvision's, so a torchvision resnet50 state dict loads directly
    (minus ``layer4`` and ``fc``).
    """

    def __init__(self) -> None:
        super().__init__()
        full = resnet50(weights=None)
        self.conv1 = full.conv1
        self.bn1 = full.bn1
        self.relu = full.relu
        self.maxpool = full.maxpool
        self.layer1 = full.layer1
        self.layer2 = full.layer2
        self.layer3 = full.layer3
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


def imagenet_cache_path() -> Path:
    """Where torchvision keeps the IMAGENET1K_V1 file (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _fetch_imagenet() -> Path:
    """The cached IMAGENET1K_V1 file, downloading it once if allowed; else a clear error."""
    path = imagenet_cache_path()
    if path.is_file():
        return path
    how = (
        f"ImageNet weights not found: place torchvision's IMAGENET1K_V1 file at {path} "
        f"(download {IMAGENET_URL} on a machine with internet, or run "
        f"`python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V1')\"` "
        "there and copy ~/.cache/torch/hub/checkpoints/), set TORCH_HOME to a folder whose "
        "hub/checkpoints/ holds it, or use --weights random (demo) or --weights PATH"
    )
    if os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes"):
        raise ZoomMILError(how)
    log.info("downloading ImageNet weights %s -> %s", IMAGENET_URL, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(IMAGENET_URL, str(path), hash_prefix=None, progress=True)
    except Exception as error:  # noqa: BLE001 - any network failure means "offline"
        raise ZoomMILError(f"{how} (download failed: {error})") from error
    return path


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one nested under 'state_dict'/'model', DDP 'module.' too."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ZoomMILError(f"{source}: not a state dict of tensors")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "layer4."))}


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle/zip errors have many types
        raise ZoomMILError(f"{path}: cannot load weights as a state dict ({error})") from error
    state = _unwrap_state_dict(obj, str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} vs "
            f"model {tuple(expected[k].shape)}"
        )
    if problems:
        raise ZoomMILError(
            f"{path}: not a torchvision ResNet-50 state dict (" + "; ".join(problems) + ")"
        )
    model.load_state_dict(state, strict=True)


def build_encoder(weights: str | Path = "imagenet", seed: int = 0) -> tuple[nn.Module, dict]:
    """The encoder in eval mode plus a weights info dict.

    The info dict has ``encoder``, ``weights`` (imagenet | random | the path), ``weights_sha256``
    (of the file, or of the parameters for random), ``weights_seed`` (random only) and
    ``weights_note`` (a human sentence, which says "random" for random weights).
    """
    name = str(weights)
    with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
        torch.manual_seed(seed)
        model = ResNet50Layer3()
    info: dict[str, Any] = {"encoder": ENCODER_NAME, "weights": name}
    if name == "random":
        info["weights_seed"] = int(seed)
        info["weights_sha256"] = sha256_state_dict(model.state_dict())
        info["weights_note"] = (
            f"RANDOM weights (seed {seed}): demo/test features only, not ImageNet features"
        )
        log.warning("encoder uses RANDOM weights (seed %d): demo/test features only", seed)
    else:
        if name == "imagenet":
            path = _fetch_imagenet()
            note = f"torchvision ResNet50_Weights.IMAGENET1K_V1 ({path.name})"
        else:
            path = Path(name)
            if not path.is_file():
                raise ZoomMILError(
                    f"{path}: weights file not found (use --weights imagenet, random or a path "
                    "to a resnet50 state dict)"
                )
            note = f"state dict {path}"
        _load_state(model, path)
        info["weights_sha256"] = sha256_file(path)
        info["weights_note"] = note
        if name == "imagenet" and not info["weights_sha256"].startswith(IMAGENET_HASH_PREFIX):
            log.warning(
                "%s does not match torchvision's published hash prefix %s",
                path,
                IMAGENET_HASH_PREFIX,
            )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, info


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (else bf16 is emulated and slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware has it natively (about 2x faster on such CPUs,
    cosine 0.99999 to fp32 features), fp32 elsewhere; other values pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class PatchEncoder:
    """An encoder prepared for inference on one device at one precision.

    Why a wrapper: the device, channels-last layout and bf16 autocast are chosen once, and
    ``zoommil features`` and ``zoommil predict`` then share one ``encode`` call on uint8 patches.
    """

    def __init__(
        self, model: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32"
    ) -> None:
        if precision not in PRECISION_CHOICES:
            choices = ", ".join(PRECISION_CHOICES)
            raise ZoomMILError(f"unknown precision {precision!r} (use {choices})")
        self.device = resolve_device(device) if isinstance(device, str) else device
        precision = resolve_precision(precision, self.device)
        self.precision = precision
        self.channels_last = precision == "bf16" or self.device.type == "cuda"
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float32 [B, 3, H, W] on the device."""
        x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def encode(self, patches: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 RGB patches [B, 256, 256, 3] -> float32 features [B, 1024] (numpy)."""
        patches = torch.as_tensor(patches)
        if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != torch.uint8:
            raise ZoomMILError(
                f"patches must be uint8 [B, H, W, 3], got {patches.dtype} {tuple(patches.shape)}"
            )
        if len(patches) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        with self._autocast():
            out = self.model(self.preprocess(patches))
        return out.float().cpu().numpy()


def encode_patches(
    encoder: nn.Module | PatchEncoder,
    patches: np.ndarray,
    batch_size: int = 16,
    device: str = "cpu",
    precision: str = "fp32",
) -> np.ndarray:
    """Encode uint8 patches [N, 256, 256, 3] -> float32 [N, 1024], in batches.

    Pass a `PatchEncoder` to reuse its device/precision set-up across calls (what
    ``zoommil predict`` does); a bare module is wrapped on the fly.
    """
    if not isinstance(encoder, PatchEncoder):
        encoder = PatchEncoder(encoder, device=device, precision=precision)
    patches = np.asarray(patches)
    if len(patches) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    chunks = [
        encoder.encode(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)
    ]
    return np.concatenate(chunks)
