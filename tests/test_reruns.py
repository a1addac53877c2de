"""Partial reruns: after a complete tiny run, a changed config or library file plans only the
jobs that depend on it (dry runs with the default --rerun-triggers, which include params: each
rule's `code` param hashes the import closure of what it runs)."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
from slide_factory import write_pyramid_tiff
from workflow_config import harness

from zoommil.workflow import orphans

pytestmark = pytest.mark.slow

PREPROCESS = {"inspect", "qc_inspect", "tissue", "tile", "features", "qc_slides"}
# the jobs over every method; provenance records the config, so any config change redoes it
AGGREGATES = {"tables", "figure_throughput", "figure_attention", "qc_exclusions", "provenance",
              "model_cards", "all"}  # fmt: skip


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return harness.tiny_run(tmp_path_factory)


def plan(workdir: Path, config: dict, name: str) -> dict[str, int]:
    return harness.planned_jobs(workdir, harness.write_config(workdir, config, name))


def test_unchanged_config_plans_nothing(tiny) -> None:
    workdir, configfile, _ = tiny
    assert harness.planned_jobs(workdir, configfile) == {}


def test_training_parameter_reruns_training_and_what_follows(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["train"]["epochs"] += 1
    jobs = plan(workdir, config, "epochs.yaml")
    assert not PREPROCESS & set(jobs), jobs
    assert jobs["train"] == 4 and "evaluate" not in jobs  # the train job evaluates
    assert jobs["flops"] == 1 and jobs["tables"] == 1  # one job counts every method


def test_method_parameter_reruns_only_that_method(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["methods"]["abmil"]["dropout"] = 0.1
    jobs = plan(workdir, config, "abmil.yaml")
    assert jobs["train"] == 1  # abmil seed 0 only
    assert jobs["flops"] == 1  # the one FLOPs job (every method: ~0.3 s each)
    assert set(jobs) <= {"train", "flops"} | AGGREGATES, jobs


def test_tissue_parameter_reruns_from_tissue_detection(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["preprocess"]["tissue"]["params"] = {"sigma": 12}
    jobs = plan(workdir, config, "tissue.yaml")
    assert "inspect" not in jobs and "qc_inspect" not in jobs
    # the 7 slides that passed inspection (not bad_mpp)
    assert jobs["tissue"] == jobs["tile"] == jobs["features"] == 8
    assert jobs["qc_slides"] == 1 and jobs["train"] == 4


def test_tiling_threshold_reruns_from_tiling(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["preprocess"]["tissue"]["threshold"] = 0.2
    jobs = plan(workdir, config, "threshold.yaml")
    assert "tissue" not in jobs and "inspect" not in jobs
    assert jobs["tile"] == jobs["features"] == 8


def test_mpp_fallbacks_rerun_only_the_slides_that_use_them(tiny, tmp_path) -> None:
    """`default_mpp` and the sheet's mpp are fallbacks (DESIGN: after every metadata source):
    setting them reruns the (cheap) inspection of every slide, but tissue, tiles and features
    only of a slide whose resolved mpp changed: bad_mpp (implausible metadata) now gets 0.5,
    a sheet mpp does not override a slide's valid metadata (the QC table's mpp_note says
    so), and the sheet's mpp_override does."""
    workdir, _, _ = tiny
    scratch = tmp_path / "mpp"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    # the copy's sheet names its own slide files (relative to the run's folder, as the jobs
    # recorded them), and gives the first (a demo slide, with plausible metadata) an mpp of 0.3
    header, *rows = (workdir / "slides.tsv").read_text().splitlines()
    rows = [[*row.split("\t"), ""] for row in rows]
    rows[0][4] = "0.3"
    first, second = rows[0][0], rows[1][0]
    rows[1][-1] = "0.98"  # its metadata says 1.0
    text = "\n".join([f"{header}\tmpp_override"] + ["\t".join(row) for row in rows]) + "\n"
    (scratch / "slides.tsv").write_text(text)
    config = harness.load_config()
    config["default_mpp"] = 0.5
    configfile = harness.write_config(scratch, config, "default_mpp.yaml")
    result = harness.snakemake(scratch, "results/qc/slides.tsv", configfile=configfile)
    ran = harness.executed(result)
    assert len(ran["inspect"]) == 9, ran
    for rule in ("tissue", "tile", "features"):
        assert ran.get(rule) == {"bad_mpp", second}, ran
    qc = pd.read_csv(scratch / "results/qc/slides.tsv", sep="\t", keep_default_na=False)
    qc = qc.set_index("slide_id")
    assert qc.loc["bad_mpp", "status"] == "ok" and qc.loc["bad_mpp", "mpp_source"] == "default"
    assert qc.loc[first, "mpp_source"] == "openslide.mpp-x" and qc.loc[first, "mpp"] != 0.3
    assert (
        "the sheet's mpp 0.3 is not used: the metadata's 1 um/px (openslide.mpp-x) comes first"
        in (qc.loc[first, "mpp_note"])
    )
    assert (qc.loc[second, "mpp_source"], qc.loc[second, "mpp"]) == ("override", 0.98)
    with h5py.File(scratch / "results" / "features" / f"{second}.h5", "r") as h5:
        assert (h5.attrs["mpp"], h5.attrs["mpp_source"]) == (0.98, "override")
    said = "qc_inspect: warning: the mpp of "  # on the terminal, naming the slide
    assert said in result.stderr and first in result.stderr.split(said)[1].splitlines()[0]
    again = harness.snakemake(scratch, "-n", "results/qc/slides.tsv", configfile=configfile)
    assert "Nothing to be done" in again.stdout + again.stderr  # settled in one pass
    # the whole benchmark: two passes settle (README: Snakemake plans Figure 4's predictions
    # downstream of the QC checkpoints only in the second)
    for _ in range(2):
        harness.snakemake(scratch, configfile=configfile)
    again = harness.snakemake(scratch, "-n", configfile=configfile)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_slide_file_gone_after_inspection_is_excluded_not_the_run(tiny, tmp_path) -> None:
    """A slide moved away after inspection (its tissue, tiles and features still to do)
    becomes that slide's failure marker; before, the rules listed the file as an input and
    the whole DAG stopped with a MissingInputException."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "gone"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    qc = pd.read_csv(scratch / "results/qc/slides.tsv", sep="\t", keep_default_na=False)
    slide_id = qc.loc[qc["status"] == "ok", "slide_id"].iloc[0]
    others_ok = set(qc.loc[qc["status"] == "ok", "slide_id"]) - {slide_id}
    sheet = pd.read_csv(scratch / "slides.tsv", sep="\t").set_index("slide_id")
    path = sheet.loc[slide_id, "path"]
    assert not Path(path).is_absolute()  # the copy's own file, not the shared tiny run's
    for stage, ext in (("tissue", "png"), ("coords", "h5"), ("features", "h5")):
        (scratch / "results" / stage / f"{slide_id}.{ext}").unlink()
    (scratch / "results/qc/slides.tsv").unlink()
    # the copy's sheet names its own data/ files; --rerun-triggers mtime: the inspection
    # stays done (as when the file goes while the run is past it), the input set may change
    (scratch / path).rename(scratch / "gone.tiff")
    result = harness.snakemake(
        scratch, "results/qc/slides.tsv", "--rerun-triggers", "mtime", configfile=configfile
    )
    qc = pd.read_csv(scratch / "results/qc/slides.tsv", sep="\t", keep_default_na=False)
    row = qc.set_index("slide_id").loc[slide_id]
    assert (row["status"], row["stage"]) == ("missing", "tissue"), (row, result.stderr[-3000:])
    assert set(qc.loc[qc["status"] == "ok", "slide_id"]) == others_ok


def test_a_slide_file_gone_after_its_features_stops_the_run_naming_it(tiny, tmp_path) -> None:
    """Slides archived after feature extraction or an unmounted share: the changed input set
    reran the slide's inspection, which excluded it as missing, and every model was retrained
    without it, silently (review E). A run now stops before any job, naming the slide; a
    dry run says so, and --unlock (or --report) still works (review G); a slide gone before
    its features were made still becomes its own failure marker (above)."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "archived"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    listed = pd.read_csv(scratch / "results/qc/features.tsv", sep="\t")
    slide_id = listed["slide_id"].iloc[0]
    sheet = pd.read_csv(scratch / "slides.tsv", sep="\t").set_index("slide_id")
    path = sheet.loc[slide_id, "path"]
    (scratch / path).rename(scratch / "archived.tiff")
    before = {p: p.stat().st_mtime_ns for p in (scratch / "results").rglob("*") if p.is_file()}
    said = (
        f"1 slide file(s) gone since their features were made: {slide_id} ({path}). Restore "
        "them (or fix their paths in the sheet), or remove their rows from the sheet"
    )
    dry = harness.snakemake(scratch, "-n", configfile=configfile)
    assert f"zoommil: {said}" in dry.stderr and "; a run stops on this before" in dry.stderr
    run = harness.snakemake(scratch, configfile=configfile, check=False)
    assert run.returncode != 0 and said in run.stdout + run.stderr, run.stdout[-2000:]
    assert "inspect" not in harness.executed(run)
    harness.snakemake(scratch, "--unlock", configfile=configfile)
    after = {p: p.stat().st_mtime_ns for p in (scratch / "results").rglob("*") if p.is_file()}
    assert after == before
    (scratch / "archived.tiff").rename(scratch / path)  # restored: nothing to redo
    assert harness.planned_jobs(scratch, configfile) == {}


