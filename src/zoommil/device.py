"""The one device resolver: `--device auto|cpu|cuda|cuda:N` -> a torch device."""

from __future__ import annotations

import torch

from zoommil.errors import ZoomMILError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; CUDA without a GPU is a user error."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ZoomMILError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZoomMILError(f"device {name!r} requested but no CUDA device is available")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ZoomMILError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise ZoomMILError(f"device {name!r} requested but only {count} CUDA device(s) exist")
    return resolved


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a phase timed on a GPU is its work, not
    the launches (the next phase's first host copy would otherwise be charged for it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
