"""The encoder registry: published architectures, transforms, offline weights and their errors,
FLOPs per patch, one encoder per run, and features + predict end to end with a ViT."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.features.encoder import PatchEncoder
from zoommil.features.encoders import registry
from zoommil.features.encoders.registry import (
    ENCODERS,
    build_registered_encoder,
    encoder_names,
    get_spec,
)
from zoommil.features.encoders.weights import family, sha256_file

REPO = Path(__file__).resolve().parents[1]
VITS = [n for n, s in ENCODERS.items() if s.family == "vit"]


def _patches(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _small(name: str, seed: int = 0, weights: str = "random"):
    """A registered encoder at its published width, one block deep (CI-sized)."""
    overrides = {"depth": 1} if get_spec(name).family == "vit" else {}
    return build_registered_encoder(name, weights=weights, seed=seed, **overrides)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_registry_names_default_and_schema_agree():
    names = encoder_names()
    assert names[0] == "resnet50_layer3"
    assert {"uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath", "phikon-v2"} <= set(names)
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    encoder = schema["properties"]["features"]["properties"]["encoder"]
    assert set(encoder["enum"]) == set(names)
    assert encoder["default"] == "resnet50_layer3"
    assert get_spec("resnet50_layer3_avgpool").name == "resnet50_layer3"  # older files' name
    with pytest.raises(ZoomMILError, match="unknown encoder 'nope'.*uni"):
        get_spec("nope")


def test_the_two_encoder_builders_cannot_be_confused():
    """`features.encoder.build_encoder(weights, ...)` and the registry's builder (name first)
    were both public as `build_encoder`, with opposite argument orders: a positional call
    meant for one silently built the wrong thing with the other. The registry's is now
    `build_registered_encoder`, and both take everything after the first argument by keyword."""
    import zoommil.features.encoders as encoders
    from zoommil.features import encoder

    assert not hasattr(encoders, "build_encoder") and not hasattr(registry, "build_encoder")
    with pytest.raises(TypeError):
        build_registered_encoder("resnet50_layer3", "random")
    with pytest.raises(TypeError):
        encoder.build_encoder("random", 0)


@pytest.mark.parametrize(
    ("name", "dim", "input_size"),
    [
        ("resnet50_layer3", 1024, 256),
        ("uni", 1024, 224),
        ("uni2-h", 1536, 224),
        ("virchow2", 2560, 224),
        ("h-optimus-0", 1536, 224),
        ("prov-gigapath", 1536, 224),
        ("phikon-v2", 1024, 224),
    ],
)
def test_every_encoder_builds_and_gives_its_dimension(name, dim, input_size):
    """Random weights, reduced depth for the ViTs (same class, same width, same output rule)."""
    model, info = _small(name)
    spec = get_spec(name)
    assert (spec.dim, spec.input_size) == (dim, input_size)
    encoder = PatchEncoder(model)
    assert tuple(encoder.preprocess(torch.from_numpy(_patches(1))).shape) == (
        1,
        3,
        input_size,
        input_size,
    )
    feats = encoder.encode(_patches(2))
    assert feats.shape == (2, dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
    assert info["encoder"] == name and info["feature_dim"] == dim
    assert info["encoder_input_size"] == input_size
    assert "RANDOM" in info["weights_note"]
    assert not any(p.requires_grad for p in model.parameters())


# timm's registered architectures with the model cards' / TRIDENT's arguments: our explicit
# specs must build exactly these modules (same parameter names and shapes).
CARD_BUILDS = {
    "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5}),
    "uni2-h": (
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "mlp_layer": timm.layers.SwiGLUPacked,
            "act_layer": torch.nn.SiLU,
            "reg_tokens": 8,
        },
    ),
    "virchow2": (
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "mlp_layer": timm.layers.SwiGLUPacked,
            "act_layer": torch.nn.SiLU,
        },
    ),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5}),
    "prov-gigapath": (
        "vit_giant_patch14_dinov2",
        {
            "img_size": 224,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "mlp_ratio": 5.33334,
        },
    ),
    "phikon-v2": (
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5},
    ),
}


def test_full_models_match_the_cards_and_published_parameter_counts():
    """Whole models on the meta device (no memory, instant): architecture = the card's timm
    build, parameter count = the published one at its stated precision."""
    # timm < 1.0.21 calls .item() on a linspace of drop-path rates while building a ViT,
    # which the meta device refuses (building on the CPU instead would take ~20 GB)
    pytest.importorskip("timm", minversion="1.0.21")
    counts = {}
    for name, spec in ENCODERS.items():
        with torch.device("meta"):
            ours = family(spec).build(spec)
        counts[name] = sum(p.numel() for p in ours.parameters())
        if name in CARD_BUILDS:
            arch, kwargs = CARD_BUILDS[name]
            with torch.device("meta"):
                card = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
            shapes = {k: tuple(v.shape) for k, v in card.state_dict().items()}
            assert {k: tuple(v.shape) for k, v in ours.backbone.state_dict().items()} == shapes
        if spec.published_params:  # equal to the card's figure to its last stated digit
            low, high = spec.published_params_range()
            assert low <= counts[name] <= high, (name, counts[name], spec.published_params)
    assert counts["uni"] == 303_350_784
    assert counts["resnet50_layer3"] == 8_543_296
    assert counts["h-optimus-0"] > 1.1e9 and counts["prov-gigapath"] > 1.1e9


def test_transform_follows_the_card():
    patches = torch.from_numpy(_patches(1))
    x = patches.permute(0, 3, 1, 2).float()
    # paper's ResNet-50: 256 px as is, ImageNet mean/std
    resnet = PatchEncoder(_small("resnet50_layer3")[0])
    mean, std = torch.tensor(get_spec("uni").mean) * 255, torch.tensor(get_spec("uni").std) * 255
    expected = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(resnet.preprocess(patches), expected)
    # Prov-GigaPath: resize to 256 (a no-op here) then centre-crop 224
    giga = PatchEncoder(_small("prov-gigapath")[0])
    torch.testing.assert_close(giga.preprocess(patches), expected[..., 16:240, 16:240])
    # UNI: 256 -> 224 antialiased bilinear, whole field of view kept
    uni = PatchEncoder(_small("uni")[0])
    resized = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    expected = (resized.clamp(0, 255) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(uni.preprocess(patches), expected)
    # H-optimus-0 normalises with its own statistics
    hopt = get_spec("h-optimus-0")
    assert hopt.mean == (0.707223, 0.578729, 0.703617) and hopt.std == (
        0.211883,
        0.230117,
        0.177517,
    )


def test_cls_plus_mean_output_rule_skips_registers():
    model, _ = _small("virchow2")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)
        out = model(x)
    assert tokens.shape[1] == 1 + 4 + 16 * 16  # class token, 4 registers, 256 patch tokens
    torch.testing.assert_close(out[:, :1280], tokens[:, 0])
    torch.testing.assert_close(out[:, 1280:], tokens[:, 5:].mean(1))


# --------------------------------------------------------------------------- weights


def test_safetensors_and_state_dict_round_trip(tmp_path):
    model, info = _small("uni", seed=0)
    file = tmp_path / "uni.safetensors"
    save_file(model.backbone.state_dict(), str(file))
    loaded, loaded_info = _small("uni", seed=1, weights=str(file))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = _patches(2)
    np.testing.assert_array_equal(PatchEncoder(model).encode(x), PatchEncoder(loaded).encode(x))
    assert loaded_info["weights_sha256"] == sha256_file(file)
    assert loaded_info["weights"] == str(file)
    # a torch state dict of the whole module ('backbone.' keys), loaded weights-only
    pt = tmp_path / "uni.pt"
    torch.save(model.state_dict(), pt)
    again, _ = _small("uni", seed=2, weights=str(pt))
    np.testing.assert_array_equal(PatchEncoder(again).encode(x), PatchEncoder(model).encode(x))
    # a folder holding the card's file name
    (tmp_path / "snap").mkdir()
    torch.save(model.backbone.state_dict(), tmp_path / "snap" / "pytorch_model.bin")
    folder, _ = _small("uni", seed=3, weights=str(tmp_path / "snap"))
    np.testing.assert_array_equal(PatchEncoder(folder).encode(x), PatchEncoder(model).encode(x))


@pytest.mark.parametrize(
    ("encoder", "names"),
    [
        ("resnet50_layer3", "model.safetensors, pytorch_model.bin"),
        ("uni", "pytorch_model.bin, model.safetensors"),
    ],
)
def test_a_folder_without_weights_names_the_files_looked_for(tmp_path, encoder, names):
    """A --weights folder without the file said "none of the weight files" (ResNet-50) or
    named only the card's file (UNI: pytorch_model.bin), while model.safetensors and
    pytorch_model.bin are looked for too: it names every file name it tried."""
    from zoommil.features.encoders.weight_files import local_weights_path

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet50.pth").write_bytes(b"x")
    with pytest.raises(ZoomMILError) as error:
        local_weights_path(str(tmp_path / "weights"), get_spec(encoder))
    assert f"folder holds none of {names}, the file names the weights" in str(error.value)
    assert f"of encoder {encoder}" in str(error.value)


def test_checkpoints_as_training_scripts_save_them_load(tmp_path):
    """A whole wrapper saved (`model.` before every key) and timm's classifier head were
    refused: '342 unexpected key(s), e.g. model.blocks...' and 'head.bias, head.weight'."""
    model, _ = _small("uni", seed=0)
    backbone = model.backbone.state_dict()
    x = _patches(2)
    want = PatchEncoder(model).encode(x)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "model": {f"model.{k}": v for k, v in backbone.items()}}, wrapped)
    with_head = tmp_path / "with_head.safetensors"
    save_file({**backbone, "head.weight": torch.zeros(1000, 1024), "head.bias": torch.zeros(1000)},
              str(with_head))  # fmt: skip
    for path in (wrapped, with_head):
        loaded, _ = _small("uni", seed=1, weights=str(path))
        np.testing.assert_array_equal(PatchEncoder(loaded).encode(x), want)
    # a prefix on some keys only is not a wrapper: the strict load names them
    partial = tmp_path / "partial.pt"
    keys = sorted(backbone)
    torch.save({(f"model.{k}" if k == keys[0] else k): v for k, v in backbone.items()}, partial)
    with pytest.raises(ZoomMILError, match=rf"1 unexpected key\(s\), e.g. model.{keys[0]}"):
        _small("uni", weights=str(partial))


def test_wrong_shapes_and_another_encoders_weights_are_one_line_errors(tmp_path):
    uni, _ = _small("uni")
    state = uni.backbone.state_dict()
    state["pos_embed"] = torch.zeros(1, 50, 1024)
    bad = tmp_path / "bad_shape.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ZoomMILError) as excinfo:
        _small("uni", weights=str(bad))
    message = _one_line_error(excinfo)
    assert str(bad) in message and "encoder uni" in message and "pos_embed" in message
    virchow, _ = _small("virchow2")
    other = tmp_path / "virchow2.safetensors"
    save_file(virchow.backbone.state_dict(), str(other))
    with pytest.raises(ZoomMILError) as excinfo:
        _small("uni", weights=str(other))
    message = _one_line_error(excinfo)
    assert str(other) in message and "encoder uni" in message
    with pytest.raises(ZoomMILError) as excinfo:
        _small("resnet50_layer3", weights=str(other))
    assert "encoder resnet50_layer3" in _one_line_error(excinfo)
    with pytest.raises(ZoomMILError) as excinfo:
        _small("uni", weights="imagenet")
    assert "resnet50_layer3 only" in _one_line_error(excinfo)
    with pytest.raises(ZoomMILError, match="not found for encoder uni"):
        _small("uni", weights=str(tmp_path / "missing.safetensors"))


def _fake_hub(root: Path, repo: str, filename: str, state: dict, revision: str = "0123abc") -> Path:
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.save(state, snapshot / filename)
    return snapshot / filename


def test_hf_cache_resolution_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)  # the legacy name wins too
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model, _ = _small("uni", seed=4)
    file = _fake_hub(
        tmp_path / "hf" / "hub", "MahmoodLab/UNI", "pytorch_model.bin", model.backbone.state_dict()
    )
    loaded, info = _small("uni", weights="hf")
    x = _patches(1)
    np.testing.assert_array_equal(PatchEncoder(loaded).encode(x), PatchEncoder(model).encode(x))
    assert info["weights"] == "hf" and info["weights_file"] == str(file)
    assert info["weights_sha256"] == sha256_file(file)
    assert "MahmoodLab/UNI" in info["weights_note"]
    # HF_HUB_CACHE wins over HF_HOME; an empty cache names the repo and the file to place
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ZoomMILError) as excinfo:
        _small("virchow2", weights="hf")
    message = _one_line_error(excinfo)
    assert "paige-ai/Virchow2/model.safetensors" in message and str(tmp_path / "empty") in message
    assert "(licence CC-BY-NC-ND-4.0; gated: accept the licence on huggingface.co first)" in message
    with pytest.raises(ZoomMILError, match="no Hugging Face weights"):
        _small("resnet50_layer3", weights="hf")


def test_a_cache_link_to_a_missing_blob_and_an_empty_file_are_named_as_such(tmp_path, monkeypatch):
    """A cache copied without blobs/ said "weights not in the cache", and a 0-byte weights
    file (an interrupted copy) raised an IndexError traceback (review V)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    file = _fake_hub(tmp_path / "hub", "MahmoodLab/UNI", "pytorch_model.bin", {})
    blob = tmp_path / "hub" / "models--MahmoodLab--UNI" / "blobs" / "d0e1"
    file.unlink()
    file.symlink_to(Path("..") / ".." / "blobs" / "d0e1")  # relative, as the hub links
    with pytest.raises(ZoomMILError) as excinfo:
        _small("uni", weights="hf")
    message = _one_line_error(excinfo)
    assert message.startswith(f"{file}: the Hugging Face cache links uni's weights to a missing")
    assert str(blob) in message and "models--MahmoodLab--UNI whole" in message
    for name in ("empty.bin", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ZoomMILError) as excinfo:
            _small("uni", weights=str(tmp_path / name))
        assert _one_line_error(excinfo) == (
            f"{tmp_path / name}: empty file (0 bytes), not weights for encoder uni: copy it again"
        )


_HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def test_the_weight_file_a_features_job_reads(tmp_path, monkeypatch):
    """Found without torch for the workflow (`zoommil.workflow.weights`): the main snapshot's
    file, the file a folder holds, nothing for keywords or unseen files."""
    from zoommil.features.encoders.weight_files import weights_file

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights_file("uni", "hf") is None  # not in this machine's cache
    file = _fake_hub(tmp_path / "hf" / "hub", "MahmoodLab/UNI", "pytorch_model.bin", {})
    assert weights_file("uni", "hf") == file
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "pytorch_model.bin").write_bytes(b"x")
    assert weights_file("uni", str(tmp_path / "folder")) == tmp_path / "folder/pytorch_model.bin"
    assert weights_file("uni", str(tmp_path / "gone.bin")) is None
    assert weights_file("resnet50_layer3", "imagenet") is None


def test_hf_cache_dir_resolves_as_huggingface_hub(tmp_path, monkeypatch):
    """The legacy HUGGINGFACE_HUB_CACHE (which huggingface_hub still honours, and fills) was
    ignored and `$VARS` were not expanded, so `--weights hf` looked in another folder than the
    one `hf download` filled. Order: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, $HF_HOME/hub,
    ($XDG_CACHE_HOME or ~/.cache)/huggingface/hub, each with ~ and $VARS expanded."""
    import os
    import subprocess
    import sys

    from zoommil.features.encoders.weight_files import hf_cache_dir, resolve_hf_weights

    for name in _HF_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROOT", str(tmp_path))
    assert hf_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    cases = [
        ("XDG_CACHE_HOME", "$ROOT/xdg", tmp_path / "xdg" / "huggingface" / "hub"),
        ("HF_HOME", "~/hf", tmp_path / "home" / "hf" / "hub"),
        ("HUGGINGFACE_HUB_CACHE", "$ROOT/legacy", tmp_path / "legacy"),
        ("HF_HUB_CACHE", "${ROOT}/new", tmp_path / "new"),
    ]
    for name, value, expected in cases:  # each one set wins over those before it
        monkeypatch.setenv(name, value)
        assert hf_cache_dir() == expected, name
    monkeypatch.setenv("HF_HUB_CACHE", "")  # empty: unset
    assert hf_cache_dir() == tmp_path / "legacy"
    # `--weights hf` finds the file `hf download` placed under the legacy variable
    file = _fake_hub(tmp_path / "legacy", "MahmoodLab/UNI", "pytorch_model.bin", {})
    assert resolve_hf_weights(get_spec("uni")) == file
    # the folder huggingface_hub itself resolves, where it is installed
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    for unset in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(unset)
        hub = subprocess.run(
            [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True
        )
        assert Path(hub.stdout.strip()) == hf_cache_dir(), unset


def _timm_to_dinov2_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse mapping, written out independently: timm keys -> HF Dinov2Model keys."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    for i in blocks:
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3)
            out[f"{h}attention.attention.query.{kind}"] = q
            out[f"{h}attention.attention.key.{kind}"] = k
            out[f"{h}attention.attention.value.{kind}"] = v
            out[f"{h}attention.output.dense.{kind}"] = state[f"{b}attn.proj.{kind}"]
            for norm in ("norm1", "norm2"):
                out[f"{h}{norm}.{kind}"] = state[f"{b}{norm}.{kind}"]
            for fc in ("fc1", "fc2"):
                out[f"{h}mlp.{fc}.{kind}"] = state[f"{b}mlp.{fc}.{kind}"]
        out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return {k: v.contiguous() for k, v in out.items()}


