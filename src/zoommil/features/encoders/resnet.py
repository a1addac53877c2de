"""The paper's patch encoder: torchvision ResNet-50 truncated after ``layer3``, average-pooled.

The paper (and the official code, via histocartography) encodes 256x256 patches with an
ImageNet-1k ResNet-50 cut after ``layer3`` and ``AdaptiveAvgPool2d(1)``: 1024-d features, no
resize, ImageNet mean/std. CLAM/TRIDENT resize to 224 px, so their features are not
interchangeable with these.

``--weights imagenet`` is torchvision's IMAGENET1K_V1 file from the torch hub cache, never
downloaded at run time (a download on a node without internet failed only after the network
timed out, and one without a timeout can hang): a missing file is a clear error naming the file
to place and how to fetch it. A state dict of a full resnet50 loads too (``layer4``/``fc``
dropped).
"""

from __future__ import annotations

import logging
from pathlib import Path
from shlex import quote

import torch
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.registry import EncoderSpec
from zoommil.features.encoders.weight_files import (
    DEMO_ALTERNATIVE,
    IMAGENET_URL,
    imagenet_cache_path,
)
from zoommil.features.encoders.weights import check_and_load, sha256_file

log = logging.getLogger(__name__)

IMAGENET_HASH_PREFIX = "0676ba61"


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 convolution), torchvision's layout and names."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _layer(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50Layer3(nn.Module):
    """ResNet-50 stem + ``layer1..layer3`` + global average pool -> [B, 1024].

    Written out here rather than taken from torchvision: importing ``torchvision.models``
    costs more than importing torch itself (it pulls in ``torch._dynamo``), once per
    per-slide job. Module names and the random initialisation (He normal, fan-out; BatchNorm
    1/0) are torchvision's, so a torchvision resnet50 state dict loads directly (minus
    ``layer4`` and ``fc``) and gives the same outputs (tests/test_encoder.py checks both).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 3, stride=1)
        self.layer2 = _layer(256, 128, 4, stride=2)
        self.layer3 = _layer(512, 256, 6, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


def build(spec: EncoderSpec) -> nn.Module:
    """The architecture, randomly initialised (torchvision's init rule under the caller's seed)."""
    return ResNet50Layer3()


def imagenet_weights(spec: EncoderSpec) -> tuple[Path, str]:
    """The cached IMAGENET1K_V1 file; never downloaded here (see the module's docstring)."""
    path = imagenet_cache_path()
    if not path.is_file():
        raise ZoomMILError(
            f"ImageNet weights not found: place torchvision's IMAGENET1K_V1 file at {path} "
            f"(fetch it once where there is internet: `curl -L --create-dirs -o {quote(str(path))} "
            f'{IMAGENET_URL}`, or `python -c "import torchvision; '
            "torchvision.models.resnet50(weights='IMAGENET1K_V1')\"` and copy the "
            "hub/checkpoints/ folder of its torch cache), set TORCH_HOME to a folder whose "
            "hub/checkpoints/ holds it, or use --weights PATH (in the workflow: "
            f"features.weights){DEMO_ALTERNATIVE}"
        )
    if not sha256_file(path).startswith(IMAGENET_HASH_PREFIX):
        log.warning(
            "%s does not match torchvision's published hash prefix %s", path, IMAGENET_HASH_PREFIX
        )
    return path, f"torchvision ResNet50_Weights.IMAGENET1K_V1 ({path.name})"


def convert_state(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """A full resnet50 state dict loses ``layer4``/``fc``; a truncated one passes as it is."""
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "layer4."))}


def load_state(model: nn.Module, state: dict, path: Path, spec: EncoderSpec) -> None:
    check_and_load(model, state, path, spec)
