"""Patch encoders: a registry of named encoders, one module per architecture family.

``registry`` (plain data: importable without torch, so the CLI can list the names), ``resnet``
(the paper's ResNet-50 to layer3), ``vit`` (timm ViTs of pathology foundation models) and
``weights`` (random, ImageNet, local files and the offline Hugging Face cache). Use
``build_registered_encoder(name, weights=..., seed=...)``; docs/encoders.md tabulates the
entries and their sources.
"""

from zoommil.features.encoders.registry import (
    DEFAULT_ENCODER,
    ENCODERS,
    EncoderSpec,
    build_registered_encoder,
    canonical_name,
    encoder_names,
    get_spec,
)

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "EncoderSpec",
    "build_registered_encoder",
    "canonical_name",
    "encoder_names",
    "get_spec",
]
