"""`python -m zoommil.interop.share_features`: a features (and coords) folder to send to
another lab carries none of the lab's paths, the same datasets, and still trains there."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from zoommil import __version__ as zoommil_version
from zoommil.cli import main as zoommil
from zoommil.interop.share_features import main
from zoommil.io.featurefile import write_feature_file

LAB = "/home/alice.smith/hospital-x"
MAGS = [5.0, 10.0]
WEIGHTS = f"{LAB}/weights/r50 lab.pth"


def _feature_file(path: Path, slide_id: str, label: int, rng: np.random.Generator) -> None:
    """One slide's features with the attributes `zoommil features` records in the lab."""
    coords = [np.array([[0, 0], [0, 1]])]
    steps = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    coords.append((2 * coords[0][:, None, :] + steps[None]).reshape(-1, 2))
    feats = [rng.normal(size=(len(c), 8)).astype(np.float32) + label for c in coords]
    xy = [c[:, ::-1] * 64 for c in coords]
    attrs = {
        "slide": f"{LAB}/slides/{slide_id} A1.svs",
        "slide_id": slide_id,
        "coords_file": f"{LAB}/results/coords/{slide_id}.h5",
        "tissue_mask": f"{LAB}/masks/{slide_id}.png",
        "slide_quickhash": f"{label:064d}",
        "patch_size": 256,
        "encoder": "resnet50_layer3",
        "weights": WEIGHTS,
        "weights_file": WEIGHTS,
        "weights_note": f"state dict {WEIGHTS}",
        "weights_sha256": "ab" * 32,
        "tissue_params": {"sigma": 2.0},
        "mpp": 0.5,
    }
    write_feature_file(path, MAGS, feats, coords, xy, attrs, {"tissue_fraction": [0.5, 1.0]})


def _coords_file(path: Path, slide_id: str) -> None:
    with h5py.File(path, "w") as h5:
        for mag in MAGS:
            h5.create_dataset(f"{mag}x_coords", data=np.zeros((2, 2), np.int64))
        h5.attrs["mags"] = np.asarray(MAGS)
        h5.attrs["slide_path"] = f"{LAB}/slides/{slide_id} A1.svs"
        h5.attrs["slide_quickhash"] = "cd" * 32


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Path]:
    """A lab's results/features (8 slides, two classes) and results/coords, and a sheet."""
    rng = np.random.default_rng(0)
    features, coords = tmp_path / "lab" / "features", tmp_path / "lab" / "coords"
    coords.mkdir(parents=True)
    rows = []
    for i in range(8):
        slide_id, split = f"s{i}", (("train",) * 4 + ("val", "val", "test", "test"))[i]
        _feature_file(features / f"{slide_id}.h5", slide_id, i % 2, rng)
        _coords_file(coords / f"{slide_id}.h5", slide_id)
        rows.append({"slide_id": slide_id, "path": f"{slide_id}.svs", "label": "ab"[i % 2],
                     "split": split})  # fmt: skip
    sheet = tmp_path / "sheet.tsv"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return {"features": features, "coords": coords, "sheet": sheet, "root": tmp_path}


def _strings(h5: h5py.File) -> list[str]:
    """Every string attribute value of the file's root and objects."""
    owners = [h5] + [h5[name] for name in h5]
    values = [v for o in owners for v in o.attrs.values()]
    return [v.decode() if isinstance(v, bytes) else v for v in values if isinstance(v, str | bytes)]


