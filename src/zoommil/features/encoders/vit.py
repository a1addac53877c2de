"""Vision-transformer patch encoders (UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath,
Phikon-v2) built with timm's ``VisionTransformer`` from the arguments in their `EncoderSpec`.

Why timm's class and explicit arguments (not ``timm.create_model("hf-hub:...")``): building
needs no network and no Hugging Face config, the architecture is reviewable in one place
(registry.py), and the published weight files (timm layout for all but Phikon-v2) load strictly.
Phikon-v2 ships a Hugging Face ``Dinov2Model``; `convert_state` maps its keys onto timm's (the
same maths: fused qkv, LayerScale, final LayerNorm, class token first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.layers import Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.registry import EncoderSpec
from zoommil.features.encoders.weights import check_and_load

_MLP_LAYERS = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked}
_ACT_LAYERS = {"gelu": nn.GELU, "silu": nn.SiLU}


class ViTEncoder(nn.Module):
    """A timm ViT backbone plus the card's output rule.

    ``cls``: the final-norm class token. ``cls+mean``: that class token concatenated with the
    mean of the patch tokens (register tokens excluded), as Virchow/Virchow2 define their
    embedding.
    """

    def __init__(self, backbone: VisionTransformer, output: str) -> None:
        super().__init__()
        if output not in ("cls", "cls+mean"):
            raise ValueError(f"unknown ViT output rule {output!r}")
        self.backbone = backbone
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)  # [B, prefix + patches, C], final norm applied
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        patches = tokens[:, self.backbone.num_prefix_tokens :]
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)


def timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """VisionTransformer arguments of the spec, with layer names turned into classes."""
    kwargs = dict(spec.kwargs)
    if "mlp_layer" in kwargs:
        kwargs["mlp_layer"] = _MLP_LAYERS[kwargs["mlp_layer"]]
    if "act_layer" in kwargs:
        kwargs["act_layer"] = _ACT_LAYERS[kwargs["act_layer"]]
    kwargs.setdefault("global_pool", "token")
    return kwargs


def build(spec: EncoderSpec) -> ViTEncoder:
    """The architecture with timm's initialisation (seeded by the caller)."""
    return ViTEncoder(VisionTransformer(**timm_kwargs(spec)), spec.output)


def imagenet_weights(spec: EncoderSpec) -> tuple[Path, str]:
    raise ZoomMILError(
        f"--weights imagenet is for resnet50_layer3 only; encoder {spec.name} takes "
        "--weights hf (offline Hugging Face cache), PATH or random"
    )


def _dinov2_hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys -> timm ``VisionTransformer`` keys (q, k, v fused)."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")
        if key in simple:
            out[simple[key]] = value
            continue
        if key == "embeddings.mask_token" or not key.startswith("encoder.layer."):
            continue  # mask token: pre-training only
        index, rest = key.removeprefix("encoder.layer.").split(".", 1)
        i = int(index)
        if rest.startswith("attention.attention."):
            proj, kind = rest.removeprefix("attention.attention.").split(".")
            qkv.setdefault((i, kind), {})[proj] = value
        elif rest.startswith(("layer_scale1.lambda1", "layer_scale2.lambda1")):
            out[f"blocks.{i}.ls{rest[11]}.gamma"] = value
        else:
            module, kind = rest.rsplit(".", 1)
            if module not in block:
                out[key] = value  # left unmatched: the strict load names it
                continue
            out[f"blocks.{i}.{block[module]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]]
        )
    return out


def convert_state(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Published files -> backbone keys: timm layout as is, ``backbone.`` prefix (our own
    state dicts) dropped, a timm classifier ``head`` dropped (the encoder's output is the
    token before it, as the ResNet's is the pooled map before ``fc``), Hugging Face Dinov2
    layout (Phikon-v2) converted."""
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")}
    if any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in state):
        state = _dinov2_hf_to_timm(state)
    return state


def load_state(model: ViTEncoder, state: dict, path: Path, spec: EncoderSpec) -> None:
    check_and_load(model.backbone, state, path, spec)