def test_phikon_v2_loads_the_hugging_face_dinov2_layout(tmp_path):
    model, _ = _small("phikon-v2", seed=5)
    hf = tmp_path / "model.safetensors"
    save_file(_timm_to_dinov2_hf(model.backbone.state_dict()), str(hf))
    loaded, _ = _small("phikon-v2", seed=6, weights=str(hf))
    x = _patches(2)
    np.testing.assert_array_equal(PatchEncoder(loaded).encode(x), PatchEncoder(model).encode(x))


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize("name", [n for n, s in ENCODERS.items() if s.published_gflops])
def test_flops_per_patch_match_the_published_figures(name):
    """fvcore multiply-adds per patch equal the spec's published figure: 4.3 G for the paper's
    encoder at 256 px (../shared/notes/cpu_throughput.md), 61.6 G for a ViT-L/16 at 224 px
    (timm's GMACs)."""
    from zoommil.efficiency.flops import encoder_flops_per_patch

    assert {n for n, s in ENCODERS.items() if s.published_gflops} >= {"resnet50_layer3", "uni"}
    flops = encoder_flops_per_patch(name)
    assert flops["fvcore"] == pytest.approx(get_spec(name).published_gflops * 1e9, rel=0.05)
    assert flops["torch"] == pytest.approx(flops["fvcore"], rel=0.05)


