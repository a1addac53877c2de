# Helpers only (no rules): config and sheet validation, slide lists, targets.
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import validate

try:
    import zoommil
except ModuleNotFoundError:
    raise WorkflowError(
        f"the Python that runs Snakemake ({sys.executable}) cannot import zoommil: run "
        f"`pip install -e .` in {Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1]} in this environment (with "
        "--sdm conda too: the workflow itself imports zoommil to check the config and build "
        "the rules' params; the conda envs only run the jobs)"
    ) from None
from zoommil.errors import ZoomMILError
from zoommil.workflow import cache as zcache
from zoommil.workflow import qc as zqc
from zoommil.io import sheet as zsheet
from zoommil.io import yamlio as zyaml
from zoommil.recipe import PreprocessingRecipe, method_mags
from zoommil.workflow import checkout as zcheckout
from zoommil.workflow import codehash as zcode
from zoommil.workflow import config_checks as zconfig
from zoommil.workflow import container as zcontainer
from zoommil.workflow import failure as zfailure
from zoommil.workflow import joblogs as zjoblogs
from zoommil.workflow import manifest as zmanifest
from zoommil.workflow import orphans as zorphans
from zoommil.workflow import patients as zpatients
from zoommil.workflow import replaced as zreplaced
from zoommil.workflow import slide_folders as zfolders
from zoommil.workflow import slide_urls as zurls
from zoommil.workflow import spares as zspares
from zoommil.workflow import trainconfig as ztrain
from zoommil.workflow import params as zwf
from zoommil.workflow import provenance as zprovenance
from zoommil.workflow import shown as zshown
from zoommil.workflow import resources as zresources
from zoommil.workflow import timers as ztimers
from zoommil.workflow import vanished as zvanished
from zoommil.workflow import weights as zweights
from zoommil.reporting import subgroups as zsubgroups

# A user id without a passwd entry (`docker run -u 1234`): Snakemake's run header asks for a
# user name and stopped with a KeyError traceback (zoommil.workflow.container).
MISSING_USER = zcontainer.set_missing_user()
if MISSING_USER:
    print(MISSING_USER, file=sys.stderr)
try:
    # The checkout of this file, not `workflow.basedir`: the folder of the main Snakefile,
    # a deployment's own where zoommil is a module (`module zoommil:`, snakedeploy).
    CHECKOUT = zcheckout.checkout_root(
        workflow.current_basedir.get_path_or_uri(secret_free=True)
    )
except ZoomMILError as error:
    raise WorkflowError(str(error)) from None

try:
    # Snakemake keeps the last of a key given twice in a config file: refuse it instead.
    zyaml.check_unique_keys(workflow.configfiles)
except ZoomMILError as error:
    raise ValueError(f"config: {error}") from None
MERGED_CONFIGFILES = zconfig.merged_configfiles_warning(
    workflow.configfiles, workflow.overwrite_configfiles
)
if MERGED_CONFIGFILES and workflow.is_main_process:
    print(MERGED_CONFIGFILES, file=sys.stderr)
# `lr: 1e-4` (YAML 1.1) and a nested `--config 'train={epochs: 50}'` give strings
CONFIG_SCHEMA = yaml.safe_load(
    open(workflow.source_path("../schemas/config.schema.yaml"), encoding="utf-8")
)
zconfig.scalars_from_strings(config, CONFIG_SCHEMA)
try:
    # before the schema, whose message for these buries the key under a dump of the config
    zconfig.check_config_keys(config, CONFIG_SCHEMA)
except ZoomMILError as error:
    raise ValueError(f"config: {error}") from None
try:
    # before the schema, which refuses these names too but says only "should not be valid"
    zconfig.check_extra_flags(config)
except ZoomMILError as error:
    raise ValueError(f"config: {error}") from None
try:
    # before the schema, whose refusal of an arch names neither list a model is added to
    zconfig.check_method_archs(
        config, CONFIG_SCHEMA, zwf.library_root(CHECKOUT) / "models"
    )
except ZoomMILError as error:
    raise ValueError(f"config: {error}") from None
validate(config, schema="../schemas/config.schema.yaml")
if config.get("sheet"):
    # `sheet: ~/slides.tsv`: neither Snakemake's inputs nor the shell (quoted) expand `~`
    config["sheet"] = os.path.expanduser(config["sheet"])