def test_a_slide_replaced_with_an_older_file_date_is_redone_naming_it(tiny, tmp_path) -> None:
    """A re-scan copied over a slide with the archive's date kept (cp -p, rsync -a) is older
    than its outputs: Snakemake planned nothing, and the models kept the old scan's features,
    silently (review R). Its ctime and quickhash tell: its chain is redone, named."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "rescanned"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    slide_id = pd.read_csv(scratch / "results/qc/features.tsv", sep="\t")["slide_id"].iloc[0]
    path = pd.read_csv(scratch / "slides.tsv", sep="\t").set_index("slide_id").loc[slide_id, "path"]
    assert harness.planned_jobs(scratch, configfile) == {}  # the copy alone: nothing to redo
    older = (scratch / path).stat().st_mtime_ns - 3600 * 10**9
    write_pyramid_tiff(scratch / path, seed=5)  # another scan of the slide, 20x
    os.utime(scratch / path, ns=(older, older))
    said = (
        f"1 slide file(s) replaced since their inspection by other content with an older file "
        f"date (a copy that kept the file's date: cp -p, rsync -a): {slide_id} ({path}); "
    )
    dry = harness.snakemake(scratch, "-n", configfile=configfile)
    assert f"zoommil: {said}the next run redoes their inspection" in dry.stderr, dry.stderr
    target = "results/qc/features.tsv"
    run = harness.snakemake(scratch, target, configfile=configfile)
    assert f"{said}redoing their inspection" in run.stderr
    done = harness.executed(run)
    assert {rule: done[rule] for rule in ("inspect", "tissue", "tile", "features")} == {
        rule: {slide_id} for rule in ("inspect", "tissue", "tile", "features")
    }
    assert harness.planned_jobs(scratch, configfile, target) == {}
    assert "replaced since" not in harness.snakemake(scratch, "-n", configfile=configfile).stderr


def test_the_same_settings_in_another_order_rerun_nothing(tiny) -> None:
    """README: config keys, a method's options in another order rerun nothing (a method's
    options in another order redid the tables, whose params hold the methods)."""
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["methods"]["zoommil"] = {"k": 2, "arch": "zoommil"}
    ablation = {"selection": "random", "k": 2, "arch": "zoommil"}
    config["ablations"]["methods"]["zoommil_random"] = ablation
    config["train"] = dict(reversed(config["train"].items()))
    assert plan(workdir, config, "reordered.yaml") == {}


def test_features_execution_options_rerun_nothing(tiny) -> None:
    """`features.args` (batch size, reader processes) sets how features are computed, not what
    they are (the same features bit for bit, like --threads and --device): a new value
    re-extracted every slide's features and retrained every model."""
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["features"]["args"] = {"batch_size": 8, "workers": 0}
    configfile = harness.write_config(workdir, config, "features_args.yaml")
    assert set(harness.planned_jobs(workdir, configfile)) <= {"provenance", "all"}
    # the jobs that do run still get them
    forced = harness.snakemake(workdir, "-n", "-p", "--forcerun", "features", configfile=configfile)
    assert "--batch-size 8 --workers 0 --no-fail" in forced.stdout + forced.stderr, forced


