"""The ResNet-50 layer3 encoder: shape, weights loading and its errors, encode_patches."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet50

from zoommil.device import resolve_device
from zoommil.errors import ZoomMILError
from zoommil.features.encoder import PatchEncoder, build_encoder, encode_patches
from zoommil.features.encoders.registry import DEFAULT_ENCODER, IMAGENET_MEAN, IMAGENET_STD
from zoommil.features.encoders.weight_files import (
    IMAGENET_FILE,
    IMAGENET_URL,
    imagenet_cache_path,
)
from zoommil.features.encoders.weights import sha256_file


@pytest.fixture(scope="module")
def random_encoder():
    return build_encoder("random", seed=0)


def _patches(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_output_shape_dtype(random_encoder):
    model, info = random_encoder
    feats = PatchEncoder(model).encode(_patches(2, size=256))
    assert feats.shape == (2, 1024)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert not model.training
    assert info["encoder"] == DEFAULT_ENCODER


def test_matches_torchvision_resnet50_truncated(random_encoder):
    """Same as torchvision's resnet50 run by hand to layer3 + mean pool, after ImageNet norm."""
    model, _ = random_encoder
    reference = resnet50(weights=None)
    state = {k: v for k, v in model.state_dict().items()}
    reference.load_state_dict(state, strict=False)
    reference.eval()
    x = _patches(2)
    with torch.inference_mode():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        t = (t - mean) / std
        r = reference
        h = r.maxpool(r.relu(r.bn1(r.conv1(t))))
        h = r.layer3(r.layer2(r.layer1(h)))
        expected = h.mean(dim=(2, 3)).numpy()
    got = PatchEncoder(model).encode(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_random_is_seeded_and_labelled(random_encoder):
    model0, info0 = random_encoder
    model0b, info0b = build_encoder("random", seed=0)
    _, info1 = build_encoder("random", seed=1)
    assert info0["weights_sha256"] == info0b["weights_sha256"]
    assert info0["weights_sha256"] != info1["weights_sha256"]
    for a, b in zip(model0.state_dict().values(), model0b.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert info0["weights"] == "random" and info0["weights_seed"] == 0
    assert "random" in info0["weights_note"].lower()
    # the global RNG is not disturbed by building an encoder
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    build_encoder("random", seed=5)
    assert torch.equal(torch.rand(3), a)


def test_encode_patches_batches_equal_one_batch(random_encoder):
    model, _ = random_encoder
    x = _patches(5, seed=1)
    whole = encode_patches(model, x, batch_size=5)
    split = encode_patches(PatchEncoder(model), x, batch_size=2)
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-4)
    assert encode_patches(model, x[:0]).shape == (0, 1024)


def test_encode_rejects_float_input(random_encoder):
    with pytest.raises(ZoomMILError, match="uint8"):
        PatchEncoder(random_encoder[0]).encode(np.zeros((1, 8, 8, 3), np.float32))


def test_bf16_close_to_fp32(random_encoder):
    model, _ = random_encoder
    x = _patches(2, seed=2)
    f32 = PatchEncoder(model).encode(x)
    bf16 = PatchEncoder(model, precision="bf16").encode(x)
    assert bf16.dtype == np.float32
    cos = (f32 * bf16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert (cos > 0.99).all()
    with pytest.raises(ZoomMILError, match="precision"):
        PatchEncoder(model, precision="fp8")


def test_frozen_cpu_encoder_matches_eager(random_encoder):
    """The fp32 CPU default runs a TorchScript-frozen copy (BN folded): same features as the
    eager module to float rounding, at any batch size, and the same twice in a row."""
    model, _ = random_encoder
    frozen, eager = PatchEncoder(model), PatchEncoder(model, frozen=False)
    assert frozen.frozen and isinstance(frozen.model, torch.jit.ScriptModule)
    assert not eager.frozen and eager.model is model
    for n in (1, 3):
        x = _patches(n, seed=n, size=256)
        got = frozen.encode(x)
        np.testing.assert_allclose(got, eager.encode(x), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(frozen.encode(x), got)
    # bf16 keeps its autocast path on the eager module
    assert not PatchEncoder(model, precision="bf16").frozen


def test_freeze_falls_back_to_eager():
    """A network that cannot be traced runs eagerly instead of failing."""
    from zoommil.features.frozen import freeze_for_cpu

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no tracing here")

    module = Untraceable()
    assert freeze_for_cpu(module, 32) is module


def _full_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return resnet50(weights=None).state_dict()


def test_path_full_and_truncated_state_dict(tmp_path):
    state = _full_state(7)
    full = tmp_path / "full.pth"
    torch.save(state, full)
    model, info = build_encoder(full)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert info["weights"] == str(full)
    assert info["weights_sha256"] == sha256_file(full)
    trunc = tmp_path / "trunc.pt"
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items()}}, trunc)
    model2, _ = build_encoder(trunc)
    x = _patches(1)
    np.testing.assert_array_equal(PatchEncoder(model).encode(x), PatchEncoder(model2).encode(x))


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_weights_with_pickled_code_are_refused_without_unsafe_advice(tmp_path, capsys):
    """torch's refusal advised re-running torch.load with weights_only=False (running the
    file's code), and the message passed it on; it now says what is accepted instead."""
    path = tmp_path / "evil.pth"
    torch.save({**_full_state(0), "extra": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(ZoomMILError) as info:
        build_encoder(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused: ") and ".safetensors file" in message
    assert "(Unsupported global: GLOBAL " in message and "; loading it could run code)" in message
    assert "safe_globals" not in message and "trust" not in message
    assert "state dict of tensors" in message
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message
    assert "this would run code" not in capsys.readouterr().out


def test_path_errors(tmp_path):
    with pytest.raises(ZoomMILError, match="not found"):
        build_encoder(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ZoomMILError, match="cannot load weights") as info:
        build_encoder(bad)
    assert "(not a torch file of tensors: Unsupported operand" in str(info.value)
    assert "weights_only" not in str(info.value) and ".safetensors file" in str(info.value)
    text = tmp_path / "text.pt"
    text.write_text("hello world" * 10)  # torch: KeyError('104'), the first byte as an opcode
    with pytest.raises(ZoomMILError) as info:
        build_encoder(text)
    assert "as a state dict (not a torch file); weights are accepted as" in str(info.value)
    partial = tmp_path / "partial.pth"
    state = _full_state(0)
    del state["layer3.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    with pytest.raises(ZoomMILError, match="missing key.*layer3.0.conv1.weight"):
        build_encoder(partial)
    shape = tmp_path / "shape.pth"
    state = _full_state(0)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, shape)
    with pytest.raises(ZoomMILError, match="shape mismatch.*conv1.weight"):
        build_encoder(shape)


def test_imagenet_from_local_cache(tmp_path, monkeypatch):
    """The real imagenet code path, with a locally saved state dict in a temporary TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert imagenet_cache_path() == tmp_path / "hub" / "checkpoints" / IMAGENET_FILE
    imagenet_cache_path().parent.mkdir(parents=True)
    state = _full_state(3)
    torch.save(state, imagenet_cache_path())
    model, info = build_encoder("imagenet")
    assert info["weights"] == "imagenet"
    assert info["weights_sha256"] == sha256_file(imagenet_cache_path())
    assert torch.equal(model.state_dict()["layer3.5.bn3.weight"], state["layer3.5.bn3.weight"])


def test_imagenet_missing_names_the_file_and_is_never_downloaded(tmp_path, monkeypatch):
    """Weights are never fetched at run time: a download on a node without internet waited
    for the network, and HF_HUB_OFFLINE did not stop it (review V)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(ZoomMILError) as info:
        build_encoder("imagenet")
    message = str(info.value)
    path = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert f"curl -L --create-dirs -o {path} {IMAGENET_URL}" in message
    assert message.endswith(
        "--weights PATH (in the workflow: features.weights), or --weights random (demo only)"
    )
    assert not path.parent.exists()  # nothing written into the cache either


def test_the_workflow_finds_the_imagenet_file_where_torch_does(tmp_path, monkeypatch):
    """The workflow looks for cached weights when it loads, without torch, and warns where
    they are not on that machine: each features job failed only after every slide's tiling
    (review G). Its path must be torch's own under every setting of the variables."""
    from zoommil.features.encoders import weight_files

    for torch_home, xdg in ((str(tmp_path / "t"), None), (None, str(tmp_path / "x")), (None, None)):
        for name, value in (("TORCH_HOME", torch_home), ("XDG_CACHE_HOME", xdg)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        expected = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE  # torch's own
        assert imagenet_cache_path() == expected
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    unseen = weight_files.unseen_weights("resnet50_layer3", "imagenet")
    assert unseen == f"ImageNet weights not found at {imagenet_cache_path()}"
    imagenet_cache_path().parent.mkdir(parents=True)
    imagenet_cache_path().write_bytes(b"x")
    assert weight_files.unseen_weights("resnet50_layer3", "imagenet") is None
    assert weight_files.unseen_weights("resnet50_layer3", "random") is None
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert "weights not in the offline Hugging Face cache" in weight_files.unseen_weights(
        "uni", "hf"
    )


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ZoomMILError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ZoomMILError, match="no CUDA"):
            resolve_device("cuda")


def test_a_gpu_torch_cannot_use_is_said(monkeypatch, caplog):
    """A conda env built on a login node gets a CPU build of torch: on the GPU node,
    `--device auto` ran every job on the CPU without a word."""
    from zoommil import device as device_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.WARNING, logger="zoommil.device"):
        assert resolve_device("auto").type == "cpu"
    assert "--device auto runs on the CPU: the node has an NVIDIA GPU but this torch" in caplog.text
    assert "is a CPU build" in caplog.text
    with pytest.raises(ZoomMILError, match="no CUDA device is available: the node has an NVIDIA"):
        resolve_device("cuda")
    monkeypatch.setattr(device_module, "nvidia_gpu_present", lambda: False)
    caplog.clear()
    assert resolve_device("auto").type == "cpu" and caplog.text == ""  # no GPU: nothing to say


@pytest.fixture
def tf32_flags():
    """TF32 on, as torch starts on a GPU (cuDNN convolutions), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("device", ["cuda", torch.device("cuda:0")])
def test_a_cuda_device_computes_fp32_without_tf32(monkeypatch, tf32_flags, device):
    """cuDNN's TF32 default gave GPU 'fp32' features ~7e-3 off CPU fp32 under the fp32 label,
    mixed unnoticed with CPU-made files; every path to a CUDA device goes through here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    resolve_device(device)
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


def test_the_cpu_leaves_the_gpu_switches_alone(tf32_flags):
    resolve_device("cpu")
    assert torch.backends.cudnn.allow_tf32


def test_a_gpu_index_past_the_last_gpu_is_a_one_line_error(monkeypatch, tf32_flags):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ZoomMILError, match=r"'cuda:3' requested but only 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16")])
def test_auto_precision_on_a_gpu_is_bf16_only_where_the_hardware_has_it(
    monkeypatch, capability, expected
):
    """A T4/V100 (7.x) emulates bf16, which torch's `is_bf16_supported` counts as support:
    `auto` must give fp32 there; and the GPU asked about is the one named, not the current."""
    from zoommil.features.encoder import resolve_precision

    asked = []

    def capability_of(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda:1")) == expected
    assert asked == [torch.device("cuda:1")]


def test_a_relative_weights_path_records_the_file_absolute(tmp_path, monkeypatch):
    """``weights`` stays as given (a moved project's relative path still works), and
    ``weights_file`` is absolute: `zoommil predict` and `profile` fall back to it from another
    folder (`Predictor.from_checkpoint`)."""
    torch.save(_full_state(3), tmp_path / "r50.pt")
    monkeypatch.chdir(tmp_path)
    _, info = build_encoder("r50.pt")
    assert info["weights"] == "r50.pt"
    assert info["weights_file"] == str(tmp_path / "r50.pt")