DEMO = config.get("synth") is not None
# the demo's synth settings, `zoommil synth`'s defaults filled in; {} for real data
SYNTH = zconfig.synth_settings(config)
DEMO_DIR = "results/demo"
# Paths named in several places, spelt once. The manifest is also where
# zoommil.workflow.manifest looks for deleted feature files.
FEATURE_MANIFEST = str(zmanifest.MANIFEST)
MODEL_CHECKPOINT = "results/models/{method}/seed~{seed}/checkpoint.pt"
LIB_ROOT = zwf.library_root(CHECKOUT)
try:
    zwf.check_imported_library(LIB_ROOT)  # the code the rules hash is the code they run
except ZoomMILError as error:
    raise WorkflowError(str(error)) from None
try:
    # One validated recipe: every preprocessing value a rule passes on comes from it.
    RECIPE = PreprocessingRecipe.from_config(config)
except ZoomMILError as error:
    raise ValueError(f"config: preprocess/features: {error}") from None
config["features"]["weights"] = RECIPE.weights  # the report names what the rules pass
# The sha256 of the weight file features read ('' for random, imagenet): other weights behind
# the same keyword or path rerun extraction (zoommil.workflow.weights).
WEIGHTS_SHA256 = zweights.weights_sha256(RECIPE.encoder, RECIPE.weights)
try:
    zweights.check_not_torchscript(RECIPE.encoder, RECIPE.weights)
except ZoomMILError as error:
    raise ValueError(f"config: features.weights: {error}") from None
# `--sdm conda`: envs/*.post-deploy.sh install zoommil from the checkout of this Snakefile
# (not the imported package's parents: those are site-packages for a non-editable install),
# whatever a shell left in the variable. Every job's zoommil refuses to run unless it is
# LIB_ROOT (zoommil/__init__.py): a conda env shared by two checkouts runs the first one's.
zwf.export_checkout(CHECKOUT, LIB_ROOT)
SLIDE_SCHEMA = yaml.safe_load(
    open(workflow.source_path("../schemas/slides.schema.yaml"), encoding="utf-8")
)

if not DEMO and not config.get("sheet"):
    raise ValueError(
        "config: set `sheet:` to your slide sheet (or `synth:` for the demo)"
    )
# Warnings about the sheet come from the main process only: every cluster job loads the
# workflow again, and 4000 job logs of a cohort would repeat them (the errors stay everywhere).
SHEET_WARNINGS = workflow.is_main_process
if not DEMO:
    # Real data: the sheet exists now, so a bad sheet fails before any job runs.
    try:
        # URLs (s3://, gs://, https://), before the loader resolves them as missing files
        zurls.check_sheet_path(config["sheet"])
        zurls.check_no_urls(
            zsheet.known_columns(zsheet.read_table(config["sheet"])), config["sheet"]
        )
        SHEET = zsheet.load_sheet(
            config["sheet"], config.get("classes"), SLIDE_SCHEMA, warn=SHEET_WARNINGS
        )
        zfolders.check_no_folders(
            list(SHEET["slide_id"]), list(SHEET["path"]), config["sheet"]
        )
        zpatients.check_patient_case(SHEET, config["sheet"])
        zsheet.check_splits(
            SHEET, config["sheet"], classes=config.get("classes"), warn=SHEET_WARNINGS
        )
    except ZoomMILError as error:
        hint = zconfig.sheet_beside_configfile(config["sheet"], workflow.configfiles)
        raise ValueError(f"invalid slide sheet: {error}{hint}") from None
# `report: {subgroups: [site]}`: sheet columns the tables stratify the test slides by. Read
# with .get, no schema default: an unset key must leave the config (provenance) as it was.
SUBGROUPS = list((config.get("report") or {}).get("subgroups") or [])
if SUBGROUPS:
    try:
        # now, not after training: the tables job would be the first to read the column
        # synth's sheet has its fixed columns (imported here only: it loads tifffile)
        if DEMO:
            import pandas as pd
            from zoommil.synth.dataset import SHEET_COLUMNS

            zsubgroups.check_columns(
                pd.DataFrame(columns=SHEET_COLUMNS),
                SUBGROUPS,
                "(the demo's, zoommil synth)",
            )
        else:
            zsubgroups.check_columns(SHEET, SUBGROUPS, config["sheet"])
    except ZoomMILError as error:
        raise ValueError(f"config: {error}") from None


