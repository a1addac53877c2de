"""`zoommil features`: pixel derivation, the feature-file contract, determinism, bad input.

Patches are 32 px here (the encoder is fully convolutional) so that a few hundred patches of a
random-weight ResNet-50 stay fast on a 2-core CPU; the real runs use 256 px.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch
from slide_factory import write_pyramid_tiff

from zoommil.cli import main
from zoommil.errors import SlideError, ZoomMILError
from zoommil.features.encoder import PatchEncoder, build_encoder
from zoommil.features.extraction import (
    StreamStats,
    depths_of,
    encode_plan,
    encode_stream,
    extract_features,
    plan_offsets,
)
from zoommil.io.coords import load_coords, write_coords
from zoommil.io.featurefile import (
    FeatureFileWriter,
    mag_key,
    read_attrs,
    read_feature_file,
    write_feature_file,
)
from zoommil.recipe import PreprocessingRecipe
from zoommil.workflow.failure import read_marker
from zoommil.wsi import pixels as pixels_module
from zoommil.wsi.lattice import Lattice, build_lattice, check_lattice
from zoommil.wsi.lattice import descendant_offsets as quadtree_offsets
from zoommil.wsi.patches import ReaderPool, RegionTask, chunk_tasks, cut_patches, read_task
from zoommil.wsi.pixels import read_region_at
from zoommil.wsi.resolution import resolve_mpp
from zoommil.wsi.slide import open_slide
from zoommil.wsi.tiling import tile_slide

MAGS = [5.0, 10.0, 20.0]
P = 32  # patch size for tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 448x320 slide at 0.5 um/px (20x) with 2 levels, and its coords file (P = 32)."""
    root = tmp_path_factory.mktemp("features")
    slide = write_pyramid_tiff(root / "tiny.tiff", width=448, height=320, levels=2, tile=64)
    with open_slide(slide) as handle:
        dims = handle.dimensions
        mpp, source = resolve_mpp(handle, slide)
    mask = np.zeros((80, 112), bool)  # 2 um/px; tissue in the upper left
    mask[:50, :70] = True
    tissue = {"tissue_method": "gaussian", "tissue_params": {"sigma": 2.0}, "mpp_source": source}
    recipe = PreprocessingRecipe(mags=MAGS, patch_size=P, tissue_params={"sigma": 2.0})
    lattice = build_lattice(slide, dims, mpp, recipe, mask=mask, attrs=tissue)
    assert 0 < len(lattice.xy[0]) < lattice.attrs["n_parents_total"]  # tissue filter at work
    coords = write_coords(root / "tiny.coords.h5", lattice)
    other = write_pyramid_tiff(root / "other.tiff", width=256, height=256, levels=1, tile=64)
    return {"root": root, "slide": slide, "coords": coords, "other": other}


def _run(tiny, out: Path, *extra: str) -> int:
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]), "--out", str(out)]
    return main([*argv, "--weights", "random", "--no-progress", *extra])


@pytest.fixture(scope="module")
def extracted(tiny) -> Path:
    out = tiny["root"] / "out" / "tiny.h5"
    assert _run(tiny, out, "--workers", "1", "--batch-size", "7") == 0
    return out


# --------------------------------------------------------------------------- pixels


def test_cut_patches_follows_the_depth_first_order_or_the_given_grid():
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (P * 4, P * 4, 3), dtype=np.uint8)
    high = cut_patches(region, 2, P)
    assert high.shape == (16, P, P, 3)
    for j, (r, c) in enumerate(quadtree_offsets(2)):
        np.testing.assert_array_equal(high[j], region[r * P : (r + 1) * P, c * P : (c + 1) * P])
    grid = np.array([[3, 0], [0, 3]])
    picked = cut_patches(region, 2, P, grid)
    np.testing.assert_array_equal(picked[0], region[3 * P :, :P])
    np.testing.assert_array_equal(picked[1], region[:P, 3 * P :])
    with pytest.raises(ValueError):
        cut_patches(region[:-1], 2, P)


