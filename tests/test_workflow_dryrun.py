"""Dry runs of every config, sheet validation before any job, lint and formatting."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_config import harness

from zoommil.errors import ZoomMILError
from zoommil.workflow import checkout, manifest
from zoommil.workflow import params as workflow

PRESETS = {
    "camelyon16": ["normal", "tumor"],
    "bright": ["noncancerous", "precancerous", "cancerous"],
    "crc": ["non-neoplastic", "low-grade", "high-grade"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch copy of the workflow (library tracked from the installed package)."""
    return harness.copy_workflow(tmp_path_factory.mktemp("dryrun"), with_sources=False)


def fake_sheet(folder: Path, classes: list[str], n: int = 6, rows: list[str] | None = None):
    """A sheet whose slides are empty files: enough for a dry run, which reads no pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    splits = ["train", "train", "train", "val", "test", "test"]  # a train slide per class
    for i in range(n):
        (folder / f"s{i}.svs").write_bytes(b"")
        lines.append(f"s{i}\ts{i}.svs\t{classes[i % len(classes)]}\t{splits[i % 6]}\t\n")
    if rows is not None:
        lines = rows
    sheet = folder / "slides.tsv"
    sheet.write_text(harness.SHEET_HEADER + "".join(lines))
    return sheet


def test_demo_config_dry_run(workdir: Path) -> None:
    jobs = harness.planned_jobs(workdir)
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    n_methods = len(demo["methods"]) + len(demo["ablations"]["methods"])
    n_runs = len(demo["methods"]) * len(demo["train"]["seeds"]) + len(
        demo["ablations"]["methods"]
    ) * len(demo["ablations"]["seeds"])
    assert jobs["synth"] == 1
    assert "train_config" not in jobs and "evaluate" not in jobs  # both inside the train job
    # train.seeds_in_one_job: one job per method trains its three seeds
    assert demo["train"]["seeds_in_one_job"] is True
    assert jobs["train"] == n_methods == 15 and n_runs == 45
    assert jobs["flops"] == 1  # every method in one job
    # cpu1 and cpu per method; efficiency.gpu: auto times on a GPU only where there is one
    assert demo["efficiency"]["gpu"] == "auto"
    n_devices = 3 if workflow.gpu_present() else 2
    # one timing job per device times every method (shared passes inside the job)
    assert jobs["profile"] == n_devices
    assert jobs["tables"] == jobs["figure_throughput"] == jobs["figure_attention"] == 1
    assert jobs["qc_exclusions"] == 1  # every slide left out, at any stage
    assert jobs["model_cards"] == n_methods  # one card per method, ablations too


def test_one_demo_slide_can_be_asked_for_before_synth_ran(workdir: Path) -> None:
    """`snakemake results/coords/demo_003.h5` (redoing one slide) failed to plan with "Rule
    parameter depends on checkpoint": the rules' params read the synth checkpoint's sheet,
    which was not among their inputs."""
    for target, rule in (
        ("results/tissue/demo_003.png", "tissue"),
        ("results/coords/demo_003.h5", "tile"),
        ("results/features/demo_003.h5", "tile"),
        ("results/predict/zoommil/demo_003.json", "predict"),
    ):
        jobs = harness.planned_jobs(workdir, None, target)
        assert jobs.get("synth") == 1 and jobs.get(rule) == 1, (target, jobs)


def test_a_synth_block_without_n_slides_makes_synths_default(workdir: Path) -> None:
    """The rule had its own default (24) where `zoommil synth` and the README say 60."""
    config = harness.load_config()
    config["synth"], config["sheet"] = {"seed": 3}, None
    configfile = harness.write_config(workdir, config, "synth_default.yaml")
    result = harness.snakemake(
        workdir, "-n", "-p", "results/demo/slides.tsv", configfile=configfile
    )
    assert result.returncode == 0, result.stderr
    assert "--n-slides 60 --seed 3 --scale 1.0 " in result.stdout + result.stderr


def test_train_jobs_carry_their_priority(workdir: Path) -> None:
    """TransMIL's train job has the highest priority, so Snakemake starts it first."""
    result = harness.snakemake(workdir, "-n")
    priority = {}
    method = None
    for line in (result.stdout + result.stderr).splitlines():
        line = line.strip()
        if line.startswith("wildcards: method="):
            method = line.split("=", 1)[1].split(",")[0]
        elif line.startswith("priority:") and method is not None:
            priority[method] = int(line.split(":")[1])
            method = None
    assert len(priority) == 15, priority
    assert max(priority, key=priority.get) == "transmil"


def test_torch_rules_use_a_gpu_only_where_they_declare_one(workdir: Path) -> None:
    """`--device auto` takes CUDA wherever it is visible: train declares no GPU, so it trains
    on CPU (deterministic) unless a profile gives it `gpu: 1`."""

    def train_commands(*args: str) -> list[str]:
        result = harness.snakemake(workdir, "-n", "-p", *args)
        lines = (result.stdout + result.stderr).splitlines()
        return [line for line in lines if "zoommil train " in line]

    commands = train_commands()
    assert len(commands) == 15 and all("--device cpu " in c for c in commands), commands
    on_gpu = train_commands("--set-resources", "train:gpu=1")
    assert on_gpu and all("--device auto " in c for c in on_gpu), on_gpu


def test_demo_with_one_job_per_seed(workdir: Path) -> None:
    """The cluster layout of the same demo: one train job per method and seed."""
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    demo["train"]["seeds_in_one_job"] = False
    configfile = harness.write_config(workdir, demo, "per_seed.yaml")
    jobs = harness.planned_jobs(workdir, configfile)
    assert jobs["train"] == 45


def test_the_default_target_asks_for_every_table_and_figure_file(workdir: Path) -> None:
    """Snakemake remakes only the outputs something requests: `rule all` named one file of
    the tables rule, so a deleted comparisons.csv (or main.md, attention.pdf) was not made
    again ("Nothing to be done") and `snakemake --report` then stopped on it (review S48)."""
    result = harness.snakemake(workdir, "-n")
    text = result.stdout + result.stderr
    block = text[re.search(r"^(?:local)?rule all:", text, re.M).start() :]
    requested = set(re.search(r"^\s*input: (.*)$", block, re.M)[1].split(", "))
    rules = "".join(p.read_text() for p in (harness.REPO / "workflow" / "rules").glob("*.smk"))
    made = set(re.findall(r'"(results/(?:tables|figures|qc/exclusions)[^"{]*\.[a-z]+)"', rules))
    made.discard("results/figures/attention_settings.json")  # an input of those rules
    subgroup_files = {f"results/tables/subgroups.{ext}" for ext in ("csv", "md", "tex")}
    assert made - requested == subgroup_files  # made only with report.subgroups (below)
    assert "results/tables/comparisons.csv" in made and "results/figures/attention.pdf" in made