def subgroup_outputs():
    """The subgroup table's files of the tables rule: none without `report.subgroups`."""
    if not SUBGROUPS:
        return {}
    return {
        "subgroups_csv": report(
            "results/tables/subgroups.csv",
            caption="../report/table_subgroups.rst",
            category="Tables",
        ),
        "subgroups_md": "results/tables/subgroups.md",
        "subgroups_tex": "results/tables/subgroups.tex",
    }


# DICOM folders holding several slides' files: their level files are not inputs.
DICOM_SHARED = frozenset() if DEMO else zfolders.shared_folders(list(SHEET["path"]))
SHARED_WARNING = zfolders.shared_folders_warning(DICOM_SHARED)
if SHEET_WARNINGS and SHARED_WARNING:
    print(SHARED_WARNING, file=sys.stderr)

VANISHED = []  # encoded slides whose file is gone (the main process fills it in)
if workflow.is_main_process:
    try:
        # Jobs that finished after a killed Snakemake process: see zoommil.workflow.orphans.
        for line in zorphans.outdate_orphaned_outputs(
            workflow.output_settings.dryrun,
            inputs=[] if DEMO else [zwf.run_path(path) for path in SHEET["path"]],
        ):
            print(line, file=sys.stderr)
        # The feature manifest's rows, read once for the two checks below.
        MANIFEST_ROWS = zmanifest.listed_rows()
        # Feature files deleted to be extracted again: see zoommil.workflow.manifest.
        for line in zmanifest.outdate_manifest_of_missing_files(
            workflow.output_settings.dryrun, rows=MANIFEST_ROWS
        ):
            print(line, file=sys.stderr)
        # Slides replaced with an older file date (cp -p): see zoommil.workflow.replaced.
        for line in (
            []
            if DEMO
            else zreplaced.outdate_replaced_slides(
                workflow.output_settings.dryrun,
                {slide: zwf.run_path(path) for slide, path in SHEET["path"].items()},
            )
        ):
            print(line, file=sys.stderr)
    except ZoomMILError as error:  # a colleague's file in a shared folder
        raise WorkflowError(str(error)) from None
    # Encoded slides whose file is gone: see zoommil.workflow.vanished. A run stops on
    # them (`onstart` in the Snakefile); a dry run says so, and --report, --unlock and the
    # like, which run no job, go on.
    VANISHED = (
        []
        if DEMO
        else zvanished.vanished_slides(
            {slide: zwf.run_path(path) for slide, path in SHEET["path"].items()},
            rows=MANIFEST_ROWS,
        )
    )
    # Cached weights (imagenet, hf) are looked for by the features jobs; one missing here is
    # said now, not after every slide's tiling (the nodes may have a cache this one lacks).
    UNSEEN = zweights.unseen_weights(RECIPE.encoder, RECIPE.weights)
    if UNSEEN:
        print(
            f"zoommil: warning: on this machine, {UNSEEN}. Every features job fails unless "
            "the machine that runs it has the file (README, section Encoders)",
            file=sys.stderr,
        )
    if VANISHED and workflow.output_settings.dryrun:
        print(
            f"zoommil: {zvanished.vanished_message(VANISHED)}; a run stops on this before "
            "its first job",
            file=sys.stderr,
        )


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",


CODE_ENTRIES = set()  # every command and script a rule's `code` param hashes


def code(*entries):
    """Hash of the code a step runs (a command's or script's import closure), for `params:`:
    a behaviour edit of any module it imports reruns the step, a comment-only edit nothing.
    """
    CODE_ENTRIES.update(entries)
    return zcode.code_hash(LIB_ROOT, entries, CHECKOUT)


def all_code(*entries):
    """Like `code`, for provenance.json, which records the commit: the hash of ``entries``
    (its own script) and of every rule's code, so that a behaviour edit that reruns any job
    rewrites the record (it named the commit before the edit). A param function, evaluated
    once every rule has given `code` its entries."""
    CODE_ENTRIES.update(entries)

    def hashed(wildcards):
        return zcode.code_hash(LIB_ROOT, sorted(CODE_ENTRIES), CHECKOUT)

    return hashed


