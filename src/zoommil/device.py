"""The one device resolver: `--device auto|cpu|cuda|cuda:N` -> a torch device."""

from __future__ import annotations

import logging

import torch

from zoommil.environment import nvidia_gpu_present
from zoommil.errors import ZoomMILError

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; CUDA without a GPU is a user error. A CUDA
    device computes fp32 as IEEE fp32 (`use_ieee_fp32`)."""
    resolved = device if isinstance(device, torch.device) else _parse_device(device)
    if resolved.type == "cuda":
        use_ieee_fp32()
    return resolved


def use_ieee_fp32() -> None:
    """Turn off TF32 on the GPU, so that `--precision fp32` is what the feature file records.

    cuDNN runs fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later by default:
    ResNet features then differ from CPU fp32 by ~7e-3 (a seventh of bf16's error, 1800x the
    CPU-to-CPU difference) and would mix unnoticed with CPU-made fp32 files in training.
    bf16 autocast is unaffected. The legacy switches, which exist in every supported torch:
    reading them after the newer `fp32_precision` API set cuDNN's conv alone raises."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _parse_device(device: str) -> torch.device:
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if nvidia_gpu_present():
            log.warning("--device auto runs on the CPU: %s", _unusable_gpu())
        return torch.device("cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ZoomMILError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = f": {_unusable_gpu()}" if nvidia_gpu_present() else ""
        raise ZoomMILError(f"device {name!r} requested but no CUDA device is available{why}")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ZoomMILError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise ZoomMILError(f"device {name!r} requested but only {count} CUDA device(s) exist")
    return resolved


def _unusable_gpu() -> str:
    """Why torch cannot use the GPU the driver lists. Why say it: a conda env built on a login
    node without GPU gets conda-forge's CPU build of pytorch, and every GPU job then ran on
    the CPU with nothing but the device recorded in its outputs to show it."""
    if torch.version.cuda is None:
        return (
            f"the node has an NVIDIA GPU but this torch ({torch.__version__}) is a CPU build; "
            "install a CUDA build (conda: build the env with CONDA_OVERRIDE_CUDA=12, "
            "docs/cluster.md)"
        )
    return (
        f"the node has an NVIDIA GPU but torch (CUDA {torch.version.cuda}) cannot use it "
        "(driver too old for this build, or CUDA_VISIBLE_DEVICES hides it)"
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a phase timed on a GPU is its work, not
    the launches (the next phase's first host copy would otherwise be charged for it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