def test_vit_flops_extrapolated_over_depth_equal_the_whole_count():
    """The affine-in-depth count of a ViT equals counting the whole model (here at depth 3)."""
    from zoommil.efficiency.flops import _count, encoder_flops_per_patch

    spec = get_spec("virchow2").with_kwargs(depth=3, embed_dim=160, num_heads=2)
    registry.ENCODERS["virchow2_tiny"] = spec  # lru-cached by name: a name of its own
    try:
        whole = _count(spec, 224)["fvcore"]
        assert encoder_flops_per_patch("virchow2_tiny")["fvcore"] == pytest.approx(whole, rel=1e-9)
    finally:
        del registry.ENCODERS["virchow2_tiny"]


# --------------------------------------------------------------------------- one encoder per run


def test_feature_files_of_two_encoders_fail_naming_the_file(tmp_path):
    from zoommil.io.featurefile import write_feature_file
    from zoommil.training.data import check_one_encoder

    paths = []
    for name, encoder in (("a", "resnet50_layer3_avgpool"), ("b", "resnet50_layer3"), ("c", "uni")):
        paths.append(
            write_feature_file(
                tmp_path / f"{name}.h5",
                [10.0],
                [np.zeros((1, 1024))],
                [np.zeros((1, 2))],
                [np.zeros((1, 2))],
                {"encoder": encoder},
            )
        )
    assert check_one_encoder(paths[:2]) == "resnet50_layer3"
    with pytest.raises(ZoomMILError) as excinfo:
        check_one_encoder(paths)
    message = _one_line_error(excinfo)
    assert message.startswith(str(paths[2])) and "uni" in message and "resnet50_layer3" in message