def device(wildcards, resources):
    """`--device` of a torch command: a GPU only where the rule's resources request one
    (`gpu`, a gpu `gres` or `gpu_model`, as the SLURM plugin reads them)."""
    return zwf.torch_device(
        resources.get("gpu"), resources.get("gres"), resources.get("gpu_model")
    )


FEATURES_ARGS, FEATURES_EXECUTION_ARGS = zconfig.split_execution_args(
    config.get("features", {}).get("args"), zconfig.FEATURES_EXECUTION_FLAGS
)


def features_execution_flags(wildcards, threads):
    """`features.args`' flags that change how features are computed, not what they are
    (batch size, reader processes): a param function of `threads`, which Snakemake leaves
    out of its params rerun trigger, as it does `device` (a function of `resources`)."""
    return zwf.cli_flags(FEATURES_EXECUTION_ARGS)


def all_cores():
    """Every core of the run, so that nothing runs beside a timing job; 1 where no core
    count is given (`snakemake --report`, `--lint`)."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


# A container's CPU limit (`docker run --cpus 4`, a Kubernetes limit) is a cgroup quota that
# `--cores all` does not count: say so before the run starts a job per host core (only where
# the jobs run here, not from a cluster job's Snakemake). Not `--local-cores` under a cluster
# executor: Snakemake 9.27.1 stores it (ResourceSettings.local_cores) and never reads it.
if workflow.local_exec and not workflow.remote_exec:
    CORES_ABOVE_QUOTA = zcontainer.cores_above_quota(all_cores())
    if CORES_ABOVE_QUOTA:
        print(CORES_ABOVE_QUOTA, file=sys.stderr)


def output_dir(wildcards, output):
    """The folder of a rule's first output (commands that take --out DIR)."""
    return os.path.dirname(output[0])


def sheet_file():
    return f"{DEMO_DIR}/slides.tsv" if DEMO else zwf.run_path(config["sheet"])


def slides():
    """The validated sheet (demo: after `zoommil synth` has written it)."""
    if not DEMO:
        return SHEET
    path = checkpoints.synth.get().output.sheet
    return zcache.cached(
        path,
        "sheet",
        lambda p: zsheet.load_sheet(
            p, config.get("classes"), SLIDE_SCHEMA, warn=SHEET_WARNINGS
        ),
    )


def slide_path(wildcards):
    """The slide file relative to the run's folder where it lies inside (`zwf.run_path`), so
    that a copied or moved project folder is not new params for every slide."""
    return zwf.run_path(slides().loc[wildcards.slide, "path"])


def demo_sheet(wildcards):
    """Demo: the synth checkpoint's sheet, as an input of the rules whose params read it
    (`slide_path`) and whose slide input waits for another checkpoint: Snakemake plans a
    param that waits for a checkpoint only when that checkpoint's output is an input, and
    `snakemake results/coords/demo_003.h5` before synth ran failed with "Rule parameter
    depends on checkpoint". Real data: nothing (editing the sheet reruns no job)."""
    return checkpoints.synth.get().output.sheet if DEMO else []


def existing_slide(wildcards):
    """The slide file as an input where it exists, else no input: a sheet row whose file is
    missing still reaches `zoommil inspect` (the path goes through params), which reports
    it as `missing`, instead of stopping the whole DAG with a MissingInputException. A DICOM
    slide's other .dcm files (its other levels) are inputs too (`zfolders.series_inputs`).
    """
    path = slide_path(wildcards)
    return zfolders.series_inputs(path, DICOM_SHARED) if os.path.exists(path) else []


def slide_after_inspection(wildcards):
    """The slide, once the qc_inspect checkpoint is done: the rule's params read the mpp
    inspection resolved (a job planned before the table exists is rebuilt after it). Like
    `existing_slide`, no input once the file is gone: a slide moved away mid-run becomes
    that slide's failure marker, not a MissingInputException that stops every slide."""
    checkpoints.qc_inspect.get()
    return existing_slide(wildcards)


def inspect_mpp(wildcards):
    """`zoommil inspect`'s mpp flag: the sheet's mpp_override (--mpp), else its mpp, else the
    config's default_mpp (--default-mpp)."""
    row = slides().loc[wildcards.slide]
    return zwf.inspect_mpp_flag(
        row["mpp_override"], row["mpp"], config.get("default_mpp")
    )


