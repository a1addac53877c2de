"""The aligned multi-magnification lattice and `zoommil tile` (zoommil.wsi.lattice)."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from zoommil.cli import main
from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.coords import load_coords, write_coords
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.lattice import (
    build_lattice,
    check_lattice,
    check_native_resolution,
    children_order,
    depth_first_problem,
    descendant_offsets,
    descendant_rows,
    descendants,
    parent_grid,
    patch_side_level0,
    tissue_fractions,
    validate_mags,
)
from zoommil.wsi.pixels import read_region_at
from zoommil.wsi.slide import open_slide
from zoommil.wsi.tiling import tile_slide


def reference_descendants(r: int, c: int, depth: int) -> list[tuple[int, int]]:
    """Recursive quadtree walk, written independently of the vectorised version."""
    if depth == 0:
        return [(r, c)]
    out = []
    for rr, cc in [(2 * r, 2 * c), (2 * r + 1, 2 * c), (2 * r, 2 * c + 1), (2 * r + 1, 2 * c + 1)]:
        out += reference_descendants(rr, cc, depth - 1)
    return out


def test_validate_mags():
    assert validate_mags([10, 1.25, 2.5]) == [1.25, 2.5, 10.0]
    assert validate_mags([5]) == [5.0]
    with pytest.raises(ZoomMILError, match=r"5x and 15x are not power-of-two"):
        validate_mags([5, 15])
    with pytest.raises(ZoomMILError, match="distinct"):
        validate_mags([5, 5])
    with pytest.raises(ZoomMILError, match="positive"):
        validate_mags([0, 5])


def test_patch_side_level0():
    assert patch_side_level0(0.499, 20, 256) == 257
    assert patch_side_level0(0.25, 10, 256) == 1024
    assert patch_side_level0(0.5, 20, 224) == 224


def test_children_order_one_step():
    got = children_order(np.array([[3, 5]]))
    assert got.tolist() == [[6, 10], [7, 10], [6, 11], [7, 11]]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_descendants_depth_first(depth):
    parents = np.array([[0, 0], [2, 1], [1, 3]])
    got = descendants(parents, depth)
    assert len(got) == len(parents) * 4**depth
    expected = [rc for r, c in parents for rc in reference_descendants(int(r), int(c), depth)]
    assert [tuple(x) for x in got.tolist()] == expected


def test_parent_grid_covers_slide_and_nothing_outside():
    grid = parent_grid((1000, 700), 256)
    assert grid.shape == (3 * 4, 2)
    assert grid[:, 0].max() == 2 and grid[:, 1].max() == 3
    # every parent starts inside the slide; the last column/row stick out
    assert (grid[:, 1] * 256 < 1000).all() and (grid[:, 0] * 256 < 700).all()


def test_tissue_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((60, 80)) > 0.6
    dims = (800, 600)  # mask pixel = 10 level-0 px
    rc = parent_grid(dims, 160)
    got = tissue_fractions(mask, dims, rc, 160)
    for (r, c), f in zip(rc, got, strict=True):
        block = mask[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16]
        assert f == pytest.approx(block.sum() / 256.0)  # outside the mask counts as background


def lattice_for(mags, dims=(5000, 3000), mpp=0.5, mask=None, attrs=None, **recipe):
    recipe.setdefault("no_tissue", "all")
    recipe = PreprocessingRecipe(mags=mags, patch_size=256, **recipe)
    return build_lattice("slide.svs", dims, mpp, recipe, mask=mask, attrs=attrs)


def tiling(mags, **recipe):
    return PreprocessingRecipe(mags=mags, **recipe)


@pytest.mark.parametrize("mags", [[2.5, 5, 10], [1.25, 2.5, 10], [5, 20], [10]])
def test_lattice_alignment_and_order(mags):
    lat = lattice_for(mags)
    assert lat.sides[-1] == 256 * (10 / mags[-1]) / 0.5
    for i in range(1, len(mags)):
        d = int(np.log2(mags[i] / mags[i - 1]))
        assert lat.sides[i] * 2**d == lat.sides[i - 1]
        assert len(lat.coords[i]) == 4**d * len(lat.coords[i - 1])
        assert lat.children_per_parent(i) == 4**d
        parent_xy = lat.xy[i - 1]
        child_xy = lat.xy[i].reshape(len(parent_xy), 4**d, 2)
        side_p, side_c = lat.sides[i - 1], lat.sides[i]
        # inside the parent
        assert (child_xy >= parent_xy[:, None]).all()
        assert (child_xy + side_c <= parent_xy[:, None] + side_p).all()
        # children tile the parent exactly: all 2^d x 2^d offsets, each once
        offsets = (child_xy - parent_xy[:, None]) // side_c
        assert ((child_xy - parent_xy[:, None]) % side_c == 0).all()
        for row in offsets:
            assert sorted(map(tuple, row.tolist())) == [
                (a, b) for a in range(2**d) for b in range(2**d)
            ]
        # DFS order against the recursive reference
        for j, (r, c) in enumerate(lat.coords[i - 1][:5]):
            block = lat.coords[i][j * 4**d : (j + 1) * 4**d]
            assert [tuple(x) for x in block.tolist()] == reference_descendants(int(r), int(c), d)
    for rc, xy, side in zip(lat.coords, lat.xy, lat.sides, strict=True):
        np.testing.assert_array_equal(xy, rc[:, ::-1] * side)


@pytest.mark.parametrize("subset", [[10], [2.5, 10], [1.25, 10]])
def test_restricting_a_lattice_keeps_its_rows_and_stays_a_lattice(subset):
    """A model's magnifications out of the feature file's lattice: the same rows, still
    depth-first under the new parents, each new parent with its old parent's tissue fraction."""
    rng = np.random.default_rng(1)
    lat = lattice_for([1.25, 2.5, 10], dims=(20000, 16000), mask=rng.random((160, 200)) > 0.5)
    lat.tissue_fraction = rng.random(len(lat.xy[0])).astype(np.float32)  # distinct per parent
    sub = lat.restricted_to(subset)
    check_lattice(sub, "restricted")
    assert sub.mags == [float(m) for m in subset]
    for m, xy, side in zip(sub.mags, sub.xy, sub.sides, strict=True):
        k = lat.mags.index(m)
        np.testing.assert_array_equal(xy, lat.xy[k])
        assert side == lat.sides[k]
    per = 4 ** int(np.log2(subset[0] / 1.25))
    np.testing.assert_array_equal(sub.tissue_fraction, np.repeat(lat.tissue_fraction, per))
    assert lat.restricted_to([1.25, 2.5, 10]) is lat
    with pytest.raises(ZoomMILError, match="ordered subset"):
        lat.restricted_to([20])
    with pytest.raises(ZoomMILError, match="ordered subset"):
        lat.restricted_to([10, 2.5])


