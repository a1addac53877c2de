"""The encoder registry: one `EncoderSpec` per named encoder, and `build_registered_encoder`.

Why a registry of plain data: the CLI builds its parser (``--encoder`` choices) and the workflow
validates its config without importing torch or timm; the architectures live in one module per
family (`resnet`, `vit`), imported only when a model is built. Every spec carries what a user
must know to trust the features: the published architecture, input size, normalisation, output
rule, dimension, parameter count and where the weights come from (docs/encoders.md cites the
source of each field).

The lattice never changes with the encoder: patches are 256 px at every magnification, and each
encoder's own transform (`EncoderSpec.resize`, `crop`, `interpolation`, `mean`, `std`) turns
them into its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.features.weight_keywords import WEIGHT_KEYWORDS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: H-optimus-0's own normalisation (model card).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

DEFAULT_ENCODER = "resnet50_layer3"
#: Names that older feature files carry for a registered encoder.
ALIASES = {"resnet50_layer3_avgpool": "resnet50_layer3"}


@dataclass(frozen=True)
class EncoderSpec:
    """What defines one patch encoder; the fields are the model card's, not ours.

    ``resize``/``crop``: the eval transform on a patch, as the card writes it: resize the
    shorter side to ``resize`` px (``interpolation``, antialiased), then centre-crop ``crop`` px
    (the network's input). ``None`` means no resize (the paper's ResNet-50 takes 256 px as is).
    ``output``: ``cls`` (the final-norm class token), ``cls+mean`` (class token concatenated with
    the mean of the patch tokens, registers excluded) or ``avgpool`` (CNN global average pool).
    ``kwargs``: the family builder's architecture arguments (for ViTs: timm VisionTransformer).
    """

    name: str
    family: str  # module under zoommil.features.encoders that builds it
    architecture: str  # human-readable, e.g. "ViT-L/16"
    dim: int
    crop: int
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output: str = "cls"
    kwargs: dict[str, Any] = field(default_factory=dict)
    published_params: str | None = None  # as the card states it, e.g. "303M", "1.1B"
    published_gflops: float | None = None  # multiply-adds (GMACs) per input image, if published
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()  # candidate weight files in the repo, preferred first
    licence: str = ""
    gated: bool = False
    source: str = ""  # where the fields come from (URL)

    @property
    def input_size(self) -> int:
        """Side of the network's input in px."""
        return self.crop

    def published_params_range(self) -> tuple[float, float] | None:
        """The parameter counts the stated figure allows: +- one unit of its last digit
        ("632M": 631M-633M; "1.1B": 1.0B-1.2B)."""
        if not self.published_params:
            return None
        text = self.published_params
        number, scale = text[:-1], {"K": 1e3, "M": 1e6, "B": 1e9}[text[-1]]
        decimals = len(number.split(".")[1]) if "." in number else 0
        unit = scale * 10.0**-decimals
        return float(number) * scale - unit, float(number) * scale + unit

    def with_kwargs(self, **overrides: Any) -> EncoderSpec:
        """The same encoder with architecture arguments overridden (e.g. ``depth=2`` in tests)."""
        return replace(self, kwargs={**self.kwargs, **overrides})

    def describe(self) -> str:
        """One line for tables and logs: ``uni (ViT-L/16, 224 px, 1024-d)``."""
        return f"{self.name} ({self.architecture}, {self.input_size} px, {self.dim}-d)"