def inspected_mpp(wildcards):
    """The mpp inspection resolved, as flags of a later command (none where the metadata
    gave it); the inspection table is parsed once per version, not per job."""
    table = checkpoints.qc_inspect.get().output.table
    return zwf.resolved_mpp_flag(
        zcache.column_by_slide(table, "mpp").get(wildcards.slide, ""),
        zcache.column_by_slide(table, "mpp_source").get(wildcards.slide, ""),
    )


def all_status(wildcards):
    return expand("results/qc/{slide}.json", slide=slides().index)


def inspected_ok():
    """Slides that passed inspection (after the qc_inspect checkpoint)."""
    return zcache.slides_with_status(checkpoints.qc_inspect.get().output.table)


def usable(split=None):
    """Slides used for training/evaluation (after the qc_slides checkpoint)."""
    return zcache.slides_with_status(
        checkpoints.qc_slides.get().output.table, split=split
    )


def inspected_features(wildcards):
    return expand("results/features/{slide}.h5", slide=inspected_ok())


def usable_features(wildcards):
    """What training/evaluation depend on: one manifest of the usable feature files (size,
    mtime), rewritten by qc_slides when any changes, not the N files themselves (listing
    them made Snakemake's scheduling O(N^2) in the cohort)."""
    return FEATURE_MANIFEST


# --- methods and seeds -------------------------------------------------------------------
try:
    # Methods, ablations, seeds and figure settings that disagree fail here, not after training.
    zconfig.check_config(config, LIB_ROOT / "models")
except ZoomMILError as error:
    raise ValueError(f"config: {error}") from None
MAIN_METHODS = zconfig.main_methods(config)
ABLATIONS = zconfig.ablation_methods(config)
ALL_METHODS = {**MAIN_METHODS, **ABLATIONS}
SEEDS = zconfig.train_seeds(config)
ABLATION_SEEDS = zconfig.ablation_seeds(config)
SEEDS_IN_ONE_JOB = bool(config["train"]["seeds_in_one_job"])
EFFICIENCY = config["efficiency"]
EFFICIENCY_METHODS = zconfig.efficiency_methods(config)
# The flops and profile jobs' methods, checkpoints and outputs, one order for all three (the
# commands pair them by position), by name: their command lines are rerun triggers, and a
# reordered `methods:` re-timed every method.
FLOPS_ORDER = sorted(ALL_METHODS)
TIMED_ORDER = sorted(EFFICIENCY_METHODS)
ATTENTION = config["figures"]["attention"]


def seeds_of(method):
    return ABLATION_SEEDS if method in ABLATIONS else SEEDS


def runs(prefix, suffix, methods=None):
    """Paths {prefix}{method}/seed~{seed}{suffix} for every method and its seeds."""
    return [
        f"{prefix}{m}/seed~{s}{suffix}"
        for m in (methods if methods is not None else ALL_METHODS)
        for s in seeds_of(m)
    ]


def run_files(pattern):
    """`pattern` ({method}, {seed}) for every method and its seeds."""
    return [pattern.format(method=m, seed=s) for m in ALL_METHODS for s in seeds_of(m)]


def run_paths(pattern):
    """A train job's files: {method} and {seed} in `pattern` per seed; with
    train.seeds_in_one_job, every seed's file of the job's {method}."""
    if not SEEDS_IN_ONE_JOB:
        return pattern
    return expand(pattern.replace("{method}", "{{method}}"), seed=SEEDS)


def train_seeds(wildcards):
    """The seeds a train job trains (`zoommil train --seed`)."""
    return (
        " ".join(map(str, seeds_of(wildcards.method)))
        if SEEDS_IN_ONE_JOB
        else wildcards.seed
    )


def run_dirs(wildcards, output):
    """The output folder of each seed of a train job (`zoommil train --out`)."""
    checkpoints = output.checkpoint if SEEDS_IN_ONE_JOB else [output.checkpoint]
    return " ".join(os.path.dirname(path) for path in checkpoints)


def first_file(wildcards, output):
    """The first train config of a train job (every seed's has the same text)."""
    return output.config[0] if SEEDS_IN_ONE_JOB else output.config


def first_seed_checkpoint(method):
    """The checkpoint of a method's first seed (FLOPs and timings use it)."""
    return MODEL_CHECKPOINT.format(method=method, seed=seeds_of(method)[0])


