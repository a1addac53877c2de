"""The benchmark scripts' command lines, as the README tells users to run them.

A missing input or an output folder that is a file stopped them with a traceback, some only
after their minutes of work (each wrote its results at the end, into a folder made then).
They now stop before the work with one line naming the path and the reason, exit status 2,
and write their results through a rename, so an interrupted run leaves no half-written JSON.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def usage_error(capsys: pytest.CaptureFixture[str], name: str, argv: list[str]) -> str:
    """Run benchmark ``name`` with ``argv``; it must exit 2 with one error line, returned."""
    with pytest.raises(SystemExit) as stop:
        load(name).main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    ("name", "flag", "what"),
    [
        ("reading", "--slide", "slide not found"),
        ("threads", "--slide", "slide not found"),
        ("encoders", "--slide", "slide not found"),
        ("features", "--slide", "slide not found"),
        ("predict_ensemble", "--slide", "slide not found"),
        ("report_scale", "--run", "run folder not found"),
        ("early_stopping", "--models", "models folder not found"),
        ("cohort_scale", "--config", "config not found"),
    ],
)
def test_a_missing_input_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, flag: str, what: str
) -> None:
    missing = tmp_path / "nope.svs"
    extra = {"report_scale": [], "cohort_scale": ["--sizes", "8"]}
    argv = [flag, str(missing), *extra.get(name, ["--out", str(tmp_path / "out")])]
    assert usage_error(capsys, name, argv) == f"error: {missing}: {what}"


def test_a_folder_given_as_the_slide_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = usage_error(capsys, "reading", ["--slide", str(tmp_path), "--out", str(tmp_path)])
    assert err == f"error: {tmp_path}: slide is not a file"


def test_a_file_that_is_no_slide_gets_zoommils_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`zoommil tile` said why, but the script captured its stderr and raised
    CalledProcessError, which shows only the command."""
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    err = usage_error(capsys, "reading", ["--slide", str(text), "--out", str(tmp_path / "o")])
    assert err.startswith("error: zoommil tile failed: ") and "not a whole-slide image" in err


def test_zoom_precision_names_the_missing_demo_sheet(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = usage_error(capsys, "zoom_precision", ["--results", str(tmp_path)])
    assert err == f"error: {tmp_path / 'demo' / 'slides.tsv'}: demo sheet not found"


def test_zoom_precision_without_checkpoints_keeps_the_last_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A method with no checkpoints (a typo in --methods, a run without it) wrote an empty
    result over the last one, exit 0."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "slides.tsv").write_text("slide_id\tpath\tlabel\tsplit\n")
    (tmp_path / "demo" / "regions.tsv").write_text("slide_id\tkind\n")
    last = tmp_path / "benchmarks" / "zoom_precision.json"
    last.parent.mkdir()
    last.write_text('[{"method": "zoommil"}]\n')
    err = usage_error(capsys, "zoom_precision", ["--results", str(tmp_path), "--methods", "zoomil"])
    assert err == f"error: {tmp_path / 'models' / 'zoomil'}: no seed~*/checkpoint.pt"
    assert last.read_text() == '[{"method": "zoommil"}]\n'


@pytest.mark.parametrize("name", ["label_noise", "learning_curve"])
def test_training_benchmarks_name_an_unknown_method_before_the_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    err = usage_error(capsys, name, ["--methods", "zoomil", "--out", str(tmp_path)])
    assert err.startswith("error: --methods: unknown zoomil; known: zoommil, ")
    assert not (tmp_path / f"{name}.json").exists()


# each script with --out, with the cheapest settings it takes: without the check made first
# these ran (minutes for most) and then stopped at the end on FileExistsError
OUT_FOLDER = {
    "reading": ["--max-parents", "1", "--repeats", "1"],
    "threads": ["--quick", "--what", "features"],
    "encoders": ["--encoders", "resnet50_layer3", "--patches", "1", "--predict"],
    "features": ["--quick", "--precisions", "fp32", "--threads", "1"],
    "early_stopping": [],
    "negative_control": ["--quick", "--no-leak", "--n-train", "4", "--n-val", "2"],
    "label_noise": ["--quick", "--methods", "meanmil", "--n-train", "4", "--n-val", "2"],
    "learning_curve": ["--quick", "--methods", "meanmil", "--sizes", "4", "--n-train", "4"],
    "process_memory": ["--encoders", "resnet50_layer3", "--repeats", "1"],
    "tables_scale": ["--test-slides", "10", "--seeds", "1", "--repeats", "1"],
    "topk_gradient": ["--draws", "1", "--samples", "10"],
    "train_scale": ["--slides", "2", "--patches", "4", "--dim", "4", "--epochs", "1"],
    "zoom_speedup": ["--no-cmu", "--demo-slides", "1", "--demo-scale", "0.2"],
    "gpu": ["--dry"],
}


@pytest.mark.parametrize("name", sorted(OUT_FOLDER))
def test_an_output_folder_that_is_a_file_stops_before_the_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    argv = [*OUT_FOLDER[name], "--out", str(taken)]
    if name == "early_stopping":
        argv += ["--models", str(tmp_path)]
    assert usage_error(capsys, name, argv) == f"error: {taken}: output folder is a file"
    assert taken.read_text() == "a file\n"


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("topk", ["--quick"]),
        ("demo_probe", ["--n-slides", "2"]),
        ("frozen_encoder", ["--rounds", "1", "--repeats", "1"]),
    ],
)
def test_an_output_file_whose_folder_is_a_file_stops_before_the_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, argv: list[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    err = usage_error(capsys, name, [*argv, "--out", str(taken / "result.json")])
    assert err == f"error: {taken}: output folder is a file"


def test_make_large_slide_refuses_a_folder_as_its_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, slides_dir: Path
) -> None:
    err = usage_error(capsys, "make_large_slide", ["--out", str(tmp_path), "--width", "2048"])
    assert err == f"error: {tmp_path}: output file is a folder"