@pytest.mark.parametrize("mags", [[1.25, 2.5, 10.0], [2.5, 5.0]])
def test_feature_pixels_are_the_pixels_predict_reads_on_a_lossy_pyramid(slides_dir, mags):
    """A patch has the same pixels in `zoommil features` as when `zoommil predict` zooms into
    its parent, on a scanner's lossy JPEG pyramid with a non-integer downsample (8.0128):
    predict reads the lowest magnification whole and each next one a selected patch's
    region at a time, each from the coarsest level fine enough. One fine read area-resized
    down gave other 1.25x and 2.5x pixels here."""
    path = slides_dir / "prostate-he-generic.tiff"
    recipe = PreprocessingRecipe(mags=mags, patch_size=P, no_tissue="all")
    lattice = tile_slide(path, recipe, mpp=1.0)
    depths = depths_of(lattice)
    offsets = plan_offsets(lattice)
    parents = [0, len(lattice.xy[0]) // 2, len(lattice.xy[0]) - 1]
    for i in parents:
        task = RegionTask(str(path), lattice.xy[0][i : i + 1], lattice.sides[0], tuple(depths), P,
                          tuple(o[i : i + 1] for o in offsets))  # fmt: skip
        stacked = read_task(task)
        assert not isinstance(stacked, str), stacked
        # what predict reads: the parent at the lowest magnification ...
        low = read_task(RegionTask(str(path), lattice.xy[0][i : i + 1], lattice.sides[0], (0,), P))
        np.testing.assert_array_equal(stacked[:1], low)
        start = 1
        for k in range(1, len(depths)):
            # ... then each patch of the previous magnification, zoomed one step
            step = depths[k] - depths[k - 1]
            prev_rows = np.arange(i * 4 ** depths[k - 1], (i + 1) * 4 ** depths[k - 1])
            zoomed = read_task(
                RegionTask(
                    str(path), lattice.xy[k - 1][prev_rows], lattice.sides[k - 1], (step,), P
                )
            )
            n = 4 ** depths[k]
            np.testing.assert_array_equal(stacked[start : start + n], zoomed)
            start += n
        assert start == len(stacked)


def read_parent(slide: Path, lattice: Lattice, i: int) -> np.ndarray | str:
    """Parent ``i``'s patches, every magnification stacked lowest first, read in this process
    as a reader worker reads them (or the worker's error string)."""
    task = RegionTask(
        str(slide),
        lattice.xy[0][i : i + 1],
        int(lattice.sides[0]),
        tuple(depths_of(lattice)),
        int(lattice.patch_size),
        tuple(o[i : i + 1] for o in plan_offsets(lattice)),
    )
    return read_task(task)


def test_parent_reads_each_magnification_at_its_place(tiny):
    """The patches of parent i equal a direct read of each patch's own level-0 square."""
    lattice = load_coords(tiny["coords"])
    i = 5
    stack = read_parent(tiny["slide"], lattice, i)
    assert isinstance(stack, np.ndarray)
    assert stack.shape == (21, P, P, 3)
    with open_slide(tiny["slide"]) as slide:
        # the highest magnification is read at level 0 without resizing: exact
        for j in range(16):
            x, y = lattice.xy[2][16 * i + j]
            direct = read_region_at(slide, x, y, lattice.sides[2], P)
            np.testing.assert_array_equal(stack[5 + j], direct)
        # coarser ones are area means of the same pixels: equal up to rounding
        for j in range(4):
            x, y = lattice.xy[1][4 * i + j]
            direct = read_region_at(slide, x, y, lattice.sides[1], P)
            assert np.abs(stack[1 + j].astype(int) - direct.astype(int)).max() <= 1


def test_started_reader_pool_runs_before_the_first_read_and_reads_the_same(tiny):
    """`start()` launches the reader process at once, so its start-up overlaps the caller's
    set-up; the chunks it then reads equal the ones read in this process."""
    lattice = load_coords(tiny["coords"])
    depths = depths_of(lattice)

    def tasks():
        xy, sides, offsets = lattice.xy[0], lattice.sides[0], plan_offsets(lattice)
        return chunk_tasks(str(tiny["slide"]), xy, sides, depths, P, 3, offsets)

    before = {c.pid for c in multiprocessing.active_children()}
    with ReaderPool(1) as pool:
        assert pool.start() is pool
        started = {c.pid for c in multiprocessing.active_children()} - before
        assert len(started) == 1
        spawned = list(pool.imap(tasks()))
        assert {c.pid for c in multiprocessing.active_children()} - before == started
    with ReaderPool(0) as here:
        local = list(here.imap(tasks()))
    assert len(spawned) == len(local) == -(-len(lattice.xy[0]) // 3)
    for a, b in zip(spawned, local, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tasks_start_at_one_batch_and_double_up_to_their_size():
    """A stream's first task is one batch (the encoder starts after a short read), the next
    ones double up to ``regions_per_task``; together they hold every region once, in order,
    each with its own offsets."""
    xy = np.arange(2 * 45).reshape(45, 2)
    offsets = [np.arange(45) * 10]
    tasks = list(chunk_tasks("s.svs", xy, 64, [0], P, 16, offsets, first_regions=4))
    assert [len(t.xy) for t in tasks] == [4, 8, 16, 16, 1]
    np.testing.assert_array_equal(np.concatenate([t.xy for t in tasks]), xy)
    np.testing.assert_array_equal(np.concatenate([t.offsets[0] for t in tasks]), offsets[0])
    deep = chunk_tasks("s.svs", xy[:5], 64, [2], P, 1, first_regions=3)
    assert [len(t.xy) for t in deep] == [1] * 5  # never above regions_per_task
    assert [len(t.xy) for t in chunk_tasks("s.svs", xy, 64, [0], P, 16)] == [16, 16, 13]


def test_stream_stats_split_the_first_chunks_wait_from_the_rest():
    """The first chunk's wait (the readers' start-up) is counted apart, inside the total, so a
    benchmark can tell a once-per-slide start from a reader that cannot keep up. A fake clock
    (binary fractions, so the sums are exact) advances only where the readers or the encoder
    would take time."""
    now = [0.0]

    def slow_chunks():
        now[0] += 0.5  # start-up
        for i in range(3):
            if i:
                now[0] += 0.125
            yield np.full((3, 16, 16, 3), i, dtype=np.uint8)

    class Identity:
        device = torch.device("cpu")

        def encode(self, batch):
            now[0] += 0.0625
            return batch.reshape(len(batch), -1)[:, :1].float()

    stats = StreamStats(clock=lambda: now[0])
    out = np.concatenate(list(encode_stream(Identity(), slow_chunks(), 2, stats)))
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert stats.patches == 9 and stats.batches == 5
    assert (stats.first_read_wait, stats.read_wait, stats.encode) == (0.5, 0.75, 5 * 0.0625)
    assert stats.as_dict() == {
        "reader_wait_seconds": 0.75,
        "first_read_wait_seconds": 0.5,
        "encode_seconds": 0.3125,
        "patches": 9,
        "batches": 5,
    }
    assert StreamStats().clock is time.perf_counter  # the real clock unless one is passed


def test_a_reader_process_that_dies_is_retried_once_then_the_slides_error(tiny):
    """A dead reader (the OOM killer, a crash inside OpenSlide): fresh readers read its chunks
    again, the same pixels; the fresh ones dead too, the read is a `SlideError` naming the
    slide. A `multiprocessing.Pool` waited for the chunk forever. Readers are killed while idle
    here; a death half-way through writing a result back is test_processes.py's wedge test."""
    import os
    import signal
    from multiprocessing.connection import wait as wait_for

    from zoommil.wsi.patches import READER_DIED

    lattice = load_coords(tiny["coords"])
    depths = depths_of(lattice)
    xy, sides, offsets = lattice.xy[0], lattice.sides[0], plan_offsets(lattice)
    chunks = list(chunk_tasks(str(tiny["slide"]), xy, sides, depths, P, 1, offsets))
    spared = {c.pid for c in multiprocessing.active_children()}

    def kill_readers() -> None:
        for child in multiprocessing.active_children():
            if child.pid not in spared:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:  # already dead and reaped by the pool's own thread
                    continue
                wait_for([child.sentinel], 10)  # ended (not reaped: the pool does it)

    def hung(*_):
        raise TimeoutError("the read waited for a dead reader")

    with ReaderPool(0) as here:
        expected = list(here.imap(chunks))
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with ReaderPool(1) as pool:
            assert len(list(pool.imap(chunks))) == len(expected)  # the reader is up, idle
            kill_readers()
            got = list(pool.imap(chunks))  # read again by a fresh reader
            assert len(got) == len(expected)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
            kill_readers()
            fresh = pool._ensure

            def fresh_but_dead():
                made = fresh()
                kill_readers()
                return made

            pool._ensure = fresh_but_dead  # the retry's readers die too
            with pytest.raises(SlideError, match="reader process died") as caught:
                list(pool.imap(chunks))
            assert caught.value.slide == str(tiny["slide"]) and caught.value.reason == READER_DIED
            pool._ensure = fresh
            assert len(list(pool.imap(chunks))) == len(expected)  # the next slide: fresh readers
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- the file


def test_feature_file_contract(tiny, extracted):
    lattice = load_coords(tiny["coords"])
    bag = read_feature_file(extracted)
    assert bag.mags == MAGS
    n0 = len(lattice.xy[0])
    assert n0 > 0
    with h5py.File(extracted, "r") as h5:
        for k, m in enumerate(MAGS):
            key = mag_key(m)
            feats = h5[f"{key}_patches"]
            assert feats.dtype == np.float32
            assert feats.shape == (n0 * 4**k, 1024)
            assert np.isfinite(feats[()]).all()
            np.testing.assert_array_equal(h5[f"{key}_coords"][()], lattice.coords[k])
            assert h5[f"{key}_xy"].dtype == np.int64
            np.testing.assert_array_equal(h5[f"{key}_xy"][()], lattice.xy[k])
        np.testing.assert_array_equal(h5["tissue_fraction"][()], lattice.tissue_fraction)
    # children lie inside their parents (row j's parent is row j // 4)
    for k in (1, 2):
        child, parent = bag.xy[k], bag.xy[k - 1][np.arange(len(bag.xy[k])) // 4]
        assert (child >= parent).all()
        assert (child + lattice.sides[k] <= parent + lattice.sides[k - 1]).all()
    attrs = bag.attrs
    assert attrs["mags"] == MAGS
    assert attrs["patch_size"] == P
    assert attrs["mpp"] == pytest.approx(0.5) and attrs["mpp_source"] == lattice.attrs["mpp_source"]
    assert attrs["encoder"] == "resnet50_layer3"
    assert attrs["weights"] == "random" and attrs["weights_seed"] == 0
    assert "RANDOM" in attrs["weights_note"]
    assert attrs["weights_sha256"] == build_encoder("random", seed=0)[1]["weights_sha256"]
    assert attrs["tissue_method"] == "gaussian"
    assert attrs["tissue_params"] == {"sigma": 2.0}
    assert attrs["tissue_threshold"] == lattice.attrs["tissue_threshold"]
    assert len(attrs["tissue_fraction"]) == n0
    assert attrs["zoommil_version"] and attrs["created"]
    assert attrs["device"] == "cpu" and attrs["precision"] == "fp32"
    from zoommil.environment import cpu_model

    assert attrs["device_name"] == cpu_model()  # was "cpu": which CPU made them (review B)
    assert attrs["batch_size"] == 7
    assert attrs["slide_id"] == "tiny"  # the file stem unless given


def test_slide_id_attr_is_the_given_one(tiny, tmp_path):
    """The workflow passes the sheet's slide_id, which may differ from the file stem."""
    out = tmp_path / "n1x.h5"
    assert _run(tiny, out, "--slide-id", "n1x", "--workers", "0") == 0
    assert read_feature_file(out).attrs["slide_id"] == "n1x"


def test_cached_attributes_follow_a_replaced_file_and_are_the_callers_copy(tmp_path):
    """read_attrs is cached per file version: a file replaced by rename (how every feature
    file is written) is read again, and editing a returned dict changes no later answer."""
    path = tmp_path / "s.h5"
    arrays = ([np.zeros((1, 4))], [np.zeros((1, 2), int)], [np.zeros((1, 2), int)])
    write_feature_file(path, [10.0], *arrays, attrs={"encoder": "a", "tissue_params": {"k": 1}})
    first = read_attrs(path)
    assert (first["encoder"], first["tissue_params"]) == ("a", {"k": 1})
    first["tissue_params"]["k"] = 99
    assert read_attrs(path)["tissue_params"] == {"k": 1}
    write_feature_file(path, [10.0], *arrays, attrs={"encoder": "b", "tissue_params": {"k": 1}})
    assert read_attrs(path)["encoder"] == "b"
    assert read_feature_file(path).attrs["encoder"] == "b"


def test_features_equal_direct_encoding(tiny, extracted):
    """Rows map to the right patches: highest-mag rows equal encoding a direct read."""
    bag = read_feature_file(extracted)
    lattice = load_coords(tiny["coords"])
    encoder = PatchEncoder(build_encoder("random", seed=0)[0])
    rows = [0, 17, len(bag.xy[2]) - 1]
    with open_slide(tiny["slide"]) as slide:
        patches = np.stack(
            [read_region_at(slide, *bag.xy[2][r], lattice.sides[2], P) for r in rows]
        )
    np.testing.assert_allclose(encoder.encode(patches), bag.feats[2][rows], rtol=1e-3, atol=1e-3)


def test_deterministic_across_runs_and_workers(tiny, extracted, tmp_path):
    again = tmp_path / "again.h5"
    assert _run(tiny, again, "--workers", "0", "--batch-size", "7") == 0
    with h5py.File(extracted, "r") as a, h5py.File(again, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert a[key][()].tobytes() == b[key][()].tobytes(), key


def test_zero_parents_give_a_valid_empty_file(tiny, tmp_path, caplog):
    empty = Lattice(
        mags=MAGS,
        patch_size=P,
        sides=[128, 64, 32],
        coords=[np.zeros((0, 2), np.int64)] * 3,
        xy=[np.zeros((0, 2), np.int64)] * 3,
        tissue_fraction=np.zeros(0, np.float32),
        attrs={"mpp": 0.5, "mpp_source": "test", "dimensions": [448, 320]},
    )
    coords = write_coords(tmp_path / "empty.coords.h5", empty)
    out = tmp_path / "empty.h5"
    with caplog.at_level(logging.WARNING):
        result = extract_features(
            tiny["slide"], coords, out, weights="random", progress=False, workers=0
        )
    assert "no tissue" in caplog.text
    assert result.num_patches == [0, 0, 0]
    bag = read_feature_file(out)
    for feats, xy in zip(bag.feats, bag.xy, strict=True):
        assert feats.shape == (0, 1024) and feats.dtype == np.float32
        assert xy.shape == (0, 2)
    assert bag.attrs["empty"] is True
    assert bag.attrs["tissue_method"] == "none"


# --------------------------------------------------------------------------- bad input


def _assert_fails(capsys, argv: list[str], out: Path, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("zoommil features: error")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "temporary file left behind"


def test_missing_slide(tiny, tmp_path, capsys):
    out = tmp_path / "f.h5"
    missing = tmp_path / "missing.svs"
    argv = ["features", str(missing), "--coords", str(tiny["coords"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--weights", "random"], out, str(missing), "not found")


def test_corrupt_slide(tiny, tmp_path, capsys):
    out = tmp_path / "f.h5"
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(tiny["slide"].read_bytes()[:3000])
    argv = ["features", str(bad), "--coords", str(tiny["coords"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--weights", "random"], out, str(bad))


def test_coords_of_another_slide(tiny, tmp_path, capsys):
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["other"]), "--coords", str(tiny["coords"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--weights", "random"], out, str(tiny["other"]), "another")


def test_mpp_disagreeing_with_coords(tiny, tmp_path, capsys):
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--weights", "random", "--mpp", "0.25"], out, "mpp")


def test_missing_coords_and_bad_weights(tiny, tmp_path, capsys):
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--coords", str(tmp_path / "nope.h5")], out, "coords")
    weights = tmp_path / "w.pth"
    weights.write_text("junk")
    _assert_fails(
        capsys,
        [*argv, "--coords", str(tiny["coords"]), "--weights", str(weights)],
        out,
        str(weights),
    )


def test_a_seed_given_with_other_weights_is_said_to_be_ignored(tiny, tmp_path, caplog):
    """`--seed 3 --weights FILE` silently encoded with the file's weights; the seed only
    seeds --weights random, so a changed one with other weights gets a warning."""
    weights = tmp_path / "w.pth"
    weights.write_text("junk")  # fails right after the warning: no encoder is loaded
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]),
            "--out", str(tmp_path / "f.h5"), "--weights", str(weights)]  # fmt: skip
    assert main([*argv, "--seed", "3"]) == 2
    said = "--seed 3 is ignored: it seeds --weights random only, and the weights are"
    assert f"{said} {weights}" in caplog.text
    caplog.clear()
    assert main(argv) == 2
    assert "is ignored" not in caplog.text


def test_non_finite_features_are_refused_naming_the_slide(tiny, tmp_path, capsys, monkeypatch):
    """NaN features passed QC and then stopped training for every method: the writer refuses
    them, one line naming the slide and magnification, or with --no-fail a marker at features."""

    def encode(self, patches):
        out = np.zeros((len(patches), self.dim), np.float32)
        out[0, 3] = np.nan
        return out

    monkeypatch.setattr(PatchEncoder, "encode", encode)
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]), "--out", str(out),
            "--weights", "random", "--workers", "0", "--no-progress"]  # fmt: skip
    _assert_fails(capsys, argv, out, str(tiny["slide"]), "5.0x contain NaN or inf", "first row 0")
    assert main([*argv, "--no-fail"]) == 0
    failure = read_marker(out)
    assert (failure.status, failure.stage) == ("failed", "features")
    assert "5.0x contain NaN or inf" in failure.reason

    with FeatureFileWriter(tmp_path / "w.h5", [5.0, 10.0], [1, 4], 2, slide="s1") as writer:
        rows = np.zeros((4, 2))
        rows[2, 1] = np.inf
        with pytest.raises(SlideError, match=r"^s1: features at 10.0x .* first row 2\)"):
            writer.write(1, 0, rows)
    arrays = ([np.full((1, 2), np.nan)], [np.zeros((1, 2))], [np.zeros((1, 2))])
    with pytest.raises(SlideError, match="x.h5: features at 10.0x contain NaN"):
        write_feature_file(tmp_path / "x.h5", [10.0], *arrays)
    assert not (tmp_path / "x.h5").exists()


def test_features_too_large_for_float32_arithmetic_are_refused_at_the_writer(tmp_path):
    """3e38 is finite, so it passed the NaN/inf check and was refused only when read for
    training; broken weights that give it now fail the slide at `features`."""
    with FeatureFileWriter(tmp_path / "w.h5", [5.0, 10.0], [1, 4], 2, slide="s1") as writer:
        writer.write(0, 0, np.full((1, 2), 1e19))  # below 2**64 = 1.8e19: kept
        rows = np.zeros((4, 2), np.float32)
        rows[3, 0] = -3e38
        message = (
            r"^s1: features at 10.0x are too large to be features \(max \|x\| = 3e\+38 at "
            r"row 3, above 1.8e\+19, .*refused, not written"
        )
        with pytest.raises(SlideError, match=message):
            writer.write(1, 0, rows)


def test_the_writer_refuses_rows_out_of_order(tmp_path):
    """Rows go to the file by position: a block skipped or given twice, buffered or already
    flushed, would put features on another patch's row without an error."""
    with FeatureFileWriter(tmp_path / "w.h5", [5.0], [8], 2) as writer:
        writer.CHUNK_ROWS = 4  # flush every 4 rows: both checks, buffered and written
        writer.write(0, 0, np.zeros((2, 2)))
        for start in (0, 3):  # rows 0-1 are buffered: a repeat and a gap
            with pytest.raises(ValueError, match="rows of 5.0x out of order at"):
                writer.write(0, start, np.ones((2, 2)))
        writer.write(0, 2, np.ones((2, 2)))  # rows 0-3 flushed to the file
        assert writer.next_row[0] == 4
        for start in (2, 6):
            with pytest.raises(ValueError, match=f"rows of 5.0x out of order at {start}"):
                writer.write(0, start, np.ones((2, 2)))
        writer.write(0, 4, np.full((4, 2), 2.0))
        writer.finish([np.zeros((8, 2))], [np.zeros((8, 2))])
    with h5py.File(tmp_path / "w.h5", "r") as h5:
        np.testing.assert_array_equal(h5["5.0x_patches"][:, 0], [0, 0, 1, 1, 2, 2, 2, 2])


def test_validate_plan_rejects_misordered_rows(tiny):
    lattice = load_coords(tiny["coords"])
    check_lattice(lattice)
    xy, coords = lattice.xy[1].copy(), lattice.coords[1].copy()
    lattice.xy[1] = xy[::-1].copy()
    with pytest.raises(ZoomMILError, match="disagree"):
        check_lattice(lattice)
    lattice.coords[1] = coords[::-1].copy()
    with pytest.raises(ZoomMILError, match="depth-first"):
        check_lattice(lattice)
    lattice.xy[1], lattice.coords[1] = xy[:-4], coords[:-4]
    with pytest.raises(ZoomMILError, match="4\\^1 each"):
        check_lattice(lattice)


def test_read_error_is_retried_once_then_names_the_slide(tiny, monkeypatch):
    lattice = load_coords(tiny["coords"])
    real = pixels_module.read_region_at
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise openslide.OpenSlideError("Corrupt JPEG data: premature end of data segment")
        return real(*args, **kwargs)

    monkeypatch.setattr(pixels_module, "read_region_at", flaky)
    assert isinstance(read_parent(tiny["slide"], lattice, 0), np.ndarray)
    # reopened and read again: the failed read, then the parent's six (5x whole, 10x whole,
    # 20x one 10x patch at a time)
    assert calls["n"] == 1 + 6

    def broken(*args, **kwargs):
        raise openslide.OpenSlideError("Corrupt JPEG data")

    monkeypatch.setattr(pixels_module, "read_region_at", broken)
    encoder = PatchEncoder(build_encoder("random")[0])
    with pytest.raises(SlideError, match="Corrupt JPEG") as info:
        encode_plan(tiny["slide"], lattice, encoder, workers=0, progress=False)
    assert str(tiny["slide"]) in str(info.value)


def test_a_failure_marker_of_another_slide_is_named_as_such(tiny, tmp_path, capsys):
    """`features good.svs --coords f.h5`, f.h5 the marker of another slide's `tile --no-fail`,
    said 'good.svs: failed at stage tile: ...', blaming the slide given."""
    from zoommil.workflow.failure import Failure, write_marker

    other = tmp_path / "bad.svs"
    marker = write_marker(
        tmp_path / "bad.h5", Failure("unreadable", "tile", "truncated TIFF", str(other))
    )
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--coords", str(marker), "--out", str(out)]
    needles = (f"{marker} is the failure marker of another slide, {other}", "truncated TIFF")
    _assert_fails(capsys, [*argv, "--weights", "random", "--no-fail"], out, *needles)
    # the marker of this slide (recorded by `tile --no-fail`) is passed on, as before
    same = write_marker(
        tmp_path / "same.h5", Failure("unreadable", "tile", "truncated", str(tiny["slide"]))
    )
    argv = ["features", str(tiny["slide"]), "--coords", str(same), "--out", str(out)]
    assert main([*argv, "--weights", "random", "--no-fail"]) == 0
    assert read_marker(out) == Failure(
        "unreadable", "tile", "truncated", str(tiny["slide"].absolute())
    )


def test_a_marker_names_its_slide(tmp_path, capsys):
    """`tile --no-fail` of an unreadable slide records the slide's absolute path."""
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00" + bytes(60))
    marker = tmp_path / "c.h5"
    assert main(["tile", str(bad), "--mags", "5", "--out", str(marker), "--no-fail"]) == 0
    assert read_marker(marker).slide == str(bad)


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_outside_0_to_2_32_is_one_line(tiny, tmp_path, capsys, seed):
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]), "--out", str(out)]
    _assert_fails(capsys, [*argv, "--weights", "random", "--seed", seed], out, "--seed must be")


def test_no_progress_bar_when_stderr_is_not_a_terminal(tiny, tmp_path, capsys):
    """Without --no-progress the bar's carriage returns went into every job's log."""
    out = tmp_path / "f.h5"
    argv = ["features", str(tiny["slide"]), "--coords", str(tiny["coords"]), "--out", str(out)]
    assert main([*argv, "--weights", "random", "--workers", "0"]) == 0
    assert "\r" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "threads", "cpus", "expected"),
    [
        ("cpu", 8, 16, 1),  # one reader hides reading behind a CPU encoder
        ("cuda", None, 16, 8),  # at most 8
        ("cuda", 1, 3, 2),  # the CPUs this process may use, one kept for the encoder
        ("cuda", 8, 64, 7),  # a job given 8 CPUs on a 64-core node: 7 readers, not 8
        ("cuda", 2, 64, 1),
        ("cuda", None, 1, 1),
    ],
)
def test_gpu_readers_fit_the_cpus_the_job_was_given(monkeypatch, device, threads, cpus, expected):
    """`os.cpu_count()` is the node's: a SLURM job with `--cpus-per-task 8` on a 64-core GPU
    node started 8 readers beside its encoding process."""
    from zoommil.features import extraction

    monkeypatch.setattr(extraction, "usable_cpus", lambda: cpus)
    assert extraction.default_workers(torch.device(device), threads) == expected


def test_usable_cpus_follows_the_affinity_mask() -> None:
    """What `taskset` or a SLURM cpuset leaves this process, not the machine's count."""
    from zoommil.cpus import usable_cpus

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs affinity masks and 2 CPUs")
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_a_dead_reader_under_an_unguarded_script_names_the_main_guard(tmp_path, monkeypatch):
    """Readers are spawned and import the user's script again: without a main guard the
    script's work restarts in each reader, which dies, and the error blamed OpenSlide."""
    import types

    from zoommil.wsi.patches import READER_DIED, reader_died

    script = tmp_path / "notebook_export.py"
    main_module = types.ModuleType("__main__")
    main_module.__file__ = str(script)
    main_module.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    script.write_text("import zoommil\nzoommil.predict_slide(...)\n")
    assert reader_died() == (
        f"{READER_DIED}; or {script} has no 'if __name__ == \"__main__\":' guard around its "
        "work: reader processes are spawned and import it again"
    )
    script.write_text("if __name__ == '__main__':\n    main()\n")
    assert reader_died() == READER_DIED
    main_module.__spec__ = object()  # python -m: the guard is the module's business
    script.write_text("work()\n")
    assert reader_died() == READER_DIED