def attention_checkpoint(wildcards):
    seed = ATTENTION["seed"]
    return MODEL_CHECKPOINT.format(method=wildcards.method, seed=seed)


def train_config(wildcards):
    """The train config of one method as YAML text (the train job writes it to a file)."""
    config_of_method = ztrain.build_train_config(
        method=wildcards.method,
        spec=ALL_METHODS[wildcards.method],
        train=config["train"],
        mags=RECIPE.mags,
        classes=config.get("classes"),
        sheet=sheet_file(),
        features_dir="results/features",
        exclude="results/qc/slides.tsv",
    )
    return ztrain.dump_train_config(config_of_method)


def train_priority(wildcards):
    return ztrain.train_priority(wildcards.method, ALL_METHODS[wildcards.method])


def attention_predictions(wildcards):
    """Figure 4's predictions: test slides, classes in turn (`classes_in_turn`), up to the
    n-th whose prediction succeeds, with the failed ones before it (the figure notes them,
    qc_exclusions lists them).
    `predict` is a checkpoint: a prediction not made yet holds its place (its output is a
    checkpoint target), and once it is made this is evaluated again, so a failed one is
    replaced by the next test slide. Only the predictions up to the n-th success are read.
    """
    method = ATTENTION["method"]
    if method is None:  # figures.attention.method: null: no maps to draw
        return []
    files = {}

    def succeeded(slide):
        try:
            files[slide] = checkpoints.predict.get(
                method=method, slide=slide
            ).output.json
        except IncompleteCheckpointException as pending:
            files[slide] = pending.targetfile
            return None
        return zfailure.read_marker(files[slide]) is None

    n = ATTENTION["n_slides"]
    test = usable("test")
    shown = zspares.classes_in_turn(test, slides().loc[test, "label"])
    return [files[s] for s in zspares.first_successes(shown, n, succeeded)]


def throughput_files(device):
    if device == "gpu" and not zwf.time_on_gpu(EFFICIENCY["gpu"]):
        return []
    return [
        f"results/efficiency/{m}/throughput_{device}.json" for m in EFFICIENCY_METHODS
    ]


# Timing devices: the device wildcard of rule profile -> `zoommil profile` arguments.
PROFILE_DEVICES = {
    "cpu1": {"device": "cpu", "threads": 1, "runtime": 120, "gpu": 0},
    "cpu": {"device": "cpu", "threads": None, "runtime": 120, "gpu": 0},
    "gpu": {"device": "cuda", "threads": None, "runtime": 60, "gpu": 1},
}


def gpu_slot(wildcards, resources):
    """A prefix that runs a job granted a GPU on a free GPU of its own where a machine has
    several (zoommil.workflow.gpu_slot): Snakemake names no GPU to a local job, and every
    job took cuda:0. A no-op in a SLURM job granted one GPU. Snakemake's Python runs it (only
    the standard library and zoommil's light top level are imported). A function of
    `resources`: Snakemake's params rerun trigger leaves it out."""
    if device(wildcards, resources) == "cpu":
        return ""
    return f"{shlex.quote(sys.executable)} -m zoommil.workflow.gpu_slot -- "


def hidden_gpu(wildcards, resources):
    """`CUDA_VISIBLE_DEVICES=` before a timing on `cuda` whose job was granted no GPU
    (`--resources gpu=0` lowers the rule's gpu=1 to 0): it timed on the visible GPU anyway,
    which the run had left to others; it writes the skip note now, as where there is no GPU.
    A function of `resources`: Snakemake's params rerun trigger leaves it out."""
    if PROFILE_DEVICES[wildcards.device]["device"] != "cuda":
        return ""
    return "CUDA_VISIBLE_DEVICES=" if device(wildcards, resources) == "cpu" else ""


# --- sizes that follow what drives them (zoommil.workflow.resources) ------------------------
# Each is at least the flat size it replaces (the rule's, or for flops' runtime the
# profiles'), and doubles on the retry (`attempt`), so the cluster profiles leave these
# resources to the rules (features' memory apart: see profiles/slurm).


def features_mem_mb(wildcards, threads, attempt):
    """A features job on CPU runs one encoder process per thread, on a GPU one and its
    readers (`features.args`' `workers` where given): sized from the encoder, the larger of
    the two."""
    workers = FEATURES_EXECUTION_ARGS.get("workers")
    needed = zresources.features_rule_mem_mb(
        RECIPE.encoder, threads, None if workers is None else int(workers)
    )
    return max(6000, needed) * attempt