def test_subgroup_tables_are_planned_only_with_report_subgroups(workdir: Path) -> None:
    """`report: {subgroups: [site]}` adds results/tables/subgroups.{csv,md,tex} to the
    tables rule and the default target; without it the rule's outputs are those of before."""
    sheet = _site_sheet(workdir / "site_planned", ["a", "a", "b", "", "b", "a"])
    code, text = _plan_with_sheet(workdir, sheet, "report={subgroups: [site]}")
    assert code == 0, text[-3000:]
    block = text[re.search(r"^(?:local)?rule all:", text, re.M).start() :]
    requested = set(re.search(r"^\s*input: (.*)$", block, re.M)[1].split(", "))
    assert {f"results/tables/subgroups.{ext}" for ext in ("csv", "md", "tex")} <= requested
    code, plain = _plan_with_sheet(workdir, sheet)
    assert code == 0 and "subgroups" not in plain


def test_the_demo_refuses_subgroups_at_load(workdir: Path) -> None:
    """The demo's sheet (zoommil synth) has no site column: refused when the workflow loads,
    not by the tables job after every training run."""
    result = harness.snakemake(workdir, "-n", "--config", "report={subgroups: [site]}", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Building DAG" not in text
    assert "(the demo's, zoommil synth) has no column site (it has slide_id, path" in text, text


def _site_sheet(folder: Path, sites: list[str]) -> Path:
    """The CAMELYON16 preset's fake sheet with a site column (a value per slide)."""
    sheet = fake_sheet(folder, PRESETS["camelyon16"])
    lines = sheet.read_text().splitlines()
    rows = [f"{line}\t{site}" for line, site in zip(lines[1:], sites, strict=True)]
    sheet.write_text("\n".join([lines[0] + "\tsite", *rows]) + "\n")
    return sheet


def test_a_subgroup_column_missing_from_the_sheet_fails_before_any_job(workdir: Path) -> None:
    sheet = fake_sheet(workdir / "no_site", PRESETS["camelyon16"])
    code, text = _plan_with_sheet(workdir, sheet, "report={subgroups: [site]}")
    assert code != 0 and "Building DAG" not in text
    assert "has no column site (it has slide_id, path, label, split, mpp" in text, text[-3000:]


def test_a_test_slide_without_a_subgroup_value_is_named_before_any_job(workdir: Path) -> None:
    sites = ["a", "a", "b", "", "", "a"]  # s3 a val slide, s4 a test one
    sheet = _site_sheet(workdir / "empty_site", sites)
    code, text = _plan_with_sheet(workdir, sheet, "report={subgroups: [site]}")
    assert code != 0 and "Building DAG" not in text
    assert "1 test slide without a 'site' value: s4" in text, text[-3000:]


def test_figure_4_left_out_plans_no_prediction(workdir: Path) -> None:
    """figures.attention.method: null (a config whose methods have no attention to draw)
    plans no prediction, and the rest of the run as before; Figure 4 is drawn saying it is
    left out (an earlier config's maps stayed in results/figures beside the new results)."""
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    demo["methods"] = {m: demo["methods"][m] for m in ("meanmil", "sparseconvmil")}
    demo["ablations"] = None
    demo["efficiency"]["methods"] = ["meanmil"]
    demo["figures"]["attention"]["method"] = None
    jobs = harness.planned_jobs(workdir, harness.write_config(workdir, demo, "no_fig4.yaml"))
    assert jobs["figure_attention"] == 1 and "predict" not in jobs
    assert jobs["train"] == 2 and jobs["tables"] == jobs["qc_exclusions"] == 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_dry_run(workdir: Path, preset: str) -> None:
    sheet = fake_sheet(workdir / f"sheet_{preset}", PRESETS[preset])
    jobs = harness.planned_jobs(
        workdir, workdir / "config" / f"{preset}.yaml", "--config", f"sheet={sheet}"
    )
    config = yaml.safe_load((workdir / "config" / f"{preset}.yaml").read_text())
    assert "synth" not in jobs
    assert jobs["inspect"] == 6
    assert jobs["qc_inspect"] == 1
    ablations = (config.get("ablations") or {}).get("methods") or {}
    assert jobs["train"] == len(config["methods"]) * 3 + len(ablations) * 3


def test_a_cpu_features_job_asks_for_one_encoder_per_thread(workdir: Path) -> None:
    """On a CPU-only site (`gpu: 0`), `zoommil features --threads 8` runs 8 encoder
    processes: with UNI (1984 MB a process, benchmarks/process_memory.py) the rule's flat
    6000 MB killed it."""
    sheet = fake_sheet(workdir / "sheet_cpu_features", PRESETS["camelyon16"])
    result = harness.snakemake(
        workdir, "-n", "-p", "results/features/s0.h5", "--set-threads", "features=8",
        "--set-resources", "features:gpu=0", "--config", f"sheet={sheet}",
        configfile=workdir / "config" / "camelyon16_uni.yaml", cores=8,
    )  # fmt: skip
    out = result.stdout + result.stderr
    command = next(line for line in out.splitlines() if "zoommil features " in line)
    assert "--device cpu " in command and "--threads 8 " in command
    (mem_mb,) = harness.job_lines(result, r"^\s*resources: .*\bmem_mb=(\d+)")["features"]
    assert int(mem_mb) >= 8 * 1984, mem_mb


@pytest.mark.parametrize(("resources", "hidden"), [([], False), (["--resources", "gpu=0"], True)])
def test_the_gpu_timing_leaves_a_gpu_the_run_did_not_grant(
    workdir: Path, resources: list[str], hidden: bool
) -> None:
    """`--resources gpu=0` runs `features` on CPU, but the GPU timing job (its gpu=1 lowered
    to 0) still ran `zoommil profile --device cuda` on the visible GPU. The GPU is hidden
    from it now: it writes the skip note, as where there is no GPU."""
    sheet = fake_sheet(workdir / "sheet_gpu_timing", PRESETS["camelyon16"])
    result = harness.snakemake(
        workdir, "-n", "-p", "results/efficiency/zoommil/throughput_gpu.json", *resources,
        "--config", f"sheet={sheet}", configfile=workdir / "config" / "camelyon16.yaml",
    )  # fmt: skip
    out = result.stdout + result.stderr
    line = next(line for line in out.splitlines() if "zoommil profile " in line)
    assert "--device cuda " in line, line
    assert ("CUDA_VISIBLE_DEVICES= zoommil profile " in line) == hidden, line


@pytest.mark.parametrize(
    ("resources", "slot"), [(["--resources", "gpu=4"], True), (["--resources", "gpu=0"], False)]
)
def test_a_job_granted_a_gpu_claims_one_of_its_own(
    workdir: Path, resources: list[str], slot: bool
) -> None:
    """Snakemake names no GPU to a local job, so on a 4-GPU node `--resources gpu=4` ran 4
    features jobs on cuda:0. A job granted a GPU now runs behind `zoommil.workflow.gpu_slot`;
    a CPU job does not."""
    sheet = fake_sheet(workdir / "sheet_gpu_slot", PRESETS["camelyon16"])
    result = harness.snakemake(
        workdir, "-n", "-p", "results/features/s0.h5",
        "results/efficiency/zoommil/throughput_gpu.json", *resources,
        "--config", f"sheet={sheet}", configfile=workdir / "config" / "camelyon16.yaml",
    )  # fmt: skip
    out = result.stdout + result.stderr
    for command in ("features", "profile"):
        line = next(line for line in out.splitlines() if f"zoommil {command} " in line)
        assert (f"-m zoommil.workflow.gpu_slot -- zoommil {command} " in line) == slot, line


@pytest.mark.parametrize(
    ("target", "command"),
    [("results/tissue/s0.png", "tissue"), ("results/predict/zoommil/s0.json", "predict")],
)
def test_a_job_detecting_tissue_runs_opencv_on_the_threads_it_declares(
    workdir: Path, target: str, command: str
) -> None:
    """The tissue rule and Figure 4's predict jobs (which detect the slide's tissue in their
    own process) declare one thread, but OpenCV's blurs and resizes took every core of the
    machine beside the jobs running on the others (a workstation's `--cores 32`)."""
    sheet = fake_sheet(workdir / f"sheet_{command}_threads", PRESETS["camelyon16"])
    result = harness.snakemake(
        workdir, "-n", "-p", target, "--config", f"sheet={sheet}",
        configfile=workdir / "config" / "camelyon16.yaml", cores=4,
    )  # fmt: skip
    out = result.stdout + result.stderr
    line = next(line for line in out.splitlines() if f"zoommil {command} " in line)
    assert f"OPENCV_FOR_THREADS_NUM=1 zoommil {command} " in line, line


def test_a_features_job_counts_the_reader_processes_features_args_start(workdir: Path) -> None:
    """`features.args: {workers: 24}` starts 24 reader processes (~150 MB each) beside the
    encoder: the GPU job then needs more than the rule's 6000 MB floor, which it asked for
    whatever the workers."""
    sheet = fake_sheet(workdir / "sheet_workers", PRESETS["camelyon16"])
    config = yaml.safe_load((workdir / "config" / "camelyon16_uni.yaml").read_text())
    config["features"]["args"] = {"workers": 24}
    configfile = harness.write_config(workdir, config, "uni_workers.yaml")
    result = harness.snakemake(
        workdir, "-n", "results/features/s0.h5", "--config", f"sheet={sheet}",
        configfile=configfile,
    )  # fmt: skip
    (mem_mb,) = harness.job_lines(result, r"^\s*resources: .*\bmem_mb=(\d+)")["features"]
    readers = 24 * 150
    assert int(mem_mb) >= 1984 + readers + 1000 > 6000, mem_mb


def test_an_auto_cache_cohort_beyond_the_cap_is_sized_as_read_from_disk(tmp_path: Path) -> None:
    """`cache: auto` with bags above `cache_max_gb` keeps none in memory (`load_splits`):
    once QC has listed 60 GiB of feature files against a 40 GiB cap, a train job asks for its
    step's peak (the rule's 8000 MB floor), not the cap's 42,360 MB; 48 GiB are beyond the
    cap for the methods that read 10x and 20x, not for those that read 20x alone (~38 GiB of
    it); under the cap, a job asks for what the files hold."""
    workdir = harness.copy_workflow(tmp_path / "wf", with_sources=False)
    sheet = fake_sheet(workdir / "sheet", PRESETS["camelyon16"])
    config = yaml.safe_load((workdir / "config" / "camelyon16.yaml").read_text())
    config["train"]["extra"] = {"cache_max_gb": 40}
    configfile = harness.write_config(workdir, config, "cap40.yaml")
    listed = workdir / manifest.MANIFEST
    listed.parent.mkdir(parents=True)

    def train_mem_mb(gib_a_file: int) -> set[str]:
        rows = [f"s{i}\tresults/features/s{i}.h5\t{gib_a_file * 2**30}\t1\n" for i in range(6)]
        listed.write_text("slide_id\tpath\tbytes\tmtime_ns\n" + "".join(rows))
        result = harness.snakemake(
            workdir, "-n", "--config", f"sheet={sheet}", configfile=configfile
        )
        return harness.job_lines(result, r"^\s*resources: .*\bmem_mb=(\d+)")["train"]

    assert train_mem_mb(10) == {"8000"}
    assert train_mem_mb(8) == {"8000", "42360", "43560"}  # TransMIL's step: 2600 MB
    under = train_mem_mb(5)  # 30 GiB: kept in memory
    assert min(map(int, under)) >= 30 * 1024, under


def test_a_preset_warns_at_load_of_imagenet_weights_not_on_this_machine(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights are never downloaded: without the file, each features job failed only after
    every slide's tiling, and the dry run said nothing (review G)."""
    sheet = fake_sheet(workdir / "sheet_weights", PRESETS["camelyon16"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    configfile = workdir / "config" / "camelyon16.yaml"
    dry = harness.snakemake(workdir, "-n", "--config", f"sheet={sheet}", configfile=configfile)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert (
        f"zoommil: warning: on this machine, ImageNet weights not found at {path}. Every "
        "features job fails unless the machine that runs it has the file"
    ) in dry.stderr


def test_missing_slide_file_is_excluded_and_the_rest_runs(tmp_path: Path) -> None:
    """A sheet row whose file does not exist reaches `zoommil inspect` (status `missing`)
    and is excluded with its reason; it does not stop the DAG (MissingInputException)."""
    workdir = harness.copy_workflow(tmp_path / "wf", with_sources=False)
    sheet = fake_sheet(workdir / "sheet", PRESETS["camelyon16"])
    with sheet.open("a") as handle:
        handle.write("gone\tnowhere.svs\ttumor\ttest\t\n")
    args = ("--config", f"sheet={sheet}")
    camelyon16 = workdir / "config" / "camelyon16.yaml"
    jobs = harness.planned_jobs(workdir, camelyon16, *args)
    assert jobs["inspect"] == 7 and jobs["qc_inspect"] == 1, jobs
    # the inspection stage for real (the empty files are not slides either)
    harness.snakemake(workdir, "results/qc/inspection.tsv", *args, configfile=camelyon16)
    qc = pd.read_csv(workdir / "results/qc/inspection.tsv", sep="\t", keep_default_na=False)
    gone = qc.set_index("slide_id").loc["gone"]
    tried = (sheet.parent / "nowhere.svs").resolve()  # the reason names the file looked for
    assert (gone["status"], gone["reason"]) == ("missing", f"file not found: {tried}")
    assert set(qc["slide_id"]) == {"gone"} | {f"s{i}" for i in range(6)}
    # so every split is empty after QC: the checkpoint stops, before any training, naming them
    result = harness.snakemake(
        workdir, "results/qc/slides.tsv", *args, configfile=camelyon16, check=False
    )
    log = (workdir / "results/logs/qc_slides/qc_slides.log").read_text()
    assert result.returncode != 0
    assert "qc_slides: error: no usable train slides after QC: all " in log, log
    assert "warning: no usable" not in log  # no class-by-class warnings beside the stop
    kept = workdir / "results/qc/slides.failed.tsv"  # slides.tsv is gone with the failed job
    assert log.rstrip().endswith(f"every slide and its reason: {kept.relative_to(workdir)}")
    table = pd.read_csv(kept, sep="\t", keep_default_na=False)
    assert set(table["slide_id"]) == {"gone"} | {f"s{i}" for i in range(6)}


def test_slide_ids_that_look_missing_are_planned_after_inspection(tmp_path: Path) -> None:
    """Slide ids 'NA', 'null', 'None', 'nan' pass the sheet's validation ('NaN' and 'NULL'
    too, but not beside 'nan' and 'null': ids must differ ignoring case); the
    inspection table read them back as NaN, and planning after inspection failed with
    "'<' not supported between instances of 'str' and 'float'".

    The files all have the same name in folders of their own (d0/slide.tiff, ...): each
    output names its sheet slide_id, not the file stem ("slide" for all six)."""
    from slide_factory import write_pyramid_tiff

    workdir = harness.copy_workflow(tmp_path / "wf", with_sources=False)
    folder = workdir / "sheet"
    folder.mkdir()
    ids = ["NA", "null", "None", "nan", "s4", "s5"]
    splits = ["train", "train", "train", "val", "test", "test"]  # a train slide per class
    rows = []
    for i, (slide_id, split) in enumerate(zip(ids, splits, strict=True)):
        (folder / f"d{i}").mkdir()
        write_pyramid_tiff(folder / f"d{i}/slide.tiff", width=512, height=512, mpp=1.0, seed=i)
        rows.append(f"{slide_id}\td{i}/slide.tiff\t{PRESETS['camelyon16'][i % 2]}\t{split}\t\n")
    sheet = folder / "slides.tsv"
    sheet.write_text(harness.SHEET_HEADER + "".join(rows))
    args = ("--config", f"sheet={sheet}")
    camelyon16 = workdir / "config" / "camelyon16.yaml"
    harness.snakemake(workdir, "results/qc/inspection.tsv", *args, configfile=camelyon16)
    qc = pd.read_csv(workdir / "results/qc/inspection.tsv", sep="\t", keep_default_na=False)
    assert sorted(qc["slide_id"]) == sorted(ids) and set(qc["status"]) == {"ok"}, qc
    for slide_id in ids:
        report = json.loads((workdir / f"results/qc/{slide_id}.json").read_text())
        assert report["slide_id"] == slide_id, report
    jobs = harness.planned_jobs(workdir, camelyon16, *args)  # planning after the checkpoint
    assert jobs["tissue"] == jobs["tile"] == jobs["features"] == 6, jobs
    result = harness.snakemake(workdir, "-n", "-p", *args, configfile=camelyon16)
    lines = (result.stdout + result.stderr).splitlines()
    features = [line for line in lines if "zoommil features " in line]
    assert len(features) == 6, features
    assert sorted(line.split("--slide-id ")[1].split()[0] for line in features) == sorted(ids)


def _plan_with_sheet(
    workdir: Path, sheet: Path, *config: str, targets: tuple[str, ...] = ()
) -> tuple[int, str]:
    """`snakemake -n` of the CAMELYON16 preset on ``sheet`` (and ``config`` entries, e.g.
    ``classes=`` for none), for ``targets`` (none: the default): (exit code, its output)."""
    result = harness.snakemake(
        workdir,
        "-n",
        *targets,
        "--config",
        f"sheet={sheet}",
        *config,
        configfile=workdir / "config" / "camelyon16.yaml",
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _expect_sheet_error(workdir: Path, rows: list[str], needle: str, *config: str) -> str:
    sheet = fake_sheet(workdir / "bad", PRESETS["camelyon16"], rows=rows)
    results = workdir / "results"
    shutil.rmtree(results, ignore_errors=True)
    code, text = _plan_with_sheet(workdir, sheet, *config)
    assert code != 0
    assert needle in text, text[-3000:]
    assert "Building DAG" not in text  # failed while reading the sheet: no job was planned
    assert not results.exists()
    return text


def test_sheet_warnings_come_from_the_main_process_only(workdir: Path) -> None:
    """A cluster job loads the workflow again (`--mode remote`): the sheet's warnings were
    repeated in every job's log of a cohort, pointing a user reading a failed job's log at an
    unrelated sheet matter (review C). The main process still says them, once."""
    sheet = fake_sheet(workdir / "sheet_warned", ["normal", "tumor"])
    config = ("--config", f"sheet={sheet}", "classes=[normal,tumor]")
    configfile = workdir / "config" / "camelyon16.yaml"
    warning = "no val slides of class(es) normal"
    main = harness.snakemake(workdir, "-n", *config, configfile=configfile)
    assert (main.stdout + main.stderr).count(warning) == 1
    job = harness.snakemake(
        workdir, "-n", "--mode", "remote", "--target-jobs", "provenance:",
        *config, configfile=configfile, check=False,
    )  # fmt: skip
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    assert warning not in job.stdout + job.stderr


def test_sheet_missing_column_fails_before_any_job(workdir: Path) -> None:
    sheet = workdir / "nolabel" / "slides.tsv"
    sheet.parent.mkdir(exist_ok=True)
    (sheet.parent / "a.svs").write_bytes(b"")
    sheet.write_text("slide_id\tpath\tsplit\na\ta.svs\ttrain\n")
    code, text = _plan_with_sheet(workdir, sheet)
    assert code != 0
    assert "missing column(s) label" in text


def test_a_sheet_kept_beside_the_config_file_is_pointed_at(workdir: Path) -> None:
    """`sheet:` is relative to the working directory; written relative to the config file
    beside it, the error now names the sheet it found there."""
    folder = workdir / "my_cohort"
    sheet = fake_sheet(folder, PRESETS["camelyon16"])
    config = yaml.safe_load((workdir / "config" / "camelyon16.yaml").read_text())
    config["sheet"] = sheet.name
    path = harness.write_config(folder, config, "my.yaml")
    result = harness.snakemake(workdir, "-n", configfile=path, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"not to the config file: write the sheet's absolute path, {sheet}" in text, text


def test_sheet_unknown_label_names_the_row(workdir: Path) -> None:
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumour\ttest\t\n"]
    text = _expect_sheet_error(workdir, rows, "row 2 (slide_id 'b'): unknown label 'tumour'")
    assert "expected one of normal, tumor" in text


def test_sheet_duplicate_slide_id_names_the_row(workdir: Path) -> None:
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\ttest\t\n", "a\tc.svs\ttumor\tval\t\n"]
    _expect_sheet_error(workdir, rows, "row 3 (slide_id 'a'): duplicate slide_id 'a'")


def test_sheet_bad_split_and_mpp_name_the_row(workdir: Path) -> None:
    _expect_sheet_error(workdir, ["a\ta.svs\tnormal\ttraining\t\n"], "row 1 (slide_id 'a')")
    _expect_sheet_error(workdir, ["a\ta.svs\tnormal\ttrain\t900\n"], "outside 0.05-5.0")


def test_sheet_path_with_braces_names_the_row(workdir: Path) -> None:
    """Snakemake reads braces in an input path as wildcards: a slide 'a{x}.svs' stopped the
    planning with `WildcardError in rule inspect ... 'x'`, naming no row."""
    folder = workdir / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "a{x}.svs").write_bytes(b"")  # an existing file is what reached the input
    rows = ["a\ta{x}.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\tval\t\n"]
    rows.append("c\tc.svs\ttumor\ttest\t\n")
    text = _expect_sheet_error(workdir, rows, "row 1 (slide_id 'a'): path 'a{x}.svs' contains")
    assert "Snakemake reads braces in a path as wildcards; rename the file" in text
    assert "WildcardError" not in text


def test_sheet_path_to_a_dicom_folder_names_a_file_to_write(workdir: Path) -> None:
    """A DICOM WSI is a folder of .dcm files (one per pyramid level), but OpenSlide opens it
    only from one of them: a sheet naming the folder had the slide excluded at inspection as
    `missing` ("not a file"), with no word on what to write instead."""
    dicom = workdir / "bad" / "TCGA-XX-0001"
    dicom.mkdir(parents=True, exist_ok=True)
    for name in ("1.2.3.2.dcm", "1.2.3.1.dcm"):
        (dicom / name).write_bytes(b"")
    rows = ["a\tTCGA-XX-0001\tnormal\ttrain\t\n", "b\tb.svs\ttumor\ttrain\t\n"]
    rows += ["c\tc.svs\ttumor\tval\t\n", "d\td.svs\tnormal\ttest\t\n"]  # a valid sheet else
    text = _expect_sheet_error(workdir, rows, "row 1 (slide_id 'a'): path ")
    assert f"{dicom} is a folder, not a slide file; it holds 2 DICOM file(s)" in text, text
    assert f"name one, e.g. {dicom / '1.2.3.1.dcm'}" in text


def test_sheet_paths_that_are_urls_name_the_row_and_what_to_do(workdir: Path) -> None:
    """A sheet row `s3://bucket/x.svs` (a cohort in a bucket) was resolved as a relative
    path: the dry run warned of a missing `<sheet folder>/s3:/bucket/x.svs` and the slide
    was excluded at inspection as `missing`, the others going on. zoommil reads files only
    (OpenSlide), so the sheet is refused at load, naming the row, the other URL rows and
    how to stage the slides, before the loader's warnings."""
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\ttrain\t\n"]
    rows += ["c\tc.svs\ttumor\tval\t\n", "d\td.svs\tnormal\ttest\t\n"]
    rows += ["e\ts3://bucket/e.svs\ttumor\ttest\t\n", "f\tgs://bucket/f.svs\tnormal\ttest\t\n"]
    text = _expect_sheet_error(
        workdir, rows, "row 5 (slide_id 'e') (also 'f'): path s3://bucket/e.svs is a URL, and "
        "zoommil reads slides from a file system"
    )  # fmt: skip
    assert "`aws s3 sync s3://BUCKET/PREFIX /data/slides`" in text
    assert "s3:/bucket" not in text and "do not exist" not in text
    rows[4:] = ["e\thttps://example.org/e.svs\ttumor\ttest\t\n"]
    _expect_sheet_error(workdir, rows, "download them to a local or network file system")
    code, text = _plan_with_sheet(workdir, "s3://bucket/slides.tsv")
    assert code != 0 and "Building DAG" not in text
    assert "slide sheet s3://bucket/slides.tsv is a URL: the workflow reads its sheet" in text


def _dicom_sheet(folder: Path, a: str, b: str = "b.svs") -> Path:
    """A CAMELYON16 sheet in ``folder`` whose train slides are ``a`` (a DICOM file) and
    ``b``, with a plain val and test slide."""
    rows = [f"a\t{a}\tnormal\ttrain\t\n", f"b\t{b}\ttumor\ttrain\t\n"]
    rows += ["c\tc.svs\ttumor\tval\t\n", "d\td.svs\tnormal\ttest\t\n"]
    return fake_sheet(folder, PRESETS["camelyon16"], rows=rows)


def test_a_dicom_slides_other_level_files_are_its_inputs(workdir: Path) -> None:
    """OpenSlide reads a DICOM WSI's levels from the other .dcm files beside the one the sheet
    names: a level file added or removed changed the slide's pyramid (and its features) while
    the workflow, watching only the named file, planned nothing."""
    folder = workdir / "dicom_inputs"
    (folder / "a").mkdir(parents=True, exist_ok=True)
    (folder / "a" / "level0.dcm").write_bytes(b"")  # empty: inspect writes a marker, fast
    sheet = _dicom_sheet(folder, "a/level0.dcm")
    args = ("--config", f"sheet={sheet}")
    camelyon16 = workdir / "config" / "camelyon16.yaml"
    harness.snakemake(workdir, "results/qc/a.json", *args, configfile=camelyon16)
    assert harness.planned_jobs(workdir, camelyon16, "results/qc/a.json", *args) == {}
    (folder / "a" / "level1.dcm").write_bytes(b"")  # a level downloaded later
    code, text = _plan_with_sheet(workdir, sheet, targets=("results/qc/a.json",))
    assert code == 0, text[-3000:]
    assert "wildcards: slide=a" in text and "level1.dcm" in text, text[-3000:]  # redone


def test_a_dicom_file_with_braces_beside_a_slide_plans(workdir: Path) -> None:
    """The other .dcm files of a slide's folder are inputs of its jobs, and Snakemake reads
    braces in an input as a wildcard: one such file beside the named one stopped the whole
    DAG with a WildcardError, though the sheet's own paths are checked for braces."""
    folder = workdir / "dicom_braces"
    (folder / "a").mkdir(parents=True, exist_ok=True)
    for name in ("level0.dcm", "level1 {copy}.dcm", "level2.dcm"):
        (folder / "a" / name).write_bytes(b"")
    sheet = _dicom_sheet(folder, "a/level0.dcm")
    code, text = _plan_with_sheet(workdir, sheet, targets=("results/qc/a.json",))
    assert code == 0 and "WildcardError" not in text, text[-3000:]
    assert "level2.dcm" in text and "{copy}" not in text


def test_dicom_slides_sharing_a_folder_watch_only_their_named_files(workdir: Path) -> None:
    """Two slides' .dcm files in one folder: tying each slide to every file of the folder
    made planning grow with slides x files (300 slides of 6 files: 51 s and 700 MB for a
    dry run), so such slides watch only their named file, and a warning says so."""
    folder = workdir / "dicom_shared"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a0.dcm", "a1.dcm", "b0.dcm", "b1.dcm"):
        (folder / name).write_bytes(b"")
    sheet = _dicom_sheet(folder, "a0.dcm", "b0.dcm")
    code, text = _plan_with_sheet(workdir, sheet, targets=("results/qc/a.json",))
    assert code == 0, text[-3000:]
    assert "1 folder(s) hold the .dcm files of several slides" in text, text[-3000:]
    assert "a0.dcm" in text and "a1.dcm" not in text and "b1.dcm" not in text


def test_sheet_file_with_braces_fails_before_any_job(workdir: Path) -> None:
    sheet = fake_sheet(workdir / "sheet{x}", PRESETS["camelyon16"])
    code, text = _plan_with_sheet(workdir, sheet)
    assert code != 0
    assert f"invalid slide sheet: slide sheet {sheet}: the path contains '{{' or '}}'" in text
    assert "Building DAG" not in text and "WildcardError" not in text


def test_sheet_without_validation_slides_fails_before_any_job(workdir: Path) -> None:
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\ttest\t\n"]
    _expect_sheet_error(workdir, rows, "no val slides")


def test_class_without_train_slides_fails_before_any_job(workdir: Path) -> None:
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\tval\t\n"]
    rows.append("c\tc.svs\ttumor\ttest\t\n")
    _expect_sheet_error(workdir, rows, "no train slides of class(es) tumor")


def test_inferred_classes_need_two_labels_and_train_slides_of_each(workdir: Path) -> None:
    """`classes:` left empty (the sheet's labels are the classes): a one-label sheet, or a
    label with no train slide, was planned and trained."""
    one = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\tnormal\tval\t\n"]
    one.append("c\tc.svs\tnormal\ttest\t\n")
    _expect_sheet_error(workdir, one, "the sheet has one label, 'normal'", "classes=")
    rows = ["a\ta.svs\tnormal\ttrain\t\n", "b\tb.svs\ttumor\tval\t\n"]
    rows.append("c\tc.svs\ttumor\ttest\t\n")
    _expect_sheet_error(workdir, rows, "no train slides of class(es) tumor (it has", "classes=")


def test_config_schema_rejects_bad_values(workdir: Path) -> None:
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["methods"]["zoommil"]["selection"] = "greedy"
    path = harness.write_config(workdir, config, "bad_config.yaml")
    result = harness.snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert "greedy" in result.stdout + result.stderr


def test_a_key_given_twice_in_a_config_file_fails_naming_it(workdir: Path) -> None:
    """Snakemake reads config files keeping the last of two equal keys; the workflow refuses
    them before any job, naming the file, the key and both lines."""
    text = (workdir / "config" / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("  epochs: "))
    lines.insert(first + 1, "  epochs: 3\n")
    path = workdir / "epochs_twice.yaml"
    path.write_text("".join(lines))
    result = harness.snakemake(workdir, "-n", configfile=path, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    message = f"config: {path}: key 'epochs' is given twice (lines {first + 1} and {first + 2})"
    assert message in text, text
    assert "Building DAG" not in text


def test_a_file_of_changes_is_layered_over_a_complete_config(workdir: Path) -> None:
    """A config file holding only what an ablation changes was refused alone (a --configfile
    replaces config.yaml) with advice only to copy a preset; the refusal now names the way
    that keeps the file small: after a complete config in one --configfile, whose other
    values (here the seeds and every method) it keeps."""
    changes = workdir / "changes.yaml"
    changes.write_text("ablations: null\ntrain:\n  seeds_in_one_job: false\n")
    alone = harness.snakemake(workdir, "-n", configfile=changes, check=False)
    assert alone.returncode != 0
    assert "`--configfile config/config.yaml changes.yaml`" in alone.stdout + alone.stderr
    jobs = harness.planned_jobs(workdir, None, "--configfile", "config/config.yaml", str(changes))
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    assert jobs["train"] == len(demo["methods"]) * len(demo["train"]["seeds"]) == 27


def test_an_lr_written_1e_4_plans(workdir: Path) -> None:
    """PyYAML reads `lr: 1e-4` (no dot) as a string; the workflow takes it as the number the
    user meant instead of failing the schema with "not of type 'number'"."""
    text = (workdir / "config" / "config.yaml").read_text()
    text, n = re.subn(r"(?m)^  lr: .*$", "  lr: 1e-4", text)
    assert n == 1
    path = workdir / "lr_exponent.yaml"
    path.write_text(text)
    result = harness.snakemake(workdir, "-n", "--quiet", configfile=path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nested_command_line_numbers_plan(workdir: Path) -> None:
    """Snakemake reads a nested `--config` value with YAML's base loader, so `epochs: 5` there
    was the string '5' and the schema refused it ("'5' is not of type 'integer'")."""
    override = "train={epochs: 5, seeds: [0, 1, 2], early_stopping: null}"
    sigma = "methods={zoommil: {arch: zoommil, k: 4, sigma: 0.002}}"
    result = harness.snakemake(
        workdir, "-n", "--quiet", "--config", override, sigma, "dataset=2024", check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelled_features_flag_fails_at_load(workdir: Path) -> None:
    """`batchsize` reached every features job's command line ("unrecognized arguments"),
    after all the tiling; and the exact name of a flag the workflow passes got only the
    schema's "should not be valid under {'enum': ...}"."""
    for args, needle in (
        ("{batchsize: 16}", "features.args: 'batchsize' is not a flag of zoommil features"),
        ("{threads: 2}", "snakemake --set-threads features=N"),
    ):
        override = f"features={{args: {args}}}"
        result = harness.snakemake(workdir, "-n", "--config", override, check=False)
        text = result.stdout + result.stderr
        assert result.returncode != 0 and needle in text, text
        assert "Building DAG" not in text


def test_mpp_in_tile_args_is_refused(workdir: Path) -> None:
    """Tiling uses the mpp inspection resolved: an mpp in tile_args could never reach
    inspection (and would contradict it), so the config schema refuses it."""
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["preprocess"]["tile_args"] = {"default_mpp": 0.25}
    path = harness.write_config(workdir, config, "tile_args_mpp.yaml")
    result = harness.snakemake(workdir, "-n", "--quiet", configfile=path, check=False)
    assert result.returncode != 0
    assert "default_mpp" in result.stdout + result.stderr and "tile_args" in result.stdout + (
        result.stderr
    )


def _method_option_typo(config: dict) -> None:
    config["methods"]["zoommil"]["sigm"] = 0.005


def _bad_mags(config: dict) -> None:
    config["preprocess"]["mags"] = [5, 15]


def _attention_of_meanmil(config: dict) -> None:
    config["figures"]["attention"]["method"] = "meanmil"


def _attention_seed_not_trained(config: dict) -> None:
    config["figures"]["attention"]["seed"] = 7


def _misspelled_key(config: dict) -> None:
    config["train"]["epoch"] = 5


def _dropout_above_one(config: dict) -> None:
    config["methods"]["abmil"]["dropout"] = 2.0


def _sheet_in_demo_mode(config: dict) -> None:
    config["sheet"] = "my_slides.tsv"


def _arch_typo(config: dict) -> None:
    config["methods"]["abmil"]["arch"] = "abmi"


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            _method_option_typo,
            "config: method 'zoommil': model 'zoommil' does not take option(s) sigm",
        ),
        (_bad_mags, "config: preprocess/features: magnifications 5x and 15x are not power-of-two"),
        (
            _attention_of_meanmil,
            "config: figures.attention.method must be a method with attention (any "
            "architecture but meanmil and sparseconvmil), got 'meanmil' (arch meanmil)",
        ),
        (
            _attention_seed_not_trained,
            "config: figures.attention.seed is not one of the method's seeds: 7 (seeds of "
            "'zoommil': 0, 1, 2)",
        ),
        (_misspelled_key, "config: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        (
            _dropout_above_one,
            "config: method 'abmil': model 'abmil': option dropout must be a number in [0, 1), "
            "got 2.0",
        ),
        (_sheet_in_demo_mode, "config: sheet: 'my_slides.tsv' is ignored in demo mode"),
        (
            _arch_typo,
            "config: methods.abmil.arch: unknown architecture 'abmi' (did you mean 'abmil'?)",
        ),
    ],
    ids=[
        "method_option_typo",
        "bad_recipe",
        "attention_not_zoommil",
        "attention_seed",
        "misspelled_key",
        "dropout_at_load",
        "sheet_in_demo_mode",
        "arch_typo",
    ],
)
def test_bad_config_fails_with_one_line_before_any_job(workdir: Path, spoil, message) -> None:
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    spoil(config)
    path = harness.write_config(workdir, config, f"{spoil.__name__.strip('_')}.yaml")
    result = harness.snakemake(workdir, "-n", configfile=path, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in text
    assert "Building DAG" not in text


def test_imported_library_must_be_the_tracked_one(tmp_path: Path) -> None:
    """The rules hash the sources beside the Snakefile; a zoommil imported from elsewhere (a
    non-editable install, another clone) is refused at parse time, naming the fix."""
    workflow.check_imported_library(workflow.library_root(harness.REPO))  # this checkout
    with pytest.raises(ZoomMILError, match=r"run `pip install -e \.` in "):
        workflow.check_imported_library(tmp_path / "src" / "zoommil")


def test_workflow_refuses_to_run_another_zoommil_than_it_tracks(tmp_path: Path) -> None:
    workdir = harness.copy_workflow(tmp_path / "wf")  # its own src/, not the one imported
    result = harness.snakemake(workdir, "--list-rules", import_copy=False, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"tracks the zoommil sources in {(workdir / 'src' / 'zoommil').resolve()}" in text
    assert f"run `pip install -e .` in {workdir.resolve()}" in text
    assert f"PYTHONPATH={(workdir / 'src').resolve()}" in text
    # with the copy's sources imported (what harness.snakemake does), it parses
    harness.snakemake(workdir, "--list-rules")


def test_conda_envs_install_zoommil_from_the_snakefile_checkout(tmp_path, monkeypatch) -> None:
    """ZOOMMIL_SOURCE (what envs/*.post-deploy.sh install) is the Snakefile's folder, not the
    imported package's parents[3]: for a non-editable install those are site-packages'
    parents, and here (a copy importing this checkout's zoommil) another checkout."""
    workdir = harness.copy_workflow(tmp_path / "wf", with_sources=False)
    with (workdir / "Snakefile").open("a") as snakefile:
        snakefile.write('\nprint("ZOOMMIL_SOURCE=" + os.environ["ZOOMMIL_SOURCE"])\n')
        snakefile.write('print("ZOOMMIL_LIBRARY=" + os.environ["ZOOMMIL_LIBRARY"])\n')
    # a value left in the shell (the post-deploy script's error suggests setting it) named
    # another checkout, and won over the Snakefile's
    monkeypatch.setenv("ZOOMMIL_SOURCE", str(tmp_path / "another_checkout"))
    result = harness.snakemake(workdir, "--list-rules")
    assert f"ZOOMMIL_SOURCE={workdir.resolve()}\n" in result.stdout + result.stderr
    # the library the jobs must import: this copy has no sources, so the one it imports
    assert f"ZOOMMIL_LIBRARY={harness.REPO / 'src' / 'zoommil'}\n" in result.stdout + result.stderr


DEPLOYED_SNAKEFILE = """\
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


module zoommil:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from zoommil as zoommil_*
"""


def test_the_checkout_is_found_from_the_rules_folder(tmp_path: Path) -> None:
    """The checkout is two folders above workflow/rules, whichever Snakefile is the main one;
    a module read from a URL (`github(...)`) has none to hash, and says so."""
    rules = tmp_path / "zoommil" / "workflow" / "rules"
    assert checkout.checkout_root(str(rules)) == (tmp_path / "zoommil").resolve()
    with pytest.raises(ZoomMILError, match="needs a local checkout"):
        checkout.checkout_root("https://github.com/o/zoommil/raw/v1/workflow/rules")


def test_the_workflow_runs_as_a_module_of_a_deployment(tmp_path: Path) -> None:
    """A deployment folder (as snakedeploy writes: workflow/Snakefile with `module zoommil:`
    naming this checkout's Snakefile, config/ copied) parses and plans every rule: the rules'
    code hashes looked for scripts/ beside the deployment's Snakefile (`workflow.basedir`)."""
    checkout = harness.copy_workflow(tmp_path / "zoommil", with_sources=False)
    deployment = tmp_path / "deployment"
    (deployment / "workflow").mkdir(parents=True)
    (deployment / "workflow" / "Snakefile").write_text(
        DEPLOYED_SNAKEFILE.format(snakefile=checkout / "Snakefile")
    )
    (deployment / "config").mkdir()
    fake_sheet(deployment, PRESETS["camelyon16"])
    config = harness.load_config()
    config["classes"] = PRESETS["camelyon16"]
    harness.write_config(deployment / "config", config, "config.yaml")
    jobs = harness.planned_jobs(deployment)
    assert jobs["zoommil_inspect"] == 6 and jobs["zoommil_all"] == 1
    # an unguarded `configfile:` (snakedeploy's) under a --configfile is warned of
    unguarded = (deployment / "workflow" / "Snakefile").read_text()
    unguarded = unguarded.replace("if not workflow.overwrite_configfiles:\n\n    ", "")
    (deployment / "workflow" / "Snakefile").write_text(unguarded)
    preset = harness.write_config(deployment / "config", config, "preset.yaml")
    result = harness.snakemake(deployment, "-n", configfile=preset)
    assert "zoommil: warning: config: config/config.yaml (a `configfile:`" in result.stderr


def test_snakemake_without_zoommil_says_to_install_it(tmp_path, monkeypatch) -> None:
    """An environment with Snakemake only (the jobs in conda envs) failed with a bare
    `No module named 'zoommil'` in common.smk."""
    stub = tmp_path / "stub" / "zoommil"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'zoommil'\", name='zoommil')\n"
    )
    workdir = harness.copy_workflow(tmp_path / "wf", with_sources=False)
    monkeypatch.setenv("PYTHONPATH", str(stub.parent))
    result = harness.snakemake(workdir, "--list-rules", check=False, import_copy=False)
    assert result.returncode != 0
    assert (
        f"cannot import zoommil: run `pip install -e .` in {workdir.resolve()} in this environment"
    ) in result.stdout + result.stderr


def test_lint_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"],
        cwd=harness.REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_is_clean() -> None:
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed")
    result = subprocess.run(
        [snakefmt, "--check", "Snakefile", "workflow/"],
        cwd=harness.REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_pattern(path: str) -> str:
    """A regex of a rule's output path (or a part of it): each `{wildcard}` any name."""
    path = path.replace("{{", "{").replace("}}", "}")
    return "".join(
        "[^`/ ]+" if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{\w+\})", path)
    )


def test_the_readme_outputs_name_every_output_of_the_rules() -> None:
    """The README's Outputs table left out Figure 4's predictions (results/predict/) and the
    QC step's inspection.tsv, usable.tsv and features.tsv: each file the rules write (logs
    apart) is named there, its folder and its file name (`main.{csv,md}` read as both)."""
    readme = (harness.REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Outputs") : readme.index("### Statistics")]
    section = re.sub(
        r"([\w.~-]*)\{(\w+(?:,\w+)+)\}",
        lambda m: " ".join(m[1] + alt for alt in m[2].split(",")),
        section,
    )
    rules = "".join(p.read_text() for p in (harness.REPO / "workflow" / "rules").glob("*.smk"))
    outputs = set(re.findall(r'"(results/[^"]+\.[a-z]+)"', rules)) | {str(manifest.MANIFEST)}
    unnamed = [
        path
        for path in sorted(outputs)
        if not path.startswith("results/logs/")
        and not all(re.search(_readme_pattern(part), section) for part in path.rsplit("/", 1))
    ]
    assert unnamed == []


def test_a_torchscript_archive_as_the_weights_fails_at_load(workdir: Path) -> None:
    """Every features job failed on it with "not a torch file of tensors: unreadable"."""
    torch = pytest.importorskip("torch")
    archive = workdir / "lab_model.pt"
    torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3)).save(str(archive))
    override = f"features={{weights: {archive}}}"
    result = harness.snakemake(workdir, "-n", "--config", override, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Building DAG" not in text, text
    assert f"config: features.weights: {archive}: a TorchScript archive" in text, text


def test_a_patient_spelt_in_two_cases_in_two_splits_fails_before_any_job(workdir: Path) -> None:
    """The leakage guard compared patient ids case-sensitively: TCGA-AB-1234 in train and
    tcga-ab-1234 in test (the same patient) planned a run that tested on a trained patient."""
    folder = workdir / "patients"
    folder.mkdir()
    rows = [("a", "normal", "train", "TCGA-AB-1234"), ("b", "tumor", "train", "P2")]
    rows += [("c", "tumor", "val", "P3"), ("d", "normal", "test", " tcga-ab-1234")]
    for slide, *_ in rows:
        (folder / f"{slide}.svs").write_bytes(b"")
    sheet = folder / "slides.tsv"
    lines = [f"{s}\t{s}.svs\t{label}\t{split}\t{p}\n" for s, label, split, p in rows]
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tpatient\n" + "".join(lines))
    code, text = _plan_with_sheet(workdir, sheet)
    assert code != 0
    assert "patient ids 'TCGA-AB-1234', 'tcga-ab-1234' differ only in case" in text, text[-3000:]
    assert "'a' ('TCGA-AB-1234', train), 'd' ('tcga-ab-1234', test)" in text
    assert "Building DAG" not in text
