"""The tiny config end to end: tables, figures, QC exclusions, report, and an idle rerun."""

from __future__ import annotations

import json
import math
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