def test_more_attention_slides_predict_and_redraw_figure_4(tiny) -> None:
    """Figure 4's predictions are checkpoint targets, for which Snakemake skips the params
    check: the settings file is what makes a new n_slides plan the missing predictions."""
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["figures"]["attention"]["n_slides"] += 1
    jobs = plan(workdir, config, "attention.yaml")
    assert jobs["attention_settings"] == 1 and jobs["predict"] >= 1, jobs
    assert jobs["figure_attention"] == 1 and jobs["qc_exclusions"] == 1, jobs
    assert not PREPROCESS & set(jobs) and "train" not in jobs, jobs


def test_figure_4_switched_off_is_redrawn_saying_so_not_kept(tiny, tmp_path) -> None:
    """figures.attention.method: null planned no Figure 4 job, so the maps an earlier config
    drew stayed in results/figures beside the new tables. The figure is redrawn saying it is
    left out (as `ablations: null` rewrites Table 4 to say so), with no prediction."""
    from zoommil.reporting import figure_attention

    workdir, _, _ = tiny
    scratch = tmp_path / "off"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    config = copy.deepcopy(harness.load_config())
    config["figures"]["attention"]["method"] = None
    configfile = harness.write_config(scratch, config, "off.yaml")
    jobs = harness.planned_jobs(scratch, configfile)
    assert jobs.get("figure_attention") == 1 and "predict" not in jobs, jobs
    harness.snakemake(scratch, configfile=configfile)
    expected = tmp_path / "off.pdf"  # the same figure drawn here: PDFs are byte-identical
    layout = figure_attention.attention_figure([], "", [expected], None, config["dataset"], "")
    assert layout["empty"] == figure_attention.OFF
    drawn = scratch / "results" / "figures" / "attention.pdf"
    assert drawn.read_bytes() == expected.read_bytes()
    assert harness.planned_jobs(scratch, configfile) == {}


