"""`EncoderPool`: single-threaded encoder processes give the in-process encoder's features,
bit for bit at fp32, in submission order; errors are one line and leave no process behind.

Patches are 32-64 px (the ResNet-50 is fully convolutional) so random-weight encoding stays
fast on a loaded 2-core CPU; the real runs use 256 px.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import h5py
import numpy as np
import pytest
import torch
from slide_factory import KEEP_EVERY_PATCH, write_pyramid_tiff

from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.features.encoder import encode_patches
from zoommil.features.encoder_pool import EncoderPool, EncoderRecipe, cpu_encoder
from zoommil.inference.predict import Predictor, make_encoder, predict_slide
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe

RECIPE = EncoderRecipe(encoder="resnet50_layer3", weights="random", seed=0, precision="fp32")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The in-process reference runs with one torch thread, as each worker does."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    with EncoderPool(RECIPE, processes=2) as running:
        yield running
    assert running.closed


@pytest.fixture(scope="module")
def reference():
    return RECIPE.build()


def _batches(sizes: list[int], side: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8) for n in sizes]


def _encoder_children() -> set[multiprocessing.Process]:
    """Encoder processes alive now (the module's shared pool's included)."""
    return {p for p in multiprocessing.active_children() if p.name.startswith("zoommil-encoder")}


def _new_children(before: set[multiprocessing.Process]) -> set[multiprocessing.Process]:
    return _encoder_children() - before


def test_pool_features_equal_in_process_features_bitwise(pool, reference, one_thread):
    batches = _batches([4, 4, 4], seed=1)
    got = list(pool.imap(batches))
    assert pool.dim == 1024 and pool.precision == "fp32"
    for batch, out in zip(batches, got, strict=True):
        assert out.dtype == np.float32 and out.shape == (4, 1024)
        assert out.tobytes() == reference.encode(batch).tobytes()


def test_order_is_kept_with_uneven_batches(pool, reference, one_thread):
    """A big batch first, then small ones: workers finish out of order, results do not."""
    sizes = [9, 1, 2, 1, 5, 3, 1]
    batches = _batches(sizes, seed=2)
    got = list(pool.imap(iter(batches)))  # a one-shot iterator, as encode_stream passes
    assert [len(out) for out in got] == sizes
    for batch, out in zip(batches, got, strict=True):
        assert out.tobytes() == reference.encode(batch).tobytes()
    patches = np.concatenate(batches)  # 22 patches: 5 batches of 4, then 2
    alone = encode_patches(reference, patches, batch_size=4)
    assert pool.encode(patches, batch_size=4).tobytes() == alone.tobytes()


def test_this_process_encodes_the_batches_the_workers_have_no_room_for(reference, one_thread):
    """With ``local``, one worker takes 2 batches (it is still starting), this process encodes
    the next ones itself; the features are the same, bit for bit, and in order."""
    sizes = [4, 4, 4, 3, 4, 1, 4, 2]
    batches = _batches(sizes, seed=6)
    before = _encoder_children()
    with EncoderPool(RECIPE, processes=1, local=reference) as mixed:
        assert len(_new_children(before)) == 1
        got = list(mixed.imap(iter(batches)))
        assert mixed.worker_batches >= 2 and mixed.local_batches >= 1
        assert mixed.worker_batches + mixed.local_batches == len(sizes)
    assert [len(out) for out in got] == sizes
    for batch, out in zip(batches, got, strict=True):
        assert out.tobytes() == reference.encode(batch).tobytes()
    assert not _new_children(before)


def test_cpu_encoder_with_n_threads_starts_n_minus_1_processes(reference, one_thread):
    before = _encoder_children()
    with cpu_encoder(reference, RECIPE, threads=3) as runner:
        assert isinstance(runner, EncoderPool) and runner.processes == 2
        assert len(_new_children(before)) == 2
    assert not _new_children(before)
    with cpu_encoder(reference, RECIPE, threads=1) as runner:
        assert runner is reference and not _new_children(before)


def test_an_abandoned_call_does_not_leak_into_the_next(pool, reference, one_thread):
    first = _batches([2] * 6, seed=3)
    for _ in pool.imap(first):
        break  # results of the other batches arrive later and must be dropped
    second = _batches([3, 2], seed=4)
    got = list(pool.imap(second))
    for batch, out in zip(second, got, strict=True):
        assert out.tobytes() == reference.encode(batch).tobytes()


def test_zoom_predict_through_the_pool_matches_in_process(pool, tmp_path, one_thread):
    mags = [5.0, 10.0]
    slide = write_pyramid_tiff(tmp_path / "small.tiff", width=768, height=512)
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2).eval()
    recipe = PreprocessingRecipe(
        mags=mags, patch_size=64, weights="random", tissue_threshold=KEEP_EVERY_PATCH
    )
    predictor = Predictor(model=model, arch="zoommil", classes=["a", "b"], recipe=recipe)
    encoder, _ = make_encoder(predictor)
    alone = predict_slide(predictor, slide, encoder, batch_size=3)
    pooled = predict_slide(predictor, slide, pool, batch_size=3)
    assert pooled["patches_per_mag"] == alone["patches_per_mag"]
    assert pooled["selected"] == alone["selected"]
    assert pooled["attention"] == alone["attention"]
    assert pooled["probabilities"] == alone["probabilities"]


def test_a_worker_error_is_one_line_and_stops_the_pool():
    before = _encoder_children()
    with EncoderPool(RECIPE, processes=1) as broken:
        with pytest.raises(ZoomMILError, match=r"encoder process: patches must be uint8") as info:
            list(broken.imap([np.zeros((2, 32, 32, 3), dtype=np.float32)]))
        assert "\n" not in str(info.value)
        assert broken.closed and not _new_children(before)
        with pytest.raises(ZoomMILError, match="closed"):
            list(broken.imap(_batches([1])))


def test_an_encoder_that_cannot_be_built_is_one_line(tmp_path):
    missing = tmp_path / "missing.safetensors"
    recipe = EncoderRecipe(weights=str(missing))
    before = _encoder_children()
    with EncoderPool(recipe, processes=1) as broken:
        with pytest.raises(ZoomMILError, match="cannot build encoder resnet50_layer3") as info:
            broken.encode(_batches([2])[0])
    assert "\n" not in str(info.value) and "missing.safetensors" in str(info.value)
    assert not _new_children(before)


def test_interrupt_terminates_the_workers():
    """Ctrl-C in the parent (a KeyboardInterrupt while batches are in flight) leaves no
    encoder process behind: the context manager terminates them."""
    before = _encoder_children()
    with pytest.raises(KeyboardInterrupt):
        with EncoderPool(RECIPE, processes=2) as running:
            for _ in running.imap(_batches([2] * 8, seed=5)):
                raise KeyboardInterrupt
    assert running.closed and not _new_children(before)


_KILLED_MID_BATCH = """
import os, signal, sys, threading, time
import numpy as np
from zoommil.features.encoder_pool import EncoderPool, EncoderRecipe
if __name__ == "__main__":
    pool = EncoderPool(EncoderRecipe("resnet50_layer3", "random", 0, "fp32"), processes=1)
    print(pool._workers[0].pid, flush=True)
    big = np.zeros((256, 256, 256, 3), np.uint8)  # 48 MB: many pipe writes to the worker
    threading.Thread(target=lambda: list(pool.imap([big])), daemon=True).start()
    time.sleep(float(sys.argv[1]))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("delay", [0.2, 4.0])