def profile_mem_mb(wildcards, input, threads, attempt):
    """A timing job holds one encoder per worker process (all cores: min(threads, n_slides)
    of them), and each one slide's bag and the heads' forward passes over it: the largest
    test slide's once QC has listed the feature files, else the bag the preset implies.
    """
    spec = PROFILE_DEVICES[wildcards.device]
    sizes = zresources.listed_sizes(FEATURE_MANIFEST) or {}
    test = zresources.slides_in_split(input.usable, "test")
    tested = [sizes[slide] for slide in test if slide in sizes]
    if tested:
        patches = zresources.listed_patches(tested, RECIPE.encoder, RECIPE.mags)
    else:
        patches = zresources.planned_patches(RECIPE.mags, RECIPE.patch_size)
    archs = [ALL_METHODS[m].get("arch", m) for m in TIMED_ORDER]
    needed = zresources.profile_mem_mb(
        RECIPE.encoder,
        spec["device"],
        spec["threads"] or threads,
        EFFICIENCY["n_slides"],
        zresources.predict_work_mb(RECIPE.encoder, archs, RECIPE.mags, patches),
    )
    return max(8000, needed) * attempt


TRAIN_CACHE, TRAIN_CACHE_MAX_GB = zresources.cache_settings(
    config["train"].get("extra")
)


def train_mem_mb(wildcards, input, attempt):
    """A train job keeps up to `cache_max_gb` of bags in memory with `cache: auto` (the
    usable feature files' size, once QC listed them, where that is less; none where the
    bags its method reads are larger)."""
    spec = ALL_METHODS[wildcards.method]
    sizes = zresources.listed_sizes(input.features)
    least = None
    if sizes is not None:
        read = method_mags(wildcards.method, spec, RECIPE.mags)
        least = zresources.least_loaded_bytes(
            sizes.values(), RECIPE.encoder, read, RECIPE.mags
        )
    needed = zresources.train_mem_mb(
        spec.get("arch", wildcards.method),
        TRAIN_CACHE,
        TRAIN_CACHE_MAX_GB,
        None if sizes is None else sum(sizes.values()),
        least,
    )
    return max(8000, needed) * attempt


def planned_test_slides(usable_table):
    """Test slides: the usable ones once QC has written its table (Snakemake sizes a job
    again just before it runs), else the sheet's test rows (the demo's after synth)."""
    counted = zresources.rows_in_split(usable_table, "test")
    if counted is None and not DEMO:
        counted = int((SHEET["split"] == "test").sum())
    elif counted is None:
        counted = zresources.rows_in_split(sheet_file(), "test")
    return counted or 0


def flops_runtime(wildcards, input, attempt):
    """The flops job counts every method on every test slide; at least 60 min, the size
    the cluster profiles gave it before."""
    archs = [ALL_METHODS[m].get("arch", m) for m in FLOPS_ORDER]
    needed = zresources.flops_runtime_min(planned_test_slides(input.usable), archs)
    return max(60, needed) * attempt


def throughput_inputs(wildcards):
    """The timing JSONs as one named input per device, for `unpack`."""
    return {device: throughput_files(device) for device in PROFILE_DEVICES}


def all_throughput_files():
    return [path for device in PROFILE_DEVICES for path in throughput_files(device)]


def final_targets():
    """The default target's files: every file of the tables, figures and exclusions rules,
    not one per rule. Snakemake remakes only the outputs that something requests, so a
    deleted comparisons.csv, main.md or attention.pdf was not made again ("Nothing to be
    done"), and `snakemake --report` then stopped on the missing file."""
    targets = [
        "results/qc/slides.tsv",
        "results/tables/main.csv",
        "results/figures/throughput.png",
        # with figures.attention.method: null too, where it says it is left out: a figure an
        # earlier config drew stayed beside the new results
        "results/figures/attention.png",
        "results/provenance.json",
    ]
    for made in (rules.tables, rules.figure_throughput, rules.figure_attention):
        targets += [path for path in made.output if path not in targets]
    targets += [f"results/model_cards/{method}.md" for method in ALL_METHODS]
    return targets + list(rules.qc_exclusions.output)