def test_feature_files_of_two_precisions_fail_naming_the_file(tmp_path):
    """`--precision auto` is bf16 on some CPUs and fp32 on others: a run must not mix them."""
    from zoommil.training.data import check_one_encoder

    paths = [
        _feature_file(tmp_path / "a.h5", precision="fp32"),
        _feature_file(tmp_path / "b.h5"),  # records no precision
        _feature_file(tmp_path / "c.h5", precision="fp32"),
        _feature_file(tmp_path / "d.h5", precision="bf16"),
    ]
    assert check_one_encoder(paths[:3]) == "resnet50_layer3"  # no precision recorded: not compared
    with pytest.raises(ZoomMILError) as excinfo:
        check_one_encoder(paths)
    message = _one_line_error(excinfo)
    assert message.startswith(f"{paths[3]}: features computed at bf16, but {paths[0]} at fp32")
    assert "one precision" in message


def _feature_file(path, **attrs):
    from zoommil.io.featurefile import write_feature_file

    one = [np.zeros((1, 1024))], [np.zeros((1, 2))], [np.zeros((1, 2))]
    return write_feature_file(path, [10.0], *one, {"encoder": "resnet50_layer3", **attrs})


def test_feature_files_of_two_weights_fail_naming_the_file(tmp_path):
    """One architecture, two sets of weights (random vs ImageNet, say): same dimension, and
    a model trained on both would be meaningless."""
    from zoommil.training.data import check_one_encoder

    a = _feature_file(tmp_path / "a.h5", weights_sha256="a" * 64, precision="fp32")
    b = _feature_file(tmp_path / "b.h5", weights_sha256="b" * 64, precision="fp32")
    assert check_one_encoder([a, a]) == "resnet50_layer3"
    with pytest.raises(ZoomMILError) as excinfo:
        check_one_encoder([a, b])
    message = _one_line_error(excinfo)
    assert message.startswith(f"{b}: features made with other encoder weights (sha256 bbbb")
    assert f"than {a} (aaaa" in message


