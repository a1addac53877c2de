"""Running a patch encoder: device, precision and each encoder's own transform.

The encoders themselves live in the registry (`zoommil.features.encoders`: the paper's
ResNet-50 to layer3 and the timm ViTs of pathology foundation models); ``build_encoder`` here
takes the weights first, as the commands' ``--weights`` does, and the registry's
``build_registered_encoder(name, weights=, seed=)`` the encoder's name first.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoommil.device import resolve_device
from zoommil.environment import cpu_flags
from zoommil.errors import ZoomMILError
from zoommil.features.encoders import registry
from zoommil.features.encoders.registry import DEFAULT_ENCODER, EncoderSpec, get_spec
from zoommil.features.frozen import freezable, freeze_for_cpu
from zoommil.features.precision import PRECISION_CHOICES
from zoommil.heap import keep_freed_memory

__all__ = [
    "PATCH_SIZE",
    "PatchEncoder",
    "build_encoder",
    "encode_patches",
    "native_bf16",
    "resolve_precision",
]

#: The lattice's patch side in px at every magnification, whatever the encoder.
PATCH_SIZE = 256


def build_encoder(
    weights: str | Path = "imagenet",
    *,
    seed: int = 0,
    encoder: str | EncoderSpec = DEFAULT_ENCODER,
) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder in eval mode plus its provenance dict (see
    `registry.build_registered_encoder`, which takes the encoder's name first).

    The info dict has ``encoder``, ``feature_dim``, ``encoder_input_size``, ``weights``
    (imagenet | random | hf | the path), ``weights_sha256`` (of the file, or of the parameters
    for random), ``weights_seed`` (random only) and ``weights_note`` (a human sentence, which
    says "random" for random weights).
    """
    return registry.build_registered_encoder(encoder, weights=str(weights), seed=seed)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (else bf16 is emulated and slow)."""
    if device.type == "cuda":  # Ampere (8.0) on; `is_bf16_supported` counts emulation too
        return torch.cuda.get_device_capability(device)[0] >= 8
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware has it natively (about 2x faster on such CPUs,
    cosine 0.99999 to fp32 features), fp32 elsewhere; other values pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def spec_of(model: nn.Module) -> EncoderSpec:
    """The spec a model was built from (`build_encoder` attaches it); ResNet-50 otherwise."""
    return getattr(model, "encoder_spec", None) or get_spec(DEFAULT_ENCODER)


class PatchEncoder:
    """An encoder prepared for inference on one device at one precision, with its transform.

    Why a wrapper: the device, channels-last layout, bf16 autocast and the encoder's own
    transform (resize + centre crop + normalisation, from its `EncoderSpec`) are set up once,
    and ``zoommil features`` and ``zoommil predict`` share one ``encode`` call on the lattice's
    uint8 patches (256 px at every magnification, whatever the encoder).

    ``frozen``: run a TorchScript-frozen copy (`zoommil.features.frozen`, 1.37x at fp32 on a
    CPU); ``None`` decides by family, device and precision, ``False`` keeps the eager module.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        spec: EncoderSpec | None = None,
        frozen: bool | None = None,
    ) -> None:
        if precision not in PRECISION_CHOICES:
            choices = ", ".join(PRECISION_CHOICES)
            raise ZoomMILError(f"unknown precision {precision!r} (use {choices})")
        self.spec = spec or spec_of(model)
        self.device = resolve_device(device)
        # this process will call the encoder again and again: its activations stay in the heap
        keep_freed_memory()
        precision = resolve_precision(precision, self.device)
        self.precision = precision
        # channels_last everywhere: oneDNN's NHWC convolutions are ~12% faster than NCHW at
        # fp32 on an AVX2 CPU (ResNet-50 layer3, 1 thread, batch 8-16), and needed for bf16/GPU.
        model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        if frozen is None:
            frozen = freezable(self.spec.family, self.device, precision)
        self.frozen = frozen
        self.model = freeze_for_cpu(model, self.spec.crop) if frozen else model
        self.mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @property
    def dim(self) -> int:
        return int(self.spec.dim)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The card's resize (shorter side, antialiased, clamped to the pixel range as PIL
        does) and centre crop on float [B, 3, H, W] pixels; no-op for the paper's ResNet."""
        spec = self.spec
        if spec.resize is not None and min(x.shape[-2:]) != spec.resize:
            h, w = x.shape[-2:]
            scale = spec.resize / min(h, w)
            size = (max(spec.resize, round(h * scale)), max(spec.resize, round(w * scale)))
            x = F.interpolate(
                x, size=size, mode=spec.interpolation, antialias=True, align_corners=False
            ).clamp_(0.0, 255.0)
        if spec.resize is not None:
            h, w = x.shape[-2:]
            top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
            if top < 0 or left < 0:
                raise ZoomMILError(
                    f"encoder {spec.name}: {h}x{w} px after resizing is smaller than its "
                    f"{spec.crop} px crop"
                )
            x = x[..., top : top + spec.crop, left : left + spec.crop]
        return x

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> the encoder's normalised float32 input [B, 3, S, S]."""
        x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (self.transform(x) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def encode(self, patches: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 RGB patches [B, H, W, 3] -> float32 features [B, dim] (numpy)."""
        patches = torch.as_tensor(patches)
        if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != torch.uint8:
            raise ZoomMILError(
                f"patches must be uint8 [B, H, W, 3], got {patches.dtype} {tuple(patches.shape)}"
            )
        if len(patches) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
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
    """Encode uint8 patches [N, H, W, 3] -> float32 [N, dim], in batches.

    Pass a `PatchEncoder` to reuse its device/precision set-up across calls (what
    ``zoommil predict`` does); a bare module is wrapped on the fly.
    """
    if not isinstance(encoder, PatchEncoder):
        encoder = PatchEncoder(encoder, device=device, precision=precision)
    patches = np.asarray(patches)
    if len(patches) == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    chunks = [
        encoder.encode(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)
    ]
    return np.concatenate(chunks)