def _vit(**kwargs: Any) -> dict[str, Any]:
    """timm VisionTransformer arguments shared by every registered ViT (no classifier head)."""
    return {"num_classes": 0, "dynamic_img_size": True, **kwargs}


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="resnet50_layer3",
            family="resnet",
            architecture="ResNet-50 to layer3 + avgpool",
            dim=1024,
            crop=256,
            resize=None,
            output="avgpool",
            published_params=None,
            published_gflops=4.309,
            licence="BSD-3-Clause (torchvision IMAGENET1K_V1)",
            gated=False,
            source="https://github.com/pytorch/vision/blob/main/torchvision/models/resnet.py",
        ),
        EncoderSpec(
            name="uni",
            family="vit",
            architecture="ViT-L/16",
            dim=1024,
            resize=224,
            crop=224,
            interpolation="bilinear",
            output="cls",
            kwargs=_vit(
                img_size=224,
                patch_size=16,
                embed_dim=1024,
                depth=24,
                num_heads=16,
                mlp_ratio=4.0,
                init_values=1e-5,
            ),
            published_params="303M",
            published_gflops=61.6,
            hf_repo="MahmoodLab/UNI",
            hf_files=("pytorch_model.bin",),
            licence="CC-BY-NC-ND-4.0",
            gated=True,
            source="https://huggingface.co/MahmoodLab/UNI",
        ),
        EncoderSpec(
            name="uni2-h",
            family="vit",
            architecture="ViT-H/14, 8 registers, SwiGLU",
            dim=1536,
            resize=224,
            crop=224,
            interpolation="bilinear",
            output="cls",
            kwargs=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1536,
                depth=24,
                num_heads=24,
                mlp_ratio=2.66667 * 2,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                init_values=1e-5,
                reg_tokens=8,
                no_embed_class=True,
            ),
            published_params="681M",
            hf_repo="MahmoodLab/UNI2-h",
            hf_files=("pytorch_model.bin",),
            licence="CC-BY-NC-ND-4.0",
            gated=True,
            source="https://huggingface.co/MahmoodLab/UNI2-h",
        ),
        EncoderSpec(
            name="virchow2",
            family="vit",
            architecture="ViT-H/14, 4 registers, SwiGLU",
            dim=2560,
            resize=224,
            crop=224,
            interpolation="bicubic",
            output="cls+mean",
            kwargs=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1280,
                depth=32,
                num_heads=16,
                mlp_ratio=5.3375,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                init_values=1e-5,
                reg_tokens=4,
            ),
            published_params="632M",
            hf_repo="paige-ai/Virchow2",
            hf_files=("model.safetensors", "pytorch_model.bin"),
            licence="CC-BY-NC-ND-4.0",
            gated=True,
            source="https://huggingface.co/paige-ai/Virchow2",
        ),
        EncoderSpec(
            name="h-optimus-0",
            family="vit",
            architecture="ViT-g/14, 4 registers, SwiGLU",
            dim=1536,
            resize=224,
            crop=224,
            interpolation="bilinear",
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            output="cls",
            kwargs=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_ratio=2.66667 * 2,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                init_values=1e-5,
                reg_tokens=4,
                no_embed_class=True,
            ),
            published_params="1.1B",
            hf_repo="bioptimus/H-optimus-0",
            hf_files=("model.safetensors", "pytorch_model.bin"),
            licence="Apache-2.0",
            gated=True,
            source="https://huggingface.co/bioptimus/H-optimus-0",
        ),
        EncoderSpec(
            name="prov-gigapath",
            family="vit",
            architecture="ViT-g/16 (DINOv2 giant, SwiGLU)",
            dim=1536,
            resize=256,
            crop=224,
            interpolation="bicubic",
            output="cls",
            kwargs=_vit(
                img_size=224,
                patch_size=16,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_ratio=5.33334,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                init_values=1e-5,
            ),
            published_params="1.1B",
            hf_repo="prov-gigapath/prov-gigapath",
            hf_files=("pytorch_model.bin",),
            licence="Apache-2.0",
            gated=True,
            source="https://huggingface.co/prov-gigapath/prov-gigapath",
        ),
        EncoderSpec(
            name="phikon-v2",
            family="vit",
            architecture="ViT-L/16 (DINOv2)",
            dim=1024,
            resize=224,
            crop=224,
            interpolation="bicubic",
            output="cls",
            kwargs=_vit(
                img_size=224,
                patch_size=16,
                embed_dim=1024,
                depth=24,
                num_heads=16,
                mlp_ratio=4.0,
                init_values=1e-5,
            ),
            published_params="0.3B",
            published_gflops=61.6,
            hf_repo="owkin/phikon-v2",
            hf_files=("model.safetensors",),
            licence="Owkin non-commercial (other)",
            gated=False,
            source="https://huggingface.co/owkin/phikon-v2",
        ),
    )
}


def encoder_names() -> list[str]:
    """Registered encoder names, the default first."""
    return [DEFAULT_ENCODER, *sorted(n for n in ENCODERS if n != DEFAULT_ENCODER)]


def canonical_name(name: str) -> str:
    """The registered name of ``name`` (older feature files use aliases)."""
    return ALIASES.get(str(name), str(name))


def get_spec(name: str | EncoderSpec) -> EncoderSpec:
    """The spec of a registered encoder; an unknown name is a one-line user error."""
    if isinstance(name, EncoderSpec):
        return name
    spec = ENCODERS.get(canonical_name(name))
    if spec is None:
        raise ZoomMILError(f"unknown encoder {name!r} (registered: {', '.join(encoder_names())})")
    return spec


def weight_choices(spec: EncoderSpec) -> tuple[str, ...]:
    """The keywords encoder ``spec`` takes: ``imagenet`` only where torchvision has its file
    (the ResNet family), ``hf`` only where the spec names a Hugging Face repository."""
    return tuple(
        word
        for word in WEIGHT_KEYWORDS
        if (word != "imagenet" or spec.family == "resnet") and (word != "hf" or spec.hf_repo)
    )


def check_weights(name: str | EncoderSpec, weights: str) -> None:
    """Refuse, without torch, weights that `build_registered_encoder` would refuse only when it
    builds the encoder: a keyword encoder ``name`` does not take, or a path that does not
    exist. Files in the caches (ImageNet, Hugging Face) are looked for only then: the machine
    that checks a config may not be the one that extracts the features."""
    spec = get_spec(name)
    choices = weight_choices(spec)
    usage = f"use {', '.join(choices)} or a path to a .safetensors / state-dict file"
    if weights in WEIGHT_KEYWORDS:
        if weights not in choices:
            raise ZoomMILError(f"encoder {spec.name} does not take weights {weights!r}: {usage}")
        return
    if not Path(str(weights)).expanduser().exists():
        raise ZoomMILError(
            f"weights {weights!r} is neither a keyword nor an existing file (encoder "
            f"{spec.name}): {usage}"
        )


def build_registered_encoder(
    name: str | EncoderSpec = DEFAULT_ENCODER,
    *,
    weights: str = "random",
    seed: int = 0,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """The encoder ``name`` in eval mode, frozen, plus its provenance dict.

    ``weights``: ``random`` (seeded init, for demos, tests and cost measurements), ``imagenet``
    (resnet50_layer3 only), ``hf`` (the spec's file from the offline Hugging Face cache) or a
    path (``.safetensors``, a torch state dict, or a folder holding the spec's file). Nothing is
    ever downloaded: a missing file is an error naming it.
    ``overrides``: architecture arguments (e.g. ``depth=2``) for reduced test variants.
    """
    from zoommil.features.encoders import weights as wts

    spec = get_spec(name)
    if overrides:
        spec = spec.with_kwargs(**overrides)
    return wts.build_with_weights(spec, str(weights), seed)