def test_checkpoint_is_evaluated_only_on_features_like_its_own(tmp_path):
    """`zoommil evaluate` with features of another encoder, weights or precision than the
    checkpoint was trained on fails naming the file, the checkpoint and both values."""
    from zoommil.training.data import check_matches_checkpoint

    recipe = {"encoder": "resnet50_layer3", "weights_sha256": "a" * 64, "precision": "fp32"}
    same = _feature_file(tmp_path / "same.h5", weights_sha256="a" * 64, precision="fp32")
    check_matches_checkpoint(same, recipe, "m.pt")
    check_matches_checkpoint(same, {}, "m.pt")  # a recipe that records nothing: nothing to check
    cases = {
        "bf16.h5": ({"weights_sha256": "a" * 64, "precision": "bf16"}, "precision bf16", "fp32"),
        "w.h5": ({"weights_sha256": "c" * 64, "precision": "fp32"}, "(sha256) " + "c" * 12, "a"),
        "uni.h5": ({"encoder": "uni", "precision": "fp32"}, "encoder uni", "resnet50_layer3"),
    }
    for name, (attrs, got, want) in cases.items():
        path = _feature_file(tmp_path / name, **attrs)
        with pytest.raises(ZoomMILError) as excinfo:
            check_matches_checkpoint(path, recipe, "m.pt")
        message = _one_line_error(excinfo)
        assert message.startswith(f"{path}: features made with ") and got in message, message
        assert f"but m.pt was trained on features made with {want}" in message, message


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def virchow2_depth1(monkeypatch):
    """Virchow2 one block deep, registered under its own name (2560-d, registers, cls+mean)."""
    spec = replace(get_spec("virchow2").with_kwargs(depth=1), name="virchow2_depth1")
    monkeypatch.setitem(registry.ENCODERS, spec.name, spec)
    return spec