def test_cohort_scale_takes_a_relative_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--config config/camelyon16.yaml` ran every dry run, then stopped on
    `Path.relative_to` and wrote nothing (only the default, absolute path worked)."""
    bench = load("cohort_scale")
    monkeypatch.setattr(bench, "OUT", tmp_path / "out")
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    monkeypatch.setattr(bench, "make_slides", lambda n, folder: [Path(f"s{i}") for i in range(n)])
    monkeypatch.setattr(bench, "write_sheet", lambda path, slides: None)
    monkeypatch.setattr(bench, "fake_preprocessing", lambda work, slides: None)
    seen = []
    timed = {"wall_seconds": 1.0, "cpu_seconds": 1.0, "jobs": 1}
    monkeypatch.setattr(bench, "dry_run", lambda work, config, sheet: seen.append(config) or timed)
    (tmp_path / "mine.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--sizes", "8", "--config", "mine.yaml"]) == 0
    assert seen == [tmp_path / "mine.yaml"] * 2  # resolved: snakemake runs elsewhere
    result = (tmp_path / "out" / "cohort_scale.json").read_text()
    assert os.path.relpath(tmp_path / "mine.yaml", REPO) in result


def test_results_are_replaced_whole_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C while a result is written leaves the last result, not half a JSON."""
    bench_cli = load("bench_cli")
    path = tmp_path / "scale.json"
    bench_cli.write_text(path, '{"run": 1}\n')

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_cli.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_cli.write_text(path, '{"run": 2}\n')
    assert path.read_text() == '{"run": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["scale.json"]  # no temporary file left


def test_results_get_a_new_files_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    """A result on a lab's shared folder is readable by the group, as any file the user
    writes: 0666 less the umask (mkstemp's own 0600 hid it)."""
    bench_cli = load("bench_cli")
    old = os.umask(0o002)
    try:
        path = bench_cli.write_text(tmp_path / "scale.md", "# run\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664
    assert os.umask(old) == old  # the umask is as it was


def test_the_readme_command_fails_in_one_line(tmp_path: Path) -> None:
    """`python benchmarks/reading.py --slide nope.svs` as a user types it."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/reading.py", "--slide", "nope.svs", "--out", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: nope.svs: slide not found\n"
