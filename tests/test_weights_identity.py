"""The features rule's params carry the weight file's sha256 (`zoommil.workflow.weights`):
other weights behind the same keyword or path rerun extraction, the same bytes elsewhere or
out of sight do not."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path

import pytest

from zoommil.errors import ZoomMILError
from zoommil.workflow import weights


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def no_hashing(monkeypatch):
    """Makes any hashing fail: what follows must come from a name or the cache."""

    def refuse(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(weights, "sha256_file", refuse)


def test_keywords_have_no_file_to_hash(tmp_path: Path) -> None:
    assert weights.weights_sha256("resnet50_layer3", "random", tmp_path) == ""
    assert weights.weights_sha256("resnet50_layer3", "imagenet", tmp_path) == ""
    assert not (tmp_path / weights.CACHE).exists()


def test_a_path_is_identified_by_its_content(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "w" / "enc.pt"
    file.parent.mkdir()
    file.write_bytes(b"weights A")
    first = weights.weights_sha256("resnet50_layer3", "w/enc.pt", tmp_path)
    assert first == _sha(b"weights A")
    # the same bytes copied over it (a new mtime) or found at another path: the same answer
    shutil.copy(file, tmp_path / "copy.pt")
    os.replace(tmp_path / "copy.pt", file)
    assert weights.weights_sha256("resnet50_layer3", "w/enc.pt", tmp_path) == first
    shutil.copy(file, tmp_path / "moved.pt")
    assert weights.weights_sha256("resnet50_layer3", str(tmp_path / "moved.pt"), tmp_path) == first
    file.write_bytes(b"weights B")  # other weights in place: another answer
    assert weights.weights_sha256("resnet50_layer3", "w/enc.pt", tmp_path) == _sha(b"weights B")


def test_an_unchanged_file_is_not_hashed_again(tmp_path: Path, monkeypatch) -> None:
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    digest = weights.weights_sha256("resnet50_layer3", str(file), tmp_path)
    monkeypatch.setattr(weights, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == digest


def test_a_hub_blob_is_named_by_its_sha256(tmp_path: Path, monkeypatch, no_hashing) -> None:
    digest = _sha(b"uni")
    repo = tmp_path / "hf" / "hub" / "models--MahmoodLab--UNI"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(b"uni")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "pytorch_model.bin").symlink_to(repo / "blobs" / digest)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights.weights_sha256("uni", "hf", tmp_path) == digest
    # out of sight (a login node without the cache, a cluster job): the last one seen, so
    # that seeing the cache or not never reruns extraction by itself
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert weights.weights_sha256("uni", "hf", tmp_path) == digest
    assert weights.weights_sha256("uni", "hf", tmp_path / "another_workdir") == ""


def test_an_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    (tmp_path / weights.CACHE).parent.mkdir(parents=True)
    (tmp_path / weights.CACHE).write_text("{not json")
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == _sha(b"weights A")


def test_an_unreadable_file_falls_back_to_the_last_answer(tmp_path: Path, monkeypatch) -> None:
    """The workflow must still load (the features job reports the file); no traceback."""
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    first = weights.weights_sha256("resnet50_layer3", str(file), tmp_path)
    file.write_bytes(b"weights B")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "sha256_file", unreadable)
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == first


def _dead_pid() -> int:
    """The pid of a process that has exited (a killed writer's)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_the_cache_write_removes_a_killed_writers_temp_and_leaves_none(tmp_path: Path) -> None:
    """The cache's temporary file was named by pid alone: one a killed Snakemake process
    left stayed for good (and two hosts' processes of one pid shared a name). It is named
    as every output's temporary file, so the next write removes a dead process's."""
    from zoommil.io.atomic import this_host

    dead_pid, cache = _dead_pid(), tmp_path / weights.CACHE
    cache.parent.mkdir(parents=True)
    stale = cache.with_name(f".{cache.name}.tmp-{this_host()}-{dead_pid}-0badc0de.json")
    stale.write_text("{half")
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == _sha(b"weights A")
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]


def test_the_cache_write_removes_the_old_pid_named_temps_of_dead_processes(
    tmp_path: Path,
) -> None:
    """Before the host-pid-token name the cache's temporary file was ``.NAME.PID``, which
    `remove_stale_temps` does not match: one a killed process left stayed for good. A dead
    process's goes at the next write; a live one's (this process's parent) and other names
    stay."""
    dead_pid, cache = _dead_pid(), tmp_path / weights.CACHE
    cache.parent.mkdir(parents=True)
    dead = cache.with_name(f".{cache.name}.{dead_pid}")
    absurd = cache.with_name(f".{cache.name}.{'9' * 25}")  # no process has it (OverflowError)
    live = cache.with_name(f".{cache.name}.{os.getppid()}")
    other = cache.with_name(f".{cache.name}.{dead_pid}.bak")
    for path in (dead, absurd, live, other):
        path.write_text("{half")
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == _sha(b"weights A")
    assert sorted(p.name for p in cache.parent.iterdir()) == sorted(
        [cache.name, live.name, other.name]
    )


def test_a_read_only_file_system_still_loads(tmp_path: Path, monkeypatch) -> None:
    """On a read-only file system even the unlink of the temporary file the refused write
    never made fails (EROFS, not "no such file"): that clean-up raised, and the workflow
    stopped at load with a traceback. The answer comes, without a cache."""
    import errno

    real = {name: getattr(Path, name) for name in ("write_text", "unlink")}

    def refused(name: str):
        def method(self, *args, **kwargs):
            if self.name.startswith(f".{weights.CACHE.name}.tmp-"):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real[name](self, *args, **kwargs)

        return method

    for name in real:
        monkeypatch.setattr(Path, name, refused(name))
    file = tmp_path / "enc.pt"
    file.write_bytes(b"weights A")
    assert weights.weights_sha256("resnet50_layer3", str(file), tmp_path) == _sha(b"weights A")
    assert not (tmp_path / weights.CACHE).exists()


def _torchscript_archive(path: Path) -> Path:
    """A small model saved as `torch.jit.save` saves a lab's whole model."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3)).save(str(path))
    return path


def test_a_torchscript_archive_is_refused_with_the_command_that_saves_its_weights(
    tmp_path: Path,
) -> None:
    """torch refuses an archive under weights_only, and every features job said "not a torch
    file of tensors: unreadable"; the workflow now names it at load, with a command that
    works, and takes the state dict that command writes."""
    import subprocess
    import sys

    import torch

    archive = _torchscript_archive(tmp_path / "lab model.pt")
    with pytest.raises(ZoomMILError) as info:
        weights.check_not_torchscript("resnet50_layer3", str(archive))
    message = str(info.value)
    assert message.startswith(f"{archive}: a TorchScript archive (a whole compiled model), not ")
    assert "resnet50_layer3" in message and "\n" not in message
    command = message.split("(python -c ", 1)[1].split("; loading an archive runs")[0]
    subprocess.run([sys.executable, "-c", *shlex.split(command)], cwd=tmp_path, check=True)
    saved = torch.load(tmp_path / "weights.pth", weights_only=True)
    assert sorted(saved) == ["bias", "weight"]
    weights.check_not_torchscript("resnet50_layer3", str(tmp_path / "weights.pth"))
    for keyword in ("random", "imagenet"):
        weights.check_not_torchscript("resnet50_layer3", keyword)
