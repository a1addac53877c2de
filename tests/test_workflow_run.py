"""The tiny config end to end: tables, figures, QC exclusions, report, and an idle rerun."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from workflow_config import harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return harness.tiny_run(tmp_path_factory)


def test_tables_and_figures_are_written(tiny) -> None:
    workdir, _, _ = tiny
    results = workdir / "results"
    for kind in ("main", "ablations"):
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{kind}.{ext}").stat().st_size > 0
    for name in ("throughput", "attention"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 1000
    main = pd.read_csv(results / "tables" / "main.csv")
    assert list(main["method"]) == ["zoommil", "meanmil", "abmil"]
    for column in ("weighted_f1_mean", "accuracy_mean", "tflops"):
        assert main[column].notna().all(), column
    assert main.set_index("method").loc["zoommil", "cpu1_s_per_slide"] > 0
    assert math.isnan(main.set_index("method").loc["abmil", "cpu1_s_per_slide"])  # not timed
    ablations = pd.read_csv(results / "tables" / "ablations.csv")
    assert list(ablations["method"]) == ["zoommil", "zoommil_random"]


def test_each_method_has_a_model_card_with_the_tables_numbers(tiny) -> None:
    """results/model_cards/{method}.md (the default target): the test metrics as main.md
    prints them, the checkpoint's sha256, and the random weights' warning."""
    import hashlib

    workdir, _, _ = tiny
    results = workdir / "results"
    config = harness.load_config()
    methods = [*config["methods"], *config["ablations"]["methods"]]
    assert sorted(p.stem for p in (results / "model_cards").glob("*.md")) == sorted(methods)
    card = (results / "model_cards" / "zoommil.md").read_text(encoding="utf-8")
    text = (results / "tables" / "main.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = next(line for line in lines if line.startswith("| Method"))
    row = next(line for line in lines if "ZoomMIL" in line.split("|")[1])
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    wf1 = cells[" Weighted F1 (%) "].strip().strip("*")
    assert f"| Weighted F1 (%) | {wf1} |" in card
    checkpoint = results / "models" / "zoommil" / "seed~0" / "checkpoint.pt"
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in card
    assert "**Demo model, not for use.**" in card and "not available" in card  # 3 classes
    assert "Tissue detector: `gaussian` version" in card


def test_each_figure_has_its_source_data_beside_it(tiny) -> None:
    """The numbers each figure plots, as a CSV beside it (a journal's source data, a reader
    who cannot see the image): they were in the images only."""
    workdir, _, _ = tiny
    figures = workdir / "results" / "figures"
    throughput = pd.read_csv(figures / "throughput.csv")
    main = pd.read_csv(workdir / "results" / "tables" / "main.csv").set_index("method")
    timed = throughput[throughput["device"] == "cpu1"].set_index("method")
    assert list(timed.index) == ["zoommil"]  # the tiny config times ZoomMIL alone
    assert timed.loc["zoommil", "slides_per_hour"] == pytest.approx(
        main.loc["zoommil", "cpu1_slides_per_hour"], rel=1e-5
    )
    assert timed.loc["zoommil", "weighted_f1_pct"] == pytest.approx(
        100 * main.loc["zoommil", "weighted_f1_mean"], rel=1e-5
    )
    regions = pd.read_csv(figures / "attention.csv")
    assert regions["slide_id"].notna().all() and regions["score"].notna().any()
    assert regions["zoom_step"].notna().any()  # ZoomMIL's boxes


def test_the_results_say_which_config_code_and_machine_made_them(tiny) -> None:
    """Months later, results/ alone must name the config, the code and the CPU: Snakemake
    keeps none of them there, and `--report` labels from the config it is given now (review
    B). A training run's own metrics.json records its job's environment (a cluster node's)."""
    from zoommil.environment import cpu_model

    workdir, configfile, _ = tiny
    record = json.loads((workdir / "results" / "provenance.json").read_text())
    config = harness.load_config(configfile)
    assert record["config"]["dataset"] == config["dataset"]
    assert record["config"]["preprocess"]["mags"] == config["preprocess"]["mags"]
    assert sorted(record["config"]["methods"]) == sorted(config["methods"])
    env = record["environment"]
    assert env["cpu"] == cpu_model() and env["libraries"]["torch"]
    assert env["zoommil_version"] and "zoommil_commit" in env
    metrics = next((workdir / "results" / "models").glob("*/seed~*/metrics.json"))
    assert json.loads(metrics.read_text())["environment"]["cpu"] == cpu_model()


def test_each_methods_flops_and_timings_are_its_own(tiny) -> None:
    """The FLOPs and timing jobs pass methods, checkpoints and outputs in one order (they are
    paired by position): with the outputs in another order, ZoomMIL's flops.json held ABMIL's
    count and the tables showed it as ZoomMIL's (review X)."""
    workdir, _, _ = tiny
    files = sorted((workdir / "results" / "efficiency").glob("*/*.json"))
    flops = [f for f in files if f.name == "flops.json"]
    assert len(flops) == len(harness.load_config()["methods"]) + len(
        harness.load_config()["ablations"]["methods"]
    )
    for path in files:
        record = json.loads(path.read_text())
        if not record.get("skipped"):
            assert record["method"] == path.parent.name, path


def test_bad_slides_are_excluded_and_reported(tiny) -> None:
    workdir, _, _ = tiny
    results = workdir / "results"
    qc = pd.read_csv(results / "qc" / "slides.tsv", sep="\t", keep_default_na=False)
    status = dict(zip(qc["slide_id"], qc["status"], strict=True))
    assert status.pop("bad_mpp") == "implausible_mpp"
    assert status.pop("blank") == "no_tissue"
    assert status.pop("corrupt") == "failed"
    assert set(status.values()) == {"ok"}
    corrupt = qc.set_index("slide_id").loc["corrupt"]
    assert corrupt["stage"] == "features" and "cannot read" in corrupt["reason"]
    assert not (results / "features" / "bad_mpp.h5").exists()
    usable = pd.read_csv(results / "qc" / "usable.tsv", sep="\t")
    assert not {"blank", "bad_mpp", "corrupt"} & set(usable["slide_id"])
    markdown = (results / "tables" / "main.md").read_text()
    assert (
        "3 of 9 slides excluded (1 failed at features, 1 implausible_mpp, 1 no_tissue)" in markdown
    )
    assert "RANDOM" in markdown  # random encoder weights are always stated
    exclusions = pd.read_csv(results / "qc" / "exclusions.tsv", sep="\t", keep_default_na=False)
    assert set(exclusions["slide_id"]) == {"bad_mpp", "blank", "corrupt"}
    assert set(exclusions["left_out_of"]) == {"training and evaluation"}  # nothing failed later
    assert "3 of 9 slides excluded" in (results / "qc" / "exclusions.html").read_text()
    metrics = json.loads((results / "models" / "zoommil" / "seed~0" / "metrics.json").read_text())
    assert "bad_mpp" in json.dumps(metrics) and "blank" in json.dumps(metrics)


def test_a_test_slide_unreadable_late_is_replaced_by_the_next(tiny, tmp_path) -> None:
    """A test slide truncated after its features were made (mtime kept, so nothing before
    predict and profile reruns; those two are forced): Figure 4 and the timings (n_slides: 1)
    take the next test slide, and the slide is listed with its whole reason. The timing job
    failed ("no slide could be profiled"), so tables, figure_throughput and qc_exclusions
    never ran, and Figure 4 said "no test slides to show", its reason cut mid-sentence."""
    from zoommil.workflow.failure import read_marker

    workdir, configfile, _ = tiny
    scratch = tmp_path / "late"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    # the copy's sheet names its own slide files (relative to the run's folder, as the jobs
    # recorded them): the copy's slide is damaged, its mtime kept
    results = scratch / "results"
    test = pd.read_csv(results / "qc" / "usable.tsv", sep="\t").query("split == 'test'")
    first, second = sorted(test["slide_id"])[:2]
    slide = scratch / "data" / "slides" / f"{first}.tiff"
    kept, data = slide.stat(), slide.read_bytes()
    slide.write_bytes(data[: len(data) * 6 // 10])
    os.utime(slide, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    force = ["--forcerun", "predict", "profile"]  # as if they ran after the damage
    run = harness.snakemake(scratch, *force, configfile=scratch / configfile.name)
    ran = harness.job_lines(run, r"^\s*wildcards: .*slide=([^,\s]+)")
    assert ran["predict"] == {first, second}, ran
    assert {"tables", "figure_throughput", "figure_attention", "qc_exclusions"} <= set(ran)
    failure = read_marker(results / "predict" / "zoommil" / f"{first}.json")
    assert failure.stage == "predict" and failure.reason.endswith(" bytes"), failure
    assert read_marker(results / "predict" / "zoommil" / f"{second}.json") is None
    log = (results / "logs" / "figure_attention" / "figure_attention.log").read_text()
    assert f"skipped {first} (predict: {failure.reason})" in log
    for device in ("cpu1", "cpu"):
        timing = json.loads(
            (results / "efficiency/zoommil" / f"throughput_{device}.json").read_text()
        )
        assert [r["slide_id"] for r in timing["per_slide"]] == [second]
        assert [e["slide_id"] for e in timing["excluded_slides"]] == [first]
    table = pd.read_csv(results / "qc" / "exclusions.tsv", sep="\t", keep_default_na=False)
    assert set(table.loc[table["slide_id"] == first, "stage"]) == {"predict", "profile"}
    again = harness.snakemake(scratch, "-n", configfile=scratch / configfile.name)
    assert "Nothing to be done" in again.stdout + again.stderr  # the spare is settled


def test_gpu_timing_is_skipped_with_a_note_without_gpu(tiny) -> None:
    workdir, _, _ = tiny
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    record = json.loads((workdir / "results/efficiency/zoommil/throughput_gpu.json").read_text())
    assert record["skipped"]
    assert "GPU timing skipped" in (workdir / "results/tables/main.md").read_text()


def test_second_run_does_nothing(tiny) -> None:
    workdir, configfile, _ = tiny
    result = harness.snakemake(workdir, configfile=configfile)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report(tiny) -> None:
    """As the README writes it: no --cores (the timing rules' threads must not need one)."""
    workdir, configfile, _ = tiny
    harness.snakemake(workdir, "--report", "results/report.html", configfile=configfile, cores=None)
    report = Path(workdir / "results" / "report.html")
    assert report.stat().st_size > 10_000
    # the QC exclusions page ("N of M slides excluded") is one of the report's results
    assert "exclusions.html" in report.read_text()