def test_copy_has_no_lab_path_and_the_same_datasets_and_attributes(lab) -> None:
    out = lab["root"] / "send"
    assert main([str(lab["features"]), "--coords", str(lab["coords"]), "--out", str(out)]) == 0
    for part, copy_dir in (("features", out), ("coords", out / "coords")):
        originals = sorted(lab[part].glob("*.h5"))
        assert [p.name for p in sorted(copy_dir.glob("*.h5"))] == [p.name for p in originals]
        for original in originals:
            copy = copy_dir / original.name
            assert b"alice" not in copy.read_bytes() and b"/home" not in copy.read_bytes()
            with h5py.File(original) as a, h5py.File(copy) as b:
                assert not any("alice" in s or "/" in s for s in _strings(b))
                assert list(a) == list(b)
                for name in a:
                    assert a[name].dtype == b[name].dtype and a[name].chunks == b[name].chunks
                    assert np.array_equal(a[name][()], b[name][()])
                changed = {"slide", "slide_path", "coords_file", "tissue_mask", "weights",
                           "weights_file", "weights_note"}  # fmt: skip
                for name in set(a.attrs) - changed:
                    assert a.attrs.get_id(name).dtype == b.attrs.get_id(name).dtype
                    assert np.array_equal(a.attrs[name], b.attrs[name]), name
                assert "slide_path" not in b.attrs and "weights_file" not in b.attrs
    with h5py.File(out / "s0.h5") as h5:
        assert h5.attrs["slide"] == "s0 A1.svs" and h5.attrs["coords_file"] == "s0.h5"
        assert h5.attrs["weights"] == "r50 lab.pth"  # what predict asks for by name
        assert h5.attrs["weights_note"] == "state dict r50 lab.pth"
        assert h5.attrs["slide_quickhash"] == "0" * 64


def test_drop_quickhash(lab) -> None:
    out = lab["root"] / "send"
    argv = [str(lab["features"]), "--coords", str(lab["coords"]), "--out", str(out)]
    assert main([*argv, "--drop-quickhash"]) == 0
    for copy in [*out.glob("*.h5"), *(out / "coords").glob("*.h5")]:
        with h5py.File(copy) as h5:
            assert "slide_quickhash" not in h5.attrs and "mags" in h5.attrs


def test_the_receiver_trains_and_evaluates_on_the_copy(lab) -> None:
    out = lab["root"] / "send"
    assert main([str(lab["features"]), "--out", str(out), "--drop-quickhash"]) == 0
    config = {"features_dir": str(out), "sheet": str(lab["sheet"]), "mags": MAGS, "epochs": 2,
              "methods": {"abmil": {"arch": "abmil"}}}  # fmt: skip
    (lab["root"] / "config.yaml").write_text(yaml.safe_dump(config))
    run = lab["root"] / "run"
    args = ["--config", str(lab["root"] / "config.yaml"), "--device", "cpu", "--no-progress"]
    assert zoommil(["train", *args, "--model", "abmil", "--out", str(run)]) == 0
    metrics = lab["root"] / "eval.json"
    evaluate = ["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--features-dir", str(out)]
    assert zoommil([*evaluate, "--sheet", str(lab["sheet"]), "--exclude", "", "--out",
                    str(metrics), "--device", "cpu"]) == 0  # fmt: skip
    assert metrics.is_file()
    assert b"alice" not in (run / "checkpoint.pt").read_bytes()


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m zoommil.interop.share_features:")
    return err


def test_refusals(lab, capsys: pytest.CaptureFixture[str]) -> None:
    features = lab["features"]
    before = {p: p.read_bytes() for p in features.glob("*.h5")}
    assert main([str(features), "--out", str(features)]) == 2
    assert "is the features folder" in _error(capsys)
    assert main([str(features), "--coords", str(lab["coords"]), "--out", str(lab["coords"])]) == 2
    _error(capsys)
    assert {p: p.read_bytes() for p in features.glob("*.h5")} == before
    assert main([str(lab["root"] / "nowhere"), "--out", str(lab["root"] / "a")]) == 2
    assert "features folder not found" in _error(capsys)
    (features / "notes.h5").write_text("not hdf5")
    out = lab["root"] / "b"
    assert main([str(features), "--out", str(out)]) == 2
    assert "notes.h5: not an HDF5 features file" in _error(capsys)
    assert not out.exists() or not any(out.rglob("*.h5"))  # nothing written


def test_a_path_it_does_not_know_is_refused(lab, capsys: pytest.CaptureFixture[str]) -> None:
    with h5py.File(lab["features"] / "s3.h5", "r+") as h5:
        h5.attrs["tissue_params"] = '{"mask_dir": "/home/alice.smith/masks"}'
    out = lab["root"] / "c"
    assert main([str(lab["features"]), "--out", str(out)]) == 2
    assert "s3.h5: attribute tissue_params holds a path" in _error(capsys)
    assert not out.exists() or not any(out.rglob("*.h5"))


def test_version_is_the_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"zoommil {zoommil_version}\n"
