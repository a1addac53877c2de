"""The real-size slide generator: what OpenSlide reads back is the mosaic, at the given mpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from zoommil.synth.large import BACKGROUND, LargeSlideSpec, Mosaic, write_large_slide


def _source(h: int = 700, w: int = 900) -> np.ndarray:
    """A tissue-like (dark, textured) source: every crop counts as tissue."""
    rng = np.random.default_rng(1)
    img = rng.integers(60, 190, size=(h, w, 3), dtype=np.uint8)
    img[..., 0] = 170
    return cv2.GaussianBlur(img, (0, 0), 3)


SPEC = LargeSlideSpec(width=4096, height=3072, mpp=0.5, block=512, tile=256, min_level_side=512)


def test_mosaic_levels_blocks_and_background() -> None:
    mosaic = Mosaic(_source(), SPEC)
    assert mosaic.factors == [1, 4]
    assert 0.4 < mosaic.tissue.mean() < 0.9
    # a background block is the flat background colour, a tissue block is not
    r, c = np.argwhere(~mosaic.tissue)[0]
    bg = mosaic.region(0, r * 512, c * 512, 512, 512)
    assert (bg == BACKGROUND).all()
    r, c = np.argwhere(mosaic.tissue)[0]
    tissue = mosaic.region(0, r * 512, c * 512, 512, 512)
    assert tissue.mean() < 200
    # level 1 is the 4x area reduction of level 0 inside a block
    low = mosaic.region(1, r * 128, c * 128, 128, 128).astype(np.float32)
    ref = tissue.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
    assert np.abs(low - ref).mean() < 1.0
    # regions past the edge are background
    edge = mosaic.region(1, 768 - 64, 1024 - 64, 128, 128)
    assert (edge[64:, :] == BACKGROUND).all() and (edge[:, 64:] == BACKGROUND).all()


@pytest.mark.parametrize("compression, tolerance", [("zlib", 0.0), ("jpeg", 6.0)])
def test_written_slide_reads_back(tmp_path, compression: str, tolerance: float) -> None:
    if compression == "jpeg":
        pytest.importorskip("imagecodecs")
    path = tmp_path / "large.tiff"
    info = write_large_slide(path, _source(), SPEC, compression=compression)
    assert info["levels"] == [[4096, 3072], [1024, 768]]
    mosaic = Mosaic(_source(), SPEC)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((4096, 3072), (1024, 768))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        for level, (x, y) in ((0, (1000, 1200)), (1, (300, 200))):
            got = np.asarray(slide.read_region((x * 4**level, y * 4**level), level, (300, 200)))
            ref = mosaic.region(level, y, x, 200, 300).astype(np.float32)
            assert np.abs(got[..., :3].astype(np.float32) - ref).mean() <= tolerance


def test_block_must_divide_the_slide() -> None:
    with pytest.raises(ValueError, match="must divide"):
        Mosaic(_source(), LargeSlideSpec(width=4000, height=3072, mpp=0.5, block=512))


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_large_slide.py"


def _run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_script_finds_the_real_region_from_any_folder(slides_dir: Path, tmp_path: Path) -> None:
    """The default source was relative to the working folder: `benchmarks/gpu.sh` run from
    anywhere but the development layout's root stopped at 'source region not found'."""
    out = tmp_path / "small.tiff"
    proc = _run_script(
        tmp_path, "--out", str(out), "--width", "2048", "--height", "2048", "--compression", "zlib"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.with_suffix(".tiff.json").read_text())["source"].endswith(
        "CMU-1-Small-Region.svs"
    )


def test_a_missing_region_names_the_file_and_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.svs"
    proc = _run_script(tmp_path, "--out", str(tmp_path / "x.tiff"), "--source", str(missing))
    assert proc.returncode == 2  # a usage error, as the other benchmarks and zoommil say it
    assert f"error: {missing}: source region not found; download https://" in proc.stderr
    assert "CMU-1-Small-Region.svs and pass its path with --source" in proc.stderr
    assert not (tmp_path / "x.tiff").exists()