def test_a_worker_exits_when_its_parent_is_killed_mid_batch(tmp_path, delay):
    """A parent killed outright (SIGKILL, the OOM killer) while it sends a batch, before or
    after the worker built its encoder: the worker, blocked reading the half-sent batch (or
    writing a result nobody reads), used to run on for good with its encoder's memory."""
    import subprocess
    import sys
    import time

    script = tmp_path / "killed.py"
    script.write_text(_KILLED_MID_BATCH)
    out = tmp_path / "out.txt"
    with out.open("w") as handle:  # files, not pipes: an orphan would hold a pipe open
        code = subprocess.run([sys.executable, str(script), str(delay)], stdout=handle,
                              stderr=subprocess.STDOUT, timeout=120).returncode  # fmt: skip
    assert code == -9, out.read_text()
    worker = int(out.read_text().split()[0])
    deadline = time.monotonic() + 15
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running(worker):
        os.kill(worker, 9)
        pytest.fail(f"encoder worker {worker} outlived its killed parent")


def test_bad_pool_arguments_are_user_errors():
    with pytest.raises(ZoomMILError, match="processes must be >= 1"):
        EncoderPool(RECIPE, processes=0)
    with pytest.raises(ZoomMILError, match="unknown precision"):
        EncoderPool(EncoderRecipe(precision="fp8"), processes=1)


def test_features_cli_threads_2_equals_threads_1(slides_dir, tmp_path):
    """The real slide through `zoommil tile` and `zoommil features`: two encoder processes
    write the same feature file (every dataset, bit for bit) as one thread in one process."""
    slide = slides_dir / "CMU-1-Small-Region.svs"
    coords = tmp_path / "coords.h5"
    before = _encoder_children()
    assert main(["tile", str(slide), "--mags", "2.5", "5", "--out", str(coords)]) == 0
    outs = {}
    for threads in ("1", "2"):
        outs[threads] = tmp_path / f"threads{threads}.h5"
        argv = ["features", str(slide), "--coords", str(coords), "--out", str(outs[threads])]
        argv += ["--weights", "random", "--threads", threads, "--batch-size", "3"]
        assert main([*argv, "--no-progress"]) == 0
    with h5py.File(outs["1"], "r") as one, h5py.File(outs["2"], "r") as two:
        assert sorted(one.keys()) == sorted(two.keys())
        assert len(one["2.5x_patches"]) > 0 and len(one["5.0x_patches"]) > 0
        for key in one.keys():
            assert one[key][()].tobytes() == two[key][()].tobytes(), key
        assert one.attrs["encoder_processes"] == 1 and two.attrs["encoder_processes"] == 2
        assert two.attrs["threads"] == 2
    assert not _new_children(before)


def test_a_worker_leaves_the_weights_warning_to_the_parent(capfd):
    """The parent builds the same encoder and warns; each worker repeated the warning as a bare
    line through logging's last resort."""
    with EncoderPool(RECIPE, processes=1) as one:
        assert len(list(one.imap(_batches([2])))) == 1
    assert "RANDOM weights" not in capfd.readouterr().err
