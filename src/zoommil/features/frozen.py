"""A CNN encoder frozen for fp32 inference on a CPU: batch norm folded into the convolutions
and the convolution weights packed once for oneDNN.

Why: eager PyTorch re-lays out every convolution's weights for oneDNN on each call. Tracing
the network, freezing it and running TorchScript's inference passes does that layout once and
fuses conv + batch norm + ReLU. Measured on a 2-core AVX2 EPYC, 1 thread, batch 8, the paper's
ResNet-50 to layer3 on 256 px patches (`benchmarks/frozen_encoder.py`, medians of 6 alternating
rounds): 4.64 -> 6.35 patches/s (1.37x), features equal to eager ones to at most ~5e-5 on values
of ~10 (the summation order of the folded convolutions changes, not the maths). The first call
costs what eager's first call costs (~2.5 s on that machine).

Only fp32 on a CPU and only CNNs (``family == "resnet"``): bf16 autocast and CUDA have their
own fast paths, and tracing a ViT would bake its token count into the graph. Where TorchScript
is missing (a future torch) or tracing fails, the eager model is returned unchanged: the
encoder is slower, never wrong.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Encoder families whose graph does not depend on the input size (safe to trace once).
FREEZABLE_FAMILIES = ("resnet",)


def freezable(family: str, device: torch.device, precision: str) -> bool:
    """Whether `freeze_for_cpu` applies: a CNN at fp32 on a CPU."""
    return device.type == "cpu" and precision == "fp32" and family in FREEZABLE_FAMILIES


def freeze_for_cpu(model: nn.Module, input_size: int) -> nn.Module:
    """``model`` traced, frozen and optimised for CPU inference, or ``model`` itself when that
    is not possible. ``input_size``: the square side the network sees (the example input)."""
    jit = getattr(torch, "jit", None)
    if jit is None or not hasattr(jit, "optimize_for_inference"):
        return model
    example = torch.zeros(1, 3, input_size, input_size).contiguous(
        memory_format=torch.channels_last
    )
    try:
        # Outside inference mode: tracing records autograd-free but ordinary tensors.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # TorchScript says it is deprecated in favour of torch.compile; compile needs a C++
            # compiler and ~40 s per process here, too slow for one-slide jobs.
            warnings.simplefilter("ignore")
            traced = jit.trace(model.eval(), example, check_trace=False)
            return jit.optimize_for_inference(jit.freeze(traced))
    except Exception as err:  # any failure means "run eager", never an error
        log.debug("encoder not frozen (%s); running it eagerly", err)
        return model