def test_new_seed_only_adds_jobs(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["train"]["seeds"] = [0, 1]  # the ablation keeps its own seeds: [0]
    jobs = plan(workdir, config, "seeds.yaml")
    assert jobs["train"] == 3  # seed 1 of the 3 main methods
    assert set(jobs) <= {"train"} | AGGREGATES, jobs


def test_new_method_only_adds_jobs(tiny) -> None:
    workdir, _, _ = tiny
    config = copy.deepcopy(harness.load_config())
    config["methods"]["maxmil"] = {"arch": "maxmil"}
    jobs = plan(workdir, config, "method.yaml")
    assert jobs["train"] == jobs["flops"] == 1
    assert set(jobs) <= {"train", "flops"} | AGGREGATES, jobs


def test_seeds_in_one_job_trains_each_seed_as_its_own_job_did(tiny, tmp_path) -> None:
    """train.seeds_in_one_job: one job per method trains seeds 0 and 1 in one process, and
    seed 0 comes out bit for bit as the tiny run's per-seed job made it."""
    workdir, _, _ = tiny
    grouped = tmp_path / "grouped"
    shutil.copytree(workdir, grouped, symlinks=True)  # copy2: the outputs stay up to date
    config = copy.deepcopy(harness.load_config())
    config["train"]["seeds"] = config["ablations"]["seeds"] = [0, 1]
    config["train"]["seeds_in_one_job"] = True
    configfile = harness.write_config(grouped, config, "grouped.yaml")
    jobs = harness.planned_jobs(grouped, configfile)
    assert jobs["train"] == 4  # one per method (3 + 1 ablation), each for seeds 0 and 1
    target = "results/models/meanmil/seed~1/checkpoint.pt"
    harness.snakemake(grouped, target, configfile=configfile)
    log = (grouped / "results/logs/train/meanmil/seeds.log").read_text()
    assert "meanmil seed 0:" in log and "meanmil seed 1:" in log

    def weights(run: Path, seed: int) -> dict[str, torch.Tensor]:
        path = run / f"results/models/meanmil/seed~{seed}/checkpoint.pt"
        return torch.load(path, weights_only=True)["state_dict"]

    alone, together = weights(workdir, 0), weights(grouped, 0)
    assert all(torch.equal(alone[k], together[k]) for k in alone)
    assert any(not torch.equal(alone[k], v) for k, v in weights(grouped, 1).items())

    bad = copy.deepcopy(config)
    bad["ablations"]["seeds"] = [0]
    result = harness.snakemake(
        grouped, "-n", configfile=harness.write_config(grouped, bad, "bad.yaml"), check=False
    )
    assert result.returncode != 0
    assert "train.seeds_in_one_job needs ablations.seeds equal to train.seeds" in (
        result.stdout + result.stderr
    )


def edit(workdir: Path, relative: str, addition: bytes) -> tuple[Path, bytes, os.stat_result]:
    """Append ``addition`` to a library file of the copy, dated after every output."""
    path = workdir / "src" / "zoommil" / relative
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(original + addition)
    os.utime(path, (stat.st_atime, time.time() + 60))
    return path, original, stat


def restore(path: Path, original: bytes, stat: os.stat_result) -> None:
    path.write_bytes(original)
    os.utime(path, (stat.st_atime, stat.st_mtime))


def code_changed(reasons: dict[str, set[str]]) -> set[str]:
    """Rules planned because a param changed: after a code edit, only the `code` param (the
    import closure's hash) can have (Snakemake names the old and new values, not the param);
    the rules downstream are planned for updated input files instead."""
    return {
        rule for rule, texts in reasons.items() if any("Params have changed" in t for t in texts)
    }


@pytest.mark.parametrize(
    ("relative", "importers"),
    [
        ("inference/predict.py", {"predict", "profile"}),
        # (model_cards imports it too, but follows the tables: planned for their new files)
        ("reporting/table_frames.py", {"tables", "figure_throughput", "figure_attention"}),
        ("efficiency/flops.py", {"flops"}),
        ("../../scripts/provenance.py", set()),  # the record's own script
    ],
)
def test_behaviour_edit_reruns_exactly_the_rules_that_import_it(tiny, relative, importers):
    workdir, configfile, _ = tiny
    edited = edit(workdir, relative, b"\nEDITED_BY_A_TEST = 1\n")
    try:
        reasons = harness.rerun_reasons(workdir, configfile)
    finally:
        restore(*edited)
    # and provenance.json, which records the commit: it named the one before the edit
    assert code_changed(reasons) == importers | {"provenance"}, reasons


def test_comment_only_edit_reruns_nothing(tiny) -> None:
    workdir, configfile, _ = tiny
    edited = edit(workdir, "features/extraction.py", b"\n# a comment, and no code\n")
    try:
        assert harness.planned_jobs(workdir, configfile) == {}
    finally:
        restore(*edited)


def test_an_output_finished_after_snakemake_died_is_redone(tiny, tmp_path) -> None:
    """A features job that outlived a killed Snakemake process renamed its output into place
    with no metadata and its incomplete marker left: Snakemake alone kept it ("Nothing to be
    done") and never redid it for a changed config; the workflow dates it back so it is."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "orphan"
    shutil.copytree(workdir, scratch, symlinks=True)
    target = sorted((scratch / "results/features").glob("*.h5"))[0].relative_to(scratch)
    key = base64.urlsafe_b64encode(str(target).encode()).decode()
    (scratch / ".snakemake/metadata" / key).unlink()
    (scratch / ".snakemake/incomplete" / key).write_text('{"external_jobid": null}')

    dry = harness.snakemake(scratch, "-n", configfile=configfile)
    assert (
        f"zoommil: 1 output(s) written while their job or its Snakemake process was being "
        f"stopped, with no record of how they were made; the next run redoes them: {target}"
    ) in dry.stderr
    assert (scratch / target).stat().st_mtime > orphans.LONG_AGO  # a dry run changes nothing

    result = harness.snakemake(scratch, "results/qc/slides.tsv", configfile=configfile)
    assert "their jobs run again" in result.stderr
    assert harness.executed(result)["features"] == {target.stem}
    assert not (scratch / ".snakemake/incomplete" / key).exists()
    assert (scratch / ".snakemake/metadata" / key).exists()


def test_a_deleted_feature_file_is_extracted_again(tiny, tmp_path) -> None:
    """Deleting a feature file to have it re-extracted did nothing ("Nothing to be done":
    Snakemake does not remake a missing input of an up-to-date job, and training depends on
    the manifest only), and training then stopped on the missing file."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "deleted"
    shutil.copytree(workdir, scratch, symlinks=True)
    manifest = scratch / "results/qc/features.tsv"
    target = Path(pd.read_csv(manifest, sep="\t")["path"].iloc[0])
    (scratch / target).unlink()
    listed_before = manifest.stat().st_mtime

    dry = harness.snakemake(scratch, "-n", configfile=configfile)
    assert (
        "zoommil: 1 feature file(s) listed in results/qc/features.tsv are missing; the next run "
        f"extracts them again, and what was trained on them is redone: {target}"
    ) in dry.stderr
    assert manifest.stat().st_mtime == listed_before  # a dry run changes nothing

    result = harness.snakemake(scratch, "results/qc/features.tsv", configfile=configfile)
    assert "they are extracted again" in result.stderr
    assert harness.executed(result)["features"] == {target.stem}
    listed = pd.read_csv(manifest, sep="\t").set_index("path")  # rewritten by qc_slides
    assert listed.loc[target.as_posix(), "mtime_ns"] == (scratch / target).stat().st_mtime_ns
    assert harness.planned_jobs(scratch, configfile, "results/qc/features.tsv") == {}


def test_a_copied_project_folder_has_nothing_to_do(tiny, tmp_path) -> None:
    """The rules name the slides and the sheet relative to the run's folder where they lie
    inside it: a copied or moved project (another scratch path, a renamed checkout) planned
    every inspection again, then every slide's tissue, tiles and features and all training,
    because the sheet's paths were resolved to absolute ones in the params (review S)."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "moved"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    assert harness.planned_jobs(scratch, configfile) == {}


def test_a_fresh_clone_of_the_same_code_has_nothing_to_do(tiny, tmp_path) -> None:
    """A clone dates every script now: Snakemake's own code trigger compares a script rule's
    script mtime with its outputs', and reran QC, then every training after it (review C).
    The profiles leave that trigger out; the `code` params still see a script's content."""
    workdir, configfile, _ = tiny
    scratch = tmp_path / "cloned"
    shutil.copytree(workdir, scratch, symlinks=True)  # copy2: the outputs stay up to date
    later = time.time() + 60
    scripts = sorted((scratch / "scripts").glob("*.py"))
    assert scripts
    for script in scripts:
        os.utime(script, (later, later))
    assert harness.planned_jobs(scratch, configfile) == {}
    tables = scratch / "scripts" / "make_tables.py"
    tables.write_text(tables.read_text() + "\nEDITED_BY_A_TEST = 1\n")
    # and provenance.json, which records the commit
    assert code_changed(harness.rerun_reasons(scratch, configfile)) == {"tables", "provenance"}
