"""FLOP counting (fvcore, cross-checked with torch's counter) and the profile command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_factory import KEEP_EVERY_PATCH

from zoommil.cli import main
from zoommil.efficiency.flops import encoder_flops_per_patch, head_flops, slide_flops
from zoommil.models import build_model
from zoommil.training.checkpoint import save_checkpoint

MAGS = [2.5, 5.0, 10.0]


def _bag(n_low: int, dim: int = 1024) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(1, n_low * 4**i, dim) for i in range(len(MAGS))]


def test_encoder_flops_match_the_measured_reference():
    # ../shared/notes/cpu_throughput.md: ResNet-50 to layer3 + pool on 3x256x256 = 4.309 GFLOPs
    flops = encoder_flops_per_patch("resnet50_layer3", 256)
    assert flops["fvcore"] == pytest.approx(4.309e9, rel=1e-3)
    assert flops["torch"] == pytest.approx(flops["fvcore"], rel=0.02)


def test_zoommil_counts_only_the_zoomed_patches():
    k = 3
    model = build_model("zoommil", in_dim=1024, n_classes=3, mags=MAGS, k=k).eval()
    result = slide_flops(model, "zoommil", _bag(10))
    assert result["patches_per_mag"] == [10, k * 4, k * 4]
    assert result["patches_encoded"] == 10 + 2 * k * 4
    assert result["total_flops"] == pytest.approx(result["encoder_flops"] + result["head_flops"])
    assert result["encoder_flops"] == pytest.approx(result["patches_encoded"] * 4.309e9, rel=1e-3)


def test_all_patch_head_flops_grow_with_the_bag_and_agree_with_torch_counter():
    model = build_model("abmil", in_dim=1024, n_classes=3).eval()
    small = head_flops(model, [torch.randn(1, 100, 1024)])
    large = head_flops(model, [torch.randn(1, 200, 1024)])
    assert large["fvcore"] == pytest.approx(2 * small["fvcore"], rel=0.05)
    assert small["torch"] == pytest.approx(small["fvcore"], rel=0.1)
    result = slide_flops(model, "abmil", [torch.randn(1, 160, 1024)])
    assert result["patches_encoded"] == 160


def test_sparseconvmil_head_flops_are_counted_on_the_slides_grid():
    """SparseConvMIL's convolutions run on the map its coordinates span, as in predict;
    counted without them (a square layout), two distant tissue pieces cost like one block."""
    model = build_model("sparseconvmil", in_dim=16, n_classes=2, downsample=1).eval()
    feats = [torch.randn(1, 64, 16)]
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(8), indexing="ij")
    blob = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    coords = [torch.cat([blob, blob + torch.tensor([0, 50])])]  # a 4 x 58 map, 64 active
    square = head_flops(model, feats)["fvcore"]
    grid = head_flops(model, feats, coords)["fvcore"]
    assert grid > square
    slide = slide_flops(model, "sparseconvmil", feats, encoder="resnet50_layer3", coords=coords)
    assert slide["head_flops"] == grid


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_importing_the_flop_counter_warns_about_nothing():
    """fvcore's import-time torch.jit.script FutureWarning stays out of every FLOPs log."""
    code = "import zoommil.efficiency.flops"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_profile_on_cuda_without_gpu_writes_a_skip_note(tmp_path):
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    out = tmp_path / "gpu.json"
    code = main(["profile", "--checkpoint", str(ckpt), "--device", "cuda", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"


def test_profile_rejects_bad_thread_counts(tmp_path, capsys):
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    argv = ["profile", "--checkpoint", str(ckpt), "--threads", "0", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as usage:  # argparse refuses it, before torch is imported
        main(argv)
    assert usage.value.code == 2
    assert "argument --threads: must be a number >= 1 or 'all', got '0'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("profile", ["--max-slides", "0"], "--max-slides must be at least 1, got 0"),
        ("profile", ["--max-slides", "-1"], "--max-slides must be at least 1, got -1"),
        ("profile", ["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        ("flops", ["--max-slides", "0"], "--max-slides must be at least 1, got 0"),
        ("flops", ["--max-slides", "-1"], "--max-slides must be at least 1, got -1"),
    ],
)
def test_slide_counts_below_the_minimum_are_one_line_errors(
    tmp_path, capsys, command, argv, message
):
    """They sliced the slide list (0: all or none, -1: all but the last) without a word."""
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    out = tmp_path / "x.json"
    where = ["--features-dir", str(tmp_path)] if command == "flops" else ["--device", "cpu"]
    assert main([command, "--checkpoint", str(ckpt), *where, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_all_cores_profile_spreads_slides_over_single_threaded_processes(tmp_path):
    """threads N on CPU = N worker processes over the slides, each single-threaded; the slides
    and their patch counts are those of the 1-thread run, and the rate is per makespan. The
    same N processes time every group (ZoomMIL alone, then models sharing a pass)."""
    from slide_factory import write_pyramid_tiff

    from zoommil.efficiency.throughput import measure_groups_throughput, measure_throughput
    from zoommil.inference.predict import Predictor
    from zoommil.recipe import PreprocessingRecipe

    mags = [5.0, 10.0]
    slide = write_pyramid_tiff(tmp_path / "s.tiff", width=512, height=512)
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2).eval()
    recipe = PreprocessingRecipe(
        mags=mags, patch_size=64, weights="random", tissue_threshold=KEEP_EVERY_PATCH
    )
    predictor = Predictor(
        model=model, arch="zoommil", classes=["a", "b"], recipe=recipe, method="zoommil"
    )
    slides = [("a", slide), ("b", slide)]
    one = measure_throughput(predictor, slides, torch.device("cpu"), threads=1)
    shared = [_all_patch_predictor(a, [10.0], i) for i, a in enumerate(["abmil", "meanmil"])]
    zoom, patch = measure_groups_throughput(
        [[predictor], shared], slides, torch.device("cpu"), threads=2
    )
    two = zoom[0]
    assert [r["method"] for r in patch] == ["abmil", "meanmil"]
    assert all(r["processes"] == 2 and r["shared_pass"] == ["abmil", "meanmil"] for r in patch)
    # workers claim slides as they come free, so one of the two may time both slides: the
    # groups' rows come from at most the same two worker processes, never from this one
    workers = {r["pid"] for rec in (two, *patch) for r in rec["per_slide"]}
    assert 1 <= len(workers) <= 2 and os.getpid() not in workers
    assert 0 < two["wall_seconds"] and 0 < patch[0]["wall_seconds"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["threads_per_process"] == 1 and two["cpu_count"] >= 1
    assert len({r["pid"] for r in one["per_slide"]}) == 1
    assert [r["patches_encoded"] for r in one["per_slide"]] == [
        r["patches_encoded"] for r in sorted(two["per_slide"], key=lambda r: r["slide_id"])
    ]
    busy: dict[int, float] = {}
    for r in two["per_slide"]:
        busy[r["pid"]] = busy.get(r["pid"], 0.0) + r["seconds"]
    assert two["seconds_per_slide"] == pytest.approx(max(busy.values()) / 2)
    assert two["slides_per_hour"] == pytest.approx(3600 / two["seconds_per_slide"])


def test_one_thread_timing_runs_opencv_on_one_thread_too(tmp_path, monkeypatch):
    """The "CPU 1 thread" timing set torch's threads only: OpenCV's blurs (tissue detection)
    and resizes ran on every core inside the timed pass. They run on one now, and the
    caller's OpenCV setting comes back afterwards."""
    import cv2
    from slide_factory import write_pyramid_tiff

    from zoommil.efficiency import throughput
    from zoommil.inference.predict import Predictor
    from zoommil.recipe import PreprocessingRecipe

    slide = write_pyramid_tiff(tmp_path / "s.tiff", width=256, height=256)
    model = build_model("abmil", in_dim=1024, n_classes=2).eval()
    recipe = PreprocessingRecipe(
        mags=[10.0], patch_size=64, weights="random", tissue_threshold=KEEP_EVERY_PATCH
    )
    predictor = Predictor(model=model, arch="abmil", classes=["a", "b"], recipe=recipe)
    seen: list[int] = []
    real = throughput.predict_slide_shared

    def recording(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        return real(*args, **kwargs)

    monkeypatch.setattr(throughput, "predict_slide_shared", recording)
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        throughput.measure_throughput(
            predictor, [("a", slide)], torch.device("cpu"), threads=1, warmup=0
        )
        assert seen == [1]
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def _all_patch_predictor(arch: str, mags: list[float], seed: int):
    from zoommil.inference.predict import Predictor
    from zoommil.recipe import PreprocessingRecipe

    torch.manual_seed(seed)
    model = build_model(arch, in_dim=1024, n_classes=2, mags=mags).eval()
    recipe = PreprocessingRecipe(
        mags=mags, patch_size=64, weights="random", tissue_threshold=KEEP_EVERY_PATCH
    )
    return Predictor(model=model, arch=arch, classes=["a", "b"], recipe=recipe, method=arch)


def test_models_reading_the_same_patches_share_one_pass_and_keep_their_own_results(tmp_path):
    """One read-and-encode pass for several all-patch models: each gets the prediction it gets
    alone, and is charged the pass plus its own head (times differ only by the heads)."""
    from slide_factory import write_pyramid_tiff

    from zoommil.efficiency.throughput import measure_shared_throughput
    from zoommil.inference.predict import make_encoder, predict_slide, predict_slide_shared

    slide = write_pyramid_tiff(tmp_path / "s.tiff", width=512, height=512)
    predictors = [_all_patch_predictor(a, [10.0], i) for i, a in enumerate(["abmil", "meanmil"])]
    encoder, _ = make_encoder(predictors[0])
    shared = predict_slide_shared(predictors, slide, encoder)
    alone = [predict_slide(p, slide, encoder) for p in predictors]
    for together, single in zip(shared, alone, strict=True):
        assert together["method"] == single["method"]
        assert together["patches_per_mag"] == single["patches_per_mag"]
        assert together["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)
    assert shared[0]["probabilities"] != pytest.approx(shared[1]["probabilities"], abs=1e-6)

    records = measure_shared_throughput(
        predictors, [("x", slide), ("y", slide)], torch.device("cpu"), threads=1
    )
    assert [r["method"] for r in records] == ["abmil", "meanmil"]
    assert all(r["shared_pass"] == ["abmil", "meanmil"] for r in records)
    for a, b in zip(records[0]["per_slide"], records[1]["per_slide"], strict=True):
        assert a["slide_id"] == b["slide_id"] and a["patches_encoded"] == b["patches_encoded"]
        heads = a["phases"]["head"] - b["phases"]["head"]
        assert a["seconds"] - b["seconds"] == pytest.approx(heads, abs=1e-9)
        assert a["phases"]["encode"] == b["phases"]["encode"] > 0


def test_models_that_read_different_patches_cannot_share_a_pass():
    from zoommil.errors import ZoomMILError
    from zoommil.inference.predict import check_shared_pass

    abmil = _all_patch_predictor("abmil", [10.0], 0)
    dsmil = _all_patch_predictor("dsmil", [5.0, 10.0], 0)
    with pytest.raises(ZoomMILError, match=r"dsmil and abmil read different patches \(5x -> 10x"):
        check_shared_pass([abmil, dsmil])
    zoom = _all_patch_predictor("zoommil", [5.0, 10.0], 0)
    with pytest.raises(ZoomMILError, match="zoommil: ZoomMIL reads only the regions it selects"):
        check_shared_pass([abmil, zoom])
    assert check_shared_pass([abmil]) is abmil


def test_profile_needs_one_output_and_one_name_per_checkpoint(tmp_path, capsys):
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = str(save_checkpoint(tmp_path / "c.pt", model.state_dict(), config))
    out = str(tmp_path / "x.json")
    assert main(["profile", "--checkpoint", ckpt, ckpt, "--out", out]) == 2
    assert "2 checkpoint(s) but 1 --out file(s)" in capsys.readouterr().err
    two_outs = ["profile", "--checkpoint", ckpt, ckpt, "--out", out, out + "2", "--device", "cuda"]
    assert main([*two_outs, "--model", "a"]) == 2
    assert "2 checkpoint(s) but 1 method name(s)" in capsys.readouterr().err
    if not torch.cuda.is_available():  # two skip notes, one per checkpoint, named as asked
        assert main([*two_outs, "--model", "a", "b"]) == 0
        notes = [json.loads(Path(p).read_text()) for p in (out, out + "2")]
        assert [n["method"] for n in notes] == ["a", "b"]
        assert all(n["skipped"] == "no CUDA device" for n in notes)


def test_shared_pass_groups_keep_zoommil_alone_and_group_the_same_patches():
    from zoommil.inference.predict import shared_pass_groups

    predictors = [
        _all_patch_predictor("abmil", [10.0], 0),
        _all_patch_predictor("zoommil", [5.0, 10.0], 0),
        _all_patch_predictor("dsmil", [5.0, 10.0], 0),
        _all_patch_predictor("meanmil", [10.0], 0),
        _all_patch_predictor("zoommil", [5.0, 10.0], 1),
        _all_patch_predictor("msmil", [5.0, 10.0], 0),
        _all_patch_predictor("maxmil", [5.0], 0),
    ]
    assert shared_pass_groups(predictors) == [[0, 3], [1], [2, 5], [4], [6]]


def test_profile_reads_a_sheets_empty_mpp_cells_as_no_override(tmp_path):
    """NA, nan, none and empty mpp cells mean "use the slide's metadata", as in `load_sheet`,
    not a crash or a NaN `--mpp` that the slide's check would then reject."""
    from zoommil.efficiency.throughput import profile_slides
    from zoommil.errors import ZoomMILError

    rows = ["a\ta.tiff\tx\ttest\tNA", "b\tb.tiff\ty\ttest\tnan", "c\tc.tiff\ty\ttest\t0.5"]
    rows += ["d\td.tiff\tx\ttest\tnone", "e\te.tiff\tx\ttest\t"]
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tmpp\n" + "\n".join(rows) + "\n")
    pairs, mpp = profile_slides(sheet, None, "test")
    assert [p[0] for p in pairs] == list("abcde")
    assert mpp == {"c": 0.5}
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tmpp\na\ta.tiff\tx\ttest\tabc\n")
    with pytest.raises(ZoomMILError, match=r"slide a: mpp 'abc' is not a number"):
        profile_slides(sheet, None, "test")


def _profile_setup(tmp_path: Path, ids: list[str]) -> tuple[Path, Path]:
    """A ZoomMIL checkpoint and a sheet of test slides named ``ids``: those starting with
    "bad" are cut to 60% of their size (a file truncated after its features were made)."""
    from slide_factory import write_pyramid_tiff

    mags = [5.0, 10.0]
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2)
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": 2},
        "classes": ["a", "b"],
        "mags": mags,
        "config_mags": mags,
        "in_dim": 1024,
        "preprocessing": {
            "patch_size": 64,
            "weights": "random",
            "weights_seed": 0,
            "tissue_threshold": KEEP_EVERY_PATCH,  # the tiny slides' thumbnails show none
        },
    }
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    rows = []
    for i, slide_id in enumerate(ids):
        path = write_pyramid_tiff(tmp_path / f"{slide_id}.tiff", width=512, height=512, seed=i)
        if slide_id.startswith("bad"):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 6 // 10])
        rows.append(f"{slide_id}\t{path}\ta\ttest\t\n")
    sheet = tmp_path / "slides.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tmpp\n" + "".join(rows))
    return ckpt, sheet


def test_a_warm_up_failure_past_the_timed_slides_is_not_reported(tmp_path):
    """--warmup 2 reads past the one slide timed: bad1 never got a timing slot, so it is not
    an exclusion at profile (it landed in exclusions.tsv)."""
    ckpt, sheet = _profile_setup(tmp_path, ["good1", "bad1", "good2"])
    out = tmp_path / "t.json"
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    argv += ["--threads", "1", "--max-slides", "1", "--warmup", "2", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert [r["slide_id"] for r in record["per_slide"]] == ["good1"]
    assert record["excluded_slides"] == [] and record["warmup_slides"] == 2


def _documented_profile_record() -> tuple[dict, str]:
    """docs/ARCHITECTURE.md's example of a `zoommil profile` record (the JSON block after the
    command's line) and the list that follows it, which says what each key means."""
    text = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("`zoommil profile --model NAME") :]
    begin = section.index("```json") + len("```json")
    stop = section.index("```", begin)
    return json.loads(section[begin:stop]), section[stop + 3 :].split("\n\n")[0]


def test_the_documented_profile_fields_are_the_records(tmp_path):
    """ARCHITECTURE.md documented 8 of the record's 26 keys: its example has each key a
    profile record has (and each key of a per-slide entry and its phases), no more, and its
    list says what each one is."""
    ckpt, sheet = _profile_setup(tmp_path, ["good1"])
    out = tmp_path / "t.json"
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    assert main([*argv, "--max-slides", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    example, listed = _documented_profile_record()
    slide, documented = record["per_slide"][0], example["per_slide"][0]
    assert set(example) == set(record)
    assert set(documented) == set(slide)
    assert set(documented["phases"]) == set(slide["phases"])
    named = set(re.findall(r"`([a-z_]+)`", listed))
    assert set(record) | set(slide) | set(slide["phases"]) <= named


def test_profile_slides_given_as_files_says_it_takes_sheet_ids(tmp_path, capsys):
    """``--slides ../path/slide.svs`` (files, as predict takes them) failed with only "unknown
    slide_id(s)": it says that --slides takes the sheet's ids, names the id of a file the sheet
    lists, and how to time other files; an unknown plain id gets no such hint."""
    ckpt, sheet = _profile_setup(tmp_path, ["good1"])
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    argv += ["--out", str(tmp_path / "t.json"), "--slides"]
    listed, other = tmp_path / "good1.tiff", "../elsewhere/slide.svs"
    assert main([*argv, str(listed), other]) == 2
    err = capsys.readouterr().err
    assert f"unknown slide_id(s) {other}, {listed}" in err
    assert "--slides takes the sheet's slide_id values, not slide files" in err
    assert f"{listed} is 'good1'" in err and "pass --sheet" in err
    assert main([*argv, "good2"]) == 2
    err = capsys.readouterr().err
    assert "unknown slide_id(s) good2" in err and "--sheet" not in err


def test_profile_says_each_slide_it_timed_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """Long work gets progress, as every other command's: a line per timed slide on a
    terminal (the timing runs in several processes: lines, not a bar), none with
    --no-progress or in a workflow log."""
    ckpt, sheet = _profile_setup(tmp_path, ["good1", "good2"])
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    argv += ["--threads", "1", "--max-slides", "2", "--out", str(tmp_path / "t.json")]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("profile")]
    assert [line.split()[2] for line in lines] == ["good1", "good2"], lines
    assert all(line.endswith(" s") for line in lines)
    assert main([*argv, "--no-progress"]) == 0
    assert "profile " not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("ids", "threads", "max_slides", "timed", "excluded"),
    [
        (["bad1", "good1", "good2"], "1", 1, {"good1"}, {"bad1"}),
        (["bad1", "good1", "bad2", "good2", "good3"], "2", 2, {"good1", "good2"}, {"bad1", "bad2"}),
    ],
)
def test_an_unreadable_slide_is_replaced_by_the_next_readable_one(
    tmp_path, ids, threads, max_slides, timed, excluded
):
    """The first --max-slides slides that can be read are timed: one found unreadable at
    profile time is listed with its reason and the next takes its place (it failed the job
    with "no slide could be profiled" although other test slides were readable). With 2
    processes too; a failed warm-up slide is replaced by the next as well."""
    ckpt, sheet = _profile_setup(tmp_path, ids)
    out = tmp_path / "t.json"
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    argv += ["--threads", threads, "--max-slides", str(max_slides), "--warmup", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["per_slide"]
    assert len(rows) == max_slides and {r["slide_id"] for r in rows} == timed
    assert record["processes"] == int(threads) and record["warmup_slides"] == 1
    busy = [sum(r["seconds"] for r in rows if r["pid"] == pid) for pid in {r["pid"] for r in rows}]
    assert record["seconds_per_slide"] == pytest.approx(max(busy) / max_slides)
    reasons = {e["slide_id"]: e["reason"] for e in record["excluded_slides"]}
    assert set(reasons) == excluded and all("TIFF" in r for r in reasons.values()), reasons


#: The timing scripts' start: a 512 px slide and a ZoomMIL predictor. Run as scripts (the
#: timing processes are spawned: they import the main module by path).
TIMING_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from slide_factory import KEEP_EVERY_PATCH, write_pyramid_tiff
from zoommil.efficiency.throughput import measure_groups_throughput
from zoommil.inference.predict import Predictor
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe

if __name__ == "__main__":
    mags = [5.0, 10.0]
    slide = write_pyramid_tiff(sys.argv[2] + "/s.tiff", width=512, height=512)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2).eval()
    recipe = PreprocessingRecipe(mags=mags, patch_size=64, weights="random",
                                 tissue_threshold=KEEP_EVERY_PATCH)
    predictor = Predictor(model=model, arch="zoommil", classes=["a", "b"], recipe=recipe,
                          method="zoommil")
"""

LONG_TMPDIR_TIMING = (
    TIMING_SCRIPT
    + """
    (records,) = measure_groups_throughput(
        [[predictor]], [("a", slide), ("b", slide)], torch.device("cpu"), threads=2
    )
    print("processes", records[0]["processes"])
"""
)


def test_all_cores_timing_runs_under_a_long_tmpdir(tmp_path):
    """The timing processes' sockets (the manager's, and the one that hands them the model's
    tensors) were files in TMPDIR, and a socket path holds 107 bytes: a cluster job's TMPDIR
    of 76+ characters stopped `zoommil profile --threads N` with a traceback (AF_UNIX path
    too long)."""
    tmpdir = tmp_path / ("t" * 100)
    tmpdir.mkdir()
    script = tmp_path / "timing.py"
    script.write_text(LONG_TMPDIR_TIMING)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    tests = str(Path(__file__).parent)
    run = subprocess.run(
        [sys.executable, str(script), tests, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["processes", "2"]


#: Times many slides over 2 processes, saying each slide timed on stderr.
KILLED_TIMING = (
    TIMING_SCRIPT
    + """
    slides = [(f"s{i}", slide) for i in range(10000)]
    measure_groups_throughput([[predictor]], slides, torch.device("cpu"), threads=2,
                              progress=True)
"""
)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    """Exited, or a zombie nobody reaps (PID 1 of a container may not)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_timing_processes_exit_when_profile_is_killed(tmp_path):
    """`zoommil profile --threads N` killed outright (SIGKILL, the out-of-memory killer) left
    its timing processes timing the rest of the slides for nobody, then waiting forever
    (~0.8 GB each), and the manager of the slide claims running for good."""
    import signal
    import time

    script = tmp_path / "timing.py"
    script.write_text(KILLED_TIMING)
    tests = str(Path(__file__).parent)
    parent = subprocess.Popen(
        [sys.executable, str(script), tests, str(tmp_path)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in parent.stderr:  # a worker timed a slide: the processes all run
            if line.startswith("profile zoommil:"):
                break
        children = _children(parent.pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert len(children) >= 3  # the manager, 2 timing processes (and the resource tracker)
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in children if not _gone(pid)]
    for pid in alive:  # SIGTERM: the resource tracker ignores it, and unlinks the semaphores
        os.kill(pid, signal.SIGTERM)  # the others held once they are gone
    assert not alive, "a timing process or the manager outlived the killed profile"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_the_claims_manager_loads_neither_torch_nor_opencv() -> None:
    """The manager of the slide claims ran its initializer from `throughput`, so it imported
    that module in its process: torch, OpenCV and the predictor, ~590 MB and 2.6 s more
    beside the timing processes (measured), where the profile job's memory counts ~32 MB
    for it (`resources.PROFILE_MAIN_MB`)."""
    from zoommil.efficiency import throughput

    manager = throughput._claims_manager()
    try:
        maps = Path(f"/proc/{manager._process.pid}/maps").read_text()
    finally:
        manager.shutdown()
    assert "libtorch" not in maps and "cv2" not in maps


def test_fewer_slides_than_threads_use_fewer_processes_and_say_so(caplog) -> None:
    """`--threads 4` with 2 slides to time runs 2 processes: 2 cores stay idle, which the
    log says (the records' `processes` name the number used, the tables and figures
    follow it)."""
    from zoommil.efficiency.throughput import cpu_processes

    with caplog.at_level("WARNING", logger="zoommil.efficiency.throughput"):
        assert cpu_processes(4, 2) == 2
    assert "2 slide(s) to time on 4 threads: 2 process(es) used" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="zoommil.efficiency.throughput"):
        assert cpu_processes(2, 15) == 2 and cpu_processes(1, 3) == 1
    assert not caplog.text


def _one_slide_meanmil(tmp_path: Path, extra: dict | None = None) -> tuple[Path, list[str]]:
    """A MeanMIL checkpoint (config plus ``extra``) and one test slide's feature file: the
    checkpoint and the `zoommil flops` argv for it, without --out."""
    from zoommil.io.featurefile import write_feature_file

    (tmp_path / "features").mkdir()
    rng = np.random.default_rng(0)
    write_feature_file(tmp_path / "features" / "s1.h5", [10.0], [rng.normal(size=(3, 1024))],
                       [np.zeros((3, 2))], [np.zeros((3, 2))], {})  # fmt: skip
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("slide_id\tlabel\tsplit\ns1\ta\ttest\n")
    model = build_model("meanmil", in_dim=1024, n_classes=2)
    config = {"arch": "meanmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024,
              "sheet": str(sheet), **(extra or {})}  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    return ckpt, ["flops", "--checkpoint", str(ckpt), "--features-dir", str(tmp_path / "features")]


def test_flops_draws_no_bar_off_a_terminal_and_takes_only_known_splits(tmp_path, capsys):
    """flops drew its bar whatever stderr was; --split took any word (then found no slides)."""
    ckpt, argv = _one_slide_meanmil(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "f.json")]) == 0
    assert "\r" not in capsys.readouterr().err
    for command in (argv, ["profile", "--checkpoint", str(ckpt)]):
        with pytest.raises(SystemExit):
            main([*command, "--split", "testing", "--out", str(tmp_path / "x.json")])
        assert "invalid choice: 'testing' (choose from 'train', 'val', 'test')" in (
            capsys.readouterr().err
        )


def test_flops_counts_with_the_one_thread_its_rule_declares(tmp_path, monkeypatch):
    """The flops rule declares one thread, but the command counted with torch's default, every
    core: beside the other jobs of a `--cores 32` run it took 32 more (on 2 busy cores, 1.7x
    the CPU-s and 2x the wall time of one thread). `--threads` sets it, 1 by default; the
    caller's threads are back afterwards."""
    import zoommil.efficiency.flops as flops

    counted = []
    real = flops.checkpoint_flops

    def recording(*args, **kwargs):
        counted.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(flops, "checkpoint_flops", recording)
    _, argv = _one_slide_meanmil(tmp_path)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
        assert main([*argv, "--threads", "2", "--out", str(tmp_path / "b.json")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert counted == [1, 2]


def test_flops_and_profile_name_a_recorded_sheet_that_is_gone(tmp_path, capsys):
    """Without --sheet both default to the checkpoint's sheet; one that is not here (a moved
    project) is one line naming it and --sheet, not read_sheet's error about a file."""
    ckpt, argv = _one_slide_meanmil(tmp_path)
    (tmp_path / "sheet.tsv").unlink()
    for command in (argv, ["profile", "--checkpoint", str(ckpt)]):
        assert main([*command, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(
            f"slide sheet recorded at training, {tmp_path / 'sheet.tsv'}, does not exist here; "
            "pass --sheet"
        ), err


def test_flops_by_hand_leaves_out_the_slides_qc_excluded(tmp_path, capsys, caplog):
    """`zoommil flops` without --sheet counted a slide the checkpoint's QC table excluded (a
    blank slide's glass-only features) and said nothing of slides without a feature file;
    `evaluate` left it out (review E). Now both are left out, listed and logged."""
    from zoommil.io.featurefile import write_feature_file

    qc = tmp_path / "qc.tsv"
    ckpt, argv = _one_slide_meanmil(tmp_path, {"exclude": str(qc)})
    feats = [np.random.default_rng(1).normal(size=(3, 1024))]
    write_feature_file(tmp_path / "features" / "blank.h5", [10.0], feats,
                       [np.zeros((3, 2))], [np.zeros((3, 2))], {})  # fmt: skip
    with (tmp_path / "sheet.tsv").open("a") as sheet:
        sheet.write("blank\ta\ttest\nlost\tb\ttest\n")
    qc.write_text("slide_id\tstatus\treason\ns1\tok\t\nblank\tno_tissue\tnothing passes\n")
    out = tmp_path / "f.json"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert [r["slide_id"] for r in record["per_slide"]] == ["s1"]
    assert record["excluded"] == [
        {"slide_id": "blank", "reason": "no_tissue: nothing passes"},
        {"slide_id": "lost", "reason": "no feature file"},
    ]
    assert "over 1 slides (2 left out)" in capsys.readouterr().out
    assert "2 'test' slide(s) not counted: blank (no_tissue: nothing passes); lost" in (caplog.text)
    # a --sheet given (the workflow's usable one) is taken as it is, QC table or not
    assert main([*argv, "--sheet", str(tmp_path / "sheet.tsv"), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["per_slide"]) == 2


def test_flops_lists_a_slide_without_patches_as_left_out(tmp_path, capsys, caplog):
    """A test slide whose feature file has no rows (no tissue) was skipped without a word:
    not in ``excluded``, not in the log, so the TFLOPs per test slide were over fewer slides
    than the record said were left out. Evaluation lists it with this reason."""
    from zoommil.io.featurefile import write_feature_file

    ckpt, argv = _one_slide_meanmil(tmp_path)
    write_feature_file(tmp_path / "features" / "empty.h5", [10.0], [np.zeros((0, 1024))],
                       [np.zeros((0, 2))], [np.zeros((0, 2))], {})  # fmt: skip
    with (tmp_path / "sheet.tsv").open("a") as sheet:
        sheet.write("empty\tb\ttest\n")
    out = tmp_path / "f.json"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert [r["slide_id"] for r in record["per_slide"]] == ["s1"]
    assert record["excluded"] == [{"slide_id": "empty", "reason": "no patches (no tissue)"}]
    assert "over 1 slides (1 left out)" in capsys.readouterr().out
    assert "1 'test' slide(s) not counted: empty (no patches (no tissue))" in caplog.text


@pytest.mark.parametrize("weights", ["random", "/models/resnet50_layer3.pt", None])
def test_flops_names_the_encoder_weights_and_random_ones_say_so(tmp_path, capsys, weights):
    """DESIGN.md "Encoder": every output made with random weights says so; the FLOPs JSON of
    a checkpoint trained on random-weight features did not. A weights file is named and
    claims nothing random; a checkpoint recording no weights (older versions) claims none."""
    from zoommil.recipe import RANDOM_WEIGHTS_NOTE

    recorded = {"encoder": "resnet50_layer3", "weights": weights, "weights_seed": 3}
    _, argv = _one_slide_meanmil(tmp_path, {"preprocessing": recorded if weights else {}})
    out = tmp_path / "f.json"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["encoder"] == "resnet50_layer3" and record["weights"] == weights
    if weights == "random":
        assert record["weights_note"] == RANDOM_WEIGHTS_NOTE and record["weights_seed"] == 3
    else:
        assert "weights_note" not in record and "random" not in out.read_text()


def test_flops_of_a_checkpoint_of_features_tiled_with_another_tools_mask(tmp_path, caplog):
    """A checkpoint whose features were tiled with a mask of another tool records the tissue
    method ``unknown``: `zoommil flops`, which detects nothing, failed on it as "unknown
    tissue method 'unknown'". It counts, and says nothing of masks."""
    recorded = {"tissue_method": "unknown", "tissue_params": {"geojson": "s.geojson"}}
    _, argv = _one_slide_meanmil(tmp_path, {"preprocessing": recorded})
    out = tmp_path / "f.json"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["per_slide"]
    assert "masks" not in caplog.text