def test_bright_setting_counts():
    lat = lattice_for([1.25, 2.5, 10])
    n = len(lat.coords[0])
    assert lat.num_patches() == [n, 4 * n, 64 * n]
    assert lat.children_per_parent(2) == 16


def test_tissue_filter_keeps_parents_and_all_descendants():
    dims = (4096, 4096)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:16, :16] = True  # first parent (side 1024 -> 16 mask px) fully tissue
    mask[16:20, 16:18] = True  # parent (1, 1): 8/256 = 3% < 10%
    lat = lattice_for([5, 10, 20], dims=dims, mask=mask, tissue_threshold=0.1)
    assert lat.coords[0].tolist() == [[0, 0]]
    assert lat.tissue_fraction.tolist() == [1.0]
    assert lat.num_patches() == [1, 4, 16]
    assert lat.attrs["n_parents_total"] == 16 and not lat.attrs["no_tissue_applied"]


def test_tissue_threshold_keeps_a_parent_exactly_at_it():
    """A parent is kept when its tissue fraction is >= the threshold: fractions are counts of
    mask pixels (k / 256 here), so a parent exactly at a threshold like 0.25 is common."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[:8, :8] = True  # parent (0, 0): 64 / 256 = 0.25 exactly
    mask[16:24, 16:24] = True
    mask[16, 16] = False  # parent (1, 1): 63 / 256, just below
    mask[32:48, 32:40] = True  # parent (2, 2): 0.5
    lat = lattice_for([5, 10, 20], dims=(4096, 4096), mask=mask, tissue_threshold=0.25)
    assert lat.coords[0].tolist() == [[0, 0], [2, 2]]
    assert lat.tissue_fraction.tolist() == [0.25, 0.5]


def test_native_resolution_tolerates_a_40x_scan_a_little_coarser_than_0_25():
    """Scanners call 0.2527 um/px (Aperio AT2, 39.6x) and 0.2627 um/px (Leica GT450, 38.1x)
    "40x": 40x is accepted without upsampling, up to 10% above the native magnification
    (5% refused the GT450's 40x and 20x); beyond that it is refused unless allowed."""
    assert check_native_resolution("s.svs", 0.2527, [10, 40]) is False
    assert check_native_resolution("s.svs", 0.25, [10, 40]) is False
    assert check_native_resolution("s.svs", 0.2627, [10, 40]) is False  # GT450 40x: 5.1% above
    assert check_native_resolution("s.svs", 0.5254, [10, 20]) is False  # GT450 20x
    assert check_native_resolution("s.svs", 0.5, [10, 21.9]) is False  # 21.9x <= 1.1 * 20x
    with pytest.raises(SlideError, match="finer than the slide's native magnification 18"):
        check_native_resolution("s.svs", 0.5556, [10, 20])  # 18.0x: 11.1% above
    assert check_native_resolution("s.svs", 0.5556, [10, 20], allow_upsampling=True) is True


def test_no_tissue_policies(caplog):
    mask = np.zeros((40, 40), dtype=bool)
    with pytest.raises(SlideError, match="slide.svs: no tissue found"):
        lattice_for([5, 10], dims=(2000, 2000), mask=mask, no_tissue="exclude")
    with caplog.at_level(logging.WARNING):
        lat = lattice_for([5, 10], dims=(2000, 2000), mask=mask, no_tissue="all")
    assert "no tissue found" in caplog.text
    assert len(lat.coords[0]) == 4 and lat.attrs["no_tissue_applied"]


def test_write_and_load_coords_roundtrip(tmp_path):
    lat = lattice_for([1.25, 2.5, 10], attrs={"mpp_source": "override", "tissue_params": {"a": 1}})
    path = write_coords(tmp_path / "c.h5", lat)
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]  # no temporary left behind
    back = load_coords(path)
    assert back.mags == [1.25, 2.5, 10.0] and back.sides == lat.sides
    for a, b in zip(back.xy, lat.xy, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.attrs["mpp_source"] == "override" and back.attrs["tissue_params"] == {"a": 1}
    with h5py.File(path) as h5:
        assert set(h5) == {
            "1.25x_coords", "1.25x_xy", "2.5x_coords", "2.5x_xy", "10.0x_coords", "10.0x_xy",
            "tissue_fraction",
        }  # fmt: skip
        assert h5["10.0x_xy"].dtype == np.int64


def test_tile_cli_on_cmu(slides_dir, tmp_path, capsys):
    out = tmp_path / "coords" / "cmu.h5"
    slide = slides_dir / "CMU-1-Small-Region.svs"
    assert main(["tile", str(slide), "--mags", "5", "10", "20", "--out", str(out)]) == 0
    lat = load_coords(out)
    assert lat.mags == [5.0, 10.0, 20.0]
    assert lat.sides == [1028, 514, 257]
    assert lat.attrs["mpp"] == pytest.approx(0.499)
    assert lat.attrs["mpp_source"] == "openslide.mpp-x"
    assert lat.attrs["tissue_method"] == "gaussian" and lat.attrs["tissue_mask"] is None
    n = len(lat.coords[0])
    assert 1 <= n <= 9  # 2220x2967 px -> 3 x 3 parents of 1028 px
    assert lat.num_patches() == [n, 4 * n, 16 * n]
    assert len(lat.tissue_fraction) == n and (lat.tissue_fraction >= 0.1).all()
    w, h = 2220, 2967
    assert (lat.xy[0][:, 0] < w).all() and (lat.xy[0][:, 1] < h).all()
    assert "5.0x: " in capsys.readouterr().out


def test_tile_with_precomputed_mask_matches(synthetic_slide, tmp_path):
    mask = tmp_path / "m.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(mask), "--method", "otsu"]) == 0
    a = tile_slide(synthetic_slide, tiling([5, 10, 20], tissue_threshold=0.2), mask_path=mask)
    b = tile_slide(synthetic_slide, tiling([5, 10, 20], tissue_method="otsu", tissue_threshold=0.2))
    np.testing.assert_array_equal(a.coords[0], b.coords[0])
    np.testing.assert_allclose(a.tissue_fraction, b.tissue_fraction)
    assert a.attrs["tissue_method"] == "otsu" and a.attrs["mask_mpp"] == 8.0
    assert 0 < len(a.coords[0]) < 12  # 2048x1536 at 5x (1024 px) -> 2 x 2; ellipse covers some


def test_tile_rejects_mask_of_another_slide(synthetic_slide, slides_dir, tmp_path):
    mask = tmp_path / "m.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(mask)]) == 0
    with pytest.raises(ZoomMILError, match="made for a slide of 2048x1536"):
        tile_slide(slides_dir / "CMU-1-Small-Region.svs", tiling([5, 10]), mask_path=mask)


def test_lattice_pixels_align(synthetic_slide):
    """A child's pixels equal the matching part of its parent read at the child's scale."""
    lat = tile_slide(synthetic_slide, tiling([5, 10, 20], tissue_method="otsu"))
    with open_slide(synthetic_slide) as slide:
        j = 0
        px, py = lat.xy[0][j]
        parent_hi = read_region_at(slide, int(px), int(py), lat.sides[0], 256 * 4)
        for k in range(16):
            cx, cy = lat.xy[2][j * 16 + k]
            child = read_region_at(slide, int(cx), int(cy), lat.sides[2], 256)
            oy, ox = (cy - py) // lat.sides[2] * 256, (cx - px) // lat.sides[2] * 256
            np.testing.assert_array_equal(child, parent_hi[oy : oy + 256, ox : ox + 256])


def test_descendant_offsets_and_rows_follow_the_depth_first_order():
    for depth in range(4):
        expected = [rc for rc in reference_descendants(0, 0, depth)]
        assert [tuple(rc) for rc in descendant_offsets(depth).tolist()] == expected
    assert descendant_rows(np.array([2, 0]), 4).tolist() == [8, 9, 10, 11, 0, 1, 2, 3]


def test_depth_first_problem_names_the_magnification_and_first_row_out_of_order():
    """The order check every reader of coords and feature files shares: exact quadtree order
    under each parent (a swap inside a parent passed `check_lattice`, which checked only that
    children lie inside their parents), and O(N) for 50k rows."""
    parents = parent_grid((4096, 4096), 1024)  # 16 parents, row-major
    mags = [1.25, 2.5, 10.0]
    coords = [descendants(parents, d) for d in (0, 1, 3)]
    assert depth_first_problem(mags, coords) is None
    assert depth_first_problem([1.25, 10.0], [coords[0], coords[2]]) is None
    swapped = coords[2].copy()
    swapped[[9, 10]] = swapped[[10, 9]]
    problem = depth_first_problem(mags, [coords[0], coords[1], swapped])
    assert problem.startswith("row 9 at 10.0x is (row, col) (0, 3), but depth-first order puts")
    assert "puts (1, 2) there (descendant 9 of row 0 at 2.5x, (0, 0))" in problem
    problem = depth_first_problem([1.25, 10.0], [coords[0], swapped])
    assert "row 9 at 10.0x" in problem and "descendant 9 of row 0 at 1.25x" in problem
    assert "1023 rows at 10.0x but 64 at 2.5x need 1024 (4^2 each)" in depth_first_problem(
        mags, [*coords[:2], swapped[:-1]]
    )
    lattice = lattice_for([2.5, 5, 10])
    check_lattice(lattice)
    side = lattice.sides[2]
    lattice.coords[2][[1, 2]] = lattice.coords[2][[2, 1]]  # inside the parent, wrong order
    lattice.xy[2] = lattice.coords[2][:, ::-1] * side
    with pytest.raises(ZoomMILError, match=r"row 1 at 10.0x .* depth-first"):
        check_lattice(lattice)