def test_features_and_predict_end_to_end_with_a_vit(slides_dir, tmp_path, virchow2_depth1):
    from zoommil.io.featurefile import read_feature_file
    from zoommil.models import build_model
    from zoommil.training.checkpoint import save_checkpoint
    from zoommil.training.data import shared_attrs

    slide = slides_dir / "CMU-1-Small-Region.svs"
    mags = [5.0, 10.0]
    coords, feats = tmp_path / "coords.h5", tmp_path / "features.h5"
    assert main(["tile", str(slide), "--mags", "5", "10", "--out", str(coords)]) == 0
    argv = ["features", str(slide), "--coords", str(coords), "--out", str(feats)]
    argv += [
        "--encoder",
        "virchow2_depth1",
        "--weights",
        "random",
        "--workers",
        "0",
        "--threads",
        "1",
    ]
    assert main([*argv, "--no-progress"]) == 0
    bag = read_feature_file(feats, mags)
    assert bag.feats[0].shape[1] == 2560 and len(bag.feats[1]) == 4 * len(bag.feats[0]) > 0
    attrs = bag.attrs
    assert attrs["encoder"] == "virchow2_depth1" and attrs["feature_dim"] == 2560
    assert attrs["encoder_input_size"] == 224 and attrs["patch_size"] == 256
    assert attrs["precision"] == "fp32" and len(attrs["weights_sha256"]) == 64

    k = 2
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=2560, n_classes=2, mags=mags, k=k).eval()
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": k},
        "classes": ["a", "b"],
        "mags": mags,
        "config_mags": mags,
        "in_dim": 2560,
        "preprocessing": shared_attrs([feats]),
    }
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", model.state_dict(), config)
    out = tmp_path / "pred.json"
    assert main(["predict", str(slide), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["encoder"] == "virchow2_depth1"
    assert result["patches_per_mag"] == {"5.0x": len(bag.feats[0]), "10.0x": 4 * k}
    # zoom inference re-encodes from the slide with the same transform: same answer as the file
    with torch.no_grad():
        details = model.forward_with_details([torch.from_numpy(f)[None] for f in bag.feats])
    probs = torch.softmax(details["logits"], -1)[0].numpy()
    np.testing.assert_allclose([result["probabilities"][c] for c in "ab"], probs, atol=1e-3)


def test_flops_command_counts_the_checkpoints_encoder(tmp_path, capsys):
    """`zoommil flops` takes the encoder from the checkpoint's preprocessing (UNI: 61.6 G per
    patch, not the ResNet's 4.3 G)."""
    from zoommil.io.featurefile import write_feature_file
    from zoommil.models import build_model
    from zoommil.training.checkpoint import save_checkpoint

    (tmp_path / "features").mkdir()
    write_feature_file(
        tmp_path / "features" / "s1.h5",
        [10.0],
        [np.random.default_rng(0).normal(size=(7, 1024))],
        [np.zeros((7, 2))],
        [np.zeros((7, 2))],
        {"encoder": "uni"},
    )
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("slide_id\tlabel\tsplit\ns1\ta\ttest\n")
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {
        "arch": "abmil",
        "classes": ["a", "b"],
        "mags": [10.0],
        "in_dim": 1024,
        "sheet": str(sheet),
        "preprocessing": {"encoder": "uni", "patch_size": 256},
    }
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    out = tmp_path / "flops.json"
    argv = ["flops", "--checkpoint", str(ckpt), "--features-dir", str(tmp_path / "features")]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["encoder"] == "uni" and result["encoder_input_size"] == 224
    assert result["encoder_flops_per_patch"] == pytest.approx(61.6e9, rel=0.01)
    row = result["per_slide"][0]
    assert row["patches_encoded"] == 7
    assert row["encoder_flops"] == pytest.approx(7 * result["encoder_flops_per_patch"])

    # several checkpoints in one process: each output is what its own call writes
    meanmil = build_model("meanmil", in_dim=1024, n_classes=2)
    ckpt2 = save_checkpoint(tmp_path / "m.pt", meanmil.state_dict(), {**config, "arch": "meanmil"})
    outs = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    together = ["flops", "--checkpoint", str(ckpt2), str(ckpt), *argv[3:], "--model", "m", "a"]
    assert main([*together, "--out", *outs]) == 0
    first, second = (json.loads(Path(p).read_text()) for p in outs)
    assert second == {**result, "method": "a"}
    assert first["method"] == "m" and first["arch"] == "meanmil"
    assert first["mean_head_flops"] < result["mean_head_flops"]
    assert main([*together, "--out", outs[0]]) == 2
    assert "2 checkpoint(s) but 1 --out value(s): give one per checkpoint" in (
        capsys.readouterr().err
    )


def test_tables_name_the_encoder():
    import pandas as pd

    from zoommil.reporting.table_notes import table_notes

    qc = pd.DataFrame({"slide_id": ["s1"], "status": ["ok"], "reason": [""]})
    notes = table_notes("camelyon16", "hf", qc, {}, encoder="uni")
    assert notes[0] == "patch encoder: uni (ViT-L/16, 224 px, 1024-d)"
    assert table_notes("demo", "random", qc, {})[0].startswith("patch encoder: resnet50_layer3")
