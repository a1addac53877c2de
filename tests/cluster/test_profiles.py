"""The cluster profiles agree with the workflow (no SLURM needed: dry runs and parsing).

A profile that names a rule the workflow no longer has silently does nothing, and a GPU rule
the SLURM profile does not route to the GPU partition would queue on CPU nodes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import SimpleNamespace

import pytest
import yaml
from slurmtest import REPO, snakemake

PROFILES = ("slurm", "cluster-generic")


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def _workflow_rules() -> dict[str, str]:
    """rule name -> its text, from workflow/rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", smk.read_text(), flags=re.M)
        rules.update(dict(zip(parts[1::2], parts[2::2], strict=True)))
    assert rules, "no rule found in workflow/rules/*.smk"
    return rules


@pytest.mark.parametrize("name", PROFILES)
def test_profile_names_only_workflow_rules(name):
    rules = _workflow_rules()
    profile = _profile(name)
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    assert named <= set(rules), f"profiles/{name} names unknown rules: {named - set(rules)}"


def test_every_gpu_rule_gets_a_gpu_on_slurm():
    gpu_rules = {r for r, text in _workflow_rules().items() if re.search(r"\bgpu=1\b", text)}
    assert gpu_rules, "no rule declares gpu=1"
    settings = _profile("slurm")["set-resources"]
    for rule in gpu_rules:
        assert settings.get(rule, {}).get("gpu") == 1, rule
        assert "ZOOMMIL_SLURM_GPU_PARTITION" in settings[rule]["slurm_partition"], rule


def test_cluster_generic_sizes_match_slurm():
    """cluster-generic promises the slurm profile's sizes: a rule it lacked kept the rule's
    own, which does not grow with `attempt`, so its retry failed the same way."""

    def generic(resources: dict) -> dict:
        return {k: v for k, v in resources.items() if k not in ("slurm_partition", "slurm_account")}

    slurm, other = _profile("slurm"), _profile("cluster-generic")
    assert other["set-threads"] == slurm["set-threads"]
    assert other["default-resources"] == generic(slurm["default-resources"])
    assert {rule: generic(res) for rule, res in slurm["set-resources"].items()} == other[
        "set-resources"
    ]


# Snakemake's own job step inside a cluster job (measured on SLURM: ~340 MB), so that a job
# asking for less is killed under cgroup memory enforcement; and a minute is below most
# sites' scheduling granularity.
MIN_JOB_MEM_MB = 1000
MIN_JOB_RUNTIME = 5


def _size(expression, wildcards: dict) -> float:
    """A profile's resource expression (`"1000 * attempt"`) at the first attempt."""
    if not isinstance(expression, str):
        return expression
    return eval(expression, {"attempt": 1, "wildcards": SimpleNamespace(**wildcards)})


def _sized_by_rule(text: str, resource: str) -> bool:
    """Whether a rule sizes ``resource`` itself with a function of `attempt` (common.smk)."""
    named = re.search(rf"^\s+{resource}=(\w+),$", text, flags=re.M)
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    return bool(named) and bool(
        re.search(rf"^def {named.group(1)}\([^)]*\battempt\b", common, flags=re.M)
    )


@pytest.mark.parametrize("name", PROFILES)
def test_every_cluster_rule_is_sized_to_grow_on_its_retry(name):
    """A rule the profile leaves out keeps its own sizes, which do not grow with `attempt`
    unless the rule's own function takes it: its retry after running out of memory or time
    failed the same way (provenance, review S)."""
    sizes = _profile(name)["set-resources"]
    for rule, text in _workflow_rules().items():
        if re.search(r"^\s+localrule: True$", text, flags=re.M):
            continue
        for resource in ("mem_mb", "runtime"):
            assert "attempt" in str(sizes.get(rule, {}).get(resource)) or _sized_by_rule(
                text, resource
            ), f"profiles/{name}: {rule} has no {resource} growing with attempt"


@pytest.mark.parametrize("name", PROFILES)
def test_every_cluster_job_fits_snakemake_itself(name):
    """Each rule that is not a local rule asks the cluster for at least MIN_JOB_MEM_MB and
    MIN_JOB_RUNTIME (attention_settings asked for 100 MB and 1 minute)."""
    profile = _profile(name)
    defaults, sizes = profile["default-resources"], profile["set-resources"]
    for rule, text in _workflow_rules().items():
        if re.search(r"^\s+localrule: True$", text, flags=re.M):
            continue
        for resource, least in (("mem_mb", MIN_JOB_MEM_MB), ("runtime", MIN_JOB_RUNTIME)):
            literal = re.search(rf"^\s+{resource}=(\d+),$", text, flags=re.M)
            expression = sizes.get(rule, {}).get(resource) or (
                int(literal.group(1)) if literal else defaults[resource]
            )
            for wildcards in (
                {"method": "transmil", "device": "gpu"},
                {"method": "x", "device": "cpu"},
            ):
                value = _size(expression, wildcards)
                assert value >= least, f"profiles/{name}: {rule} gets {resource}={value}"


# The one-core timing of a CAMELYON16-size slide: patches its three timing passes encode
# (ZoomMIL K=300: 2,500 at 10x + 1,200 at 20x; the 20x-only methods' shared pass: 10^4; MS-MIL
# and DSMIL: 12,500; README "Measured at real size"), at the whole-path rate of the AVX-512
# EPYC the project measures on (17 patches/s at fp32, one thread).
C16_SLIDE_PATCHES = 2_500 + 1_200 + 10_000 + 12_500
ONE_CORE_PATCHES_PER_S = 17


@pytest.mark.parametrize("name", PROFILES)
def test_one_core_timing_of_a_preset_fits_its_first_attempt(name):
    """`profile` on device cpu1 times warmup + n_slides slides one after the other on one core:
    240 min was killed at CAMELYON16 size (~280 min needed) and its retry redid the hours."""
    preset = yaml.safe_load((REPO / "config" / "camelyon16.yaml").read_text())["efficiency"]
    slides = preset["warmup"] + preset["n_slides"]
    needed = slides * C16_SLIDE_PATCHES / ONE_CORE_PATCHES_PER_S / 60
    runtime = _size(_profile(name)["set-resources"]["profile"]["runtime"], {"device": "cpu1"})
    assert runtime >= 1.1 * needed, f"profiles/{name}: cpu1 gets {runtime} min, needs {needed:.0f}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_resources_reach_the_jobs(name, tmp_path):
    """A dry run through the profile shows the profile's resources on a GPU rule, and a
    train job's runtime by method (TransMIL's epochs cost ~10x the others')."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "f.txt", "m/transmil.txt", "m/abmil.txt"\n'
        'rule features:\n    output: "f.txt"\n    resources: gpu=1\n    shell: "touch {output}"\n'
        'rule train:\n    output: "m/{method}.txt"\n    shell: "touch {output}"\n'
    )
    result = snakemake(
        "--profile",
        str(REPO / "profiles" / name),
        "-n",
        cwd=tmp_path,
        env={"ZOOMMIL_SLURM_PARTITION": "cpu", "ZOOMMIL_SLURM_GPU_PARTITION": "gpu"},
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "mem_mb=16000" in out and "runtime=240" in out and "gpu=1" in out
    train = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"wildcards: method=(\w+)\n(?:\s+\w+: .*\n)*?\s+resources: .*?runtime=(\d+)", out
        )
    }
    assert train == {"transmil": "1440", "abmil": "480"}, out
    if name == "slurm":
        assert "slurm_partition=gpu" in out


def _scheduler():
    path = REPO / "profiles" / "cluster-generic" / "scheduler.py"
    spec = importlib.util.spec_from_file_location("zoommil_scheduler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_JOB = {
    "rule": "features",
    "jobid": 7,
    "threads": 8,
    "resources": {"mem_mb": 16000, "runtime": 90, "gpu": 1},
}
CPU_JOB = {"rule": "tile", "jobid": 3, "threads": 1, "resources": {"mem_mb": 4000}}


def test_generic_scheduler_builds_sbatch_options(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOOMMIL_SLURM_PARTITION", "cpu")
    monkeypatch.setenv("ZOOMMIL_SLURM_GPU_PARTITION", "gpu")
    monkeypatch.delenv("ZOOMMIL_SLURM_ACCOUNT", raising=False)
    sched = _scheduler()
    gpu = sched.slurm_submit_args(GPU_JOB)
    assert gpu[:2] == ["sbatch", "--parsable"]
    for option in ("--job-name=smk-features-7", "--cpus-per-task=8", "--mem=16000"):
        assert option in gpu
    assert "--time=90" in gpu and "--gpus=1" in gpu and "--partition=gpu" in gpu
    cpu = sched.slurm_submit_args(CPU_JOB)
    assert "--partition=cpu" in cpu and not any(a.startswith("--gpus") for a in cpu)
    assert not any(a.startswith("--time") for a in cpu)


def test_generic_scheduler_builds_qsub_options(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOOMMIL_PBS_GPU_QUEUE", "gpuq")
    monkeypatch.delenv("ZOOMMIL_PBS_QUEUE", raising=False)
    monkeypatch.delenv("ZOOMMIL_PBS_ACCOUNT", raising=False)
    sched = _scheduler()
    args = sched.pbs_submit_args(GPU_JOB)
    assert args[0] == "qsub"
    assert "select=1:ncpus=8:mem=16000mb:ngpus=1" in args
    assert "walltime=01:30:00" in args
    assert args[args.index("-q") + 1] == "gpuq"
    assert "-q" not in sched.pbs_submit_args(CPU_JOB)


def test_generic_scheduler_reads_jobscript_properties(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n# properties = {json.dumps(GPU_JOB)}\necho run\n")
    assert _scheduler().read_properties(script) == GPU_JOB


@pytest.mark.parametrize("name", PROFILES)
def test_workflow_dry_runs_through_profile(name, tmp_path):
    """The demo workflow parses and plans under the profile. A real run also needs `cores`
    when a rule reads `workflow.cores` (a dry run sets it to 1, so check that statically)."""
    if any("workflow.cores" in text for text in _workflow_rules().values()):
        assert isinstance(_profile(name).get("cores"), int), f"profiles/{name} lacks cores"
    sys.path.insert(0, str(REPO / "tests" / "workflow_config"))
    import harness

    work = harness.copy_workflow(tmp_path / "wf")
    result = snakemake("--profile", str(REPO / "profiles" / name), "-n", cwd=work, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert re.search(r"^synth\s+1$", out, flags=re.M), out[-3000:]


#: Snakemake puts `wildcards` in the namespace of a profile's resource expressions from 9.22
#: on; 9.17-9.21 fail every such job at planning ("... could not be parsed as minutes").
WILDCARDS_IN_PROFILES = (9, 22)


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.findall(r"\d+", version)[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("name", PROFILES)
def test_the_snakemake_floor_reads_the_profiles_wildcards(name):
    """The dry run above uses the Snakemake at hand; the lowest one pip (or min_version) lets
    a user run must evaluate the profile's `wildcards.` expressions too."""
    resources = _profile(name)["set-resources"].values()
    if not any("wildcards." in str(value) for rule in resources for value in rule.values()):
        pytest.skip(f"profiles/{name} sizes no job by its wildcards")
    pyproject = (REPO / "pyproject.toml").read_text()
    (floor,) = re.findall(r'^\s*"snakemake\s*>=\s*([\d.]+)', pyproject, flags=re.M)
    snakefile = (REPO / "Snakefile").read_text()
    (minimum,) = re.findall(r'^min_version\("([\d.]+)"\)', snakefile, flags=re.M)
    assert _major_minor(floor) >= WILDCARDS_IN_PROFILES, f"pyproject: snakemake>={floor}"
    assert _major_minor(minimum) >= WILDCARDS_IN_PROFILES, f"Snakefile: min_version {minimum}"


# --- sizes the rules compute (zoommil.workflow.resources), as a dry run plans them ----------

# Measured per process: peak RSS of a process holding UNI (ViT-L/16, 303M parameters) after
# encoding two batches (benchmarks/process_memory.py); ABMIL predict at real size with
# ResNet-50 held +212 MB beyond its encoder (925 against 713, docs/scale_runs.md); `zoommil
# profile`'s own process 609 MB.
UNI_PROCESS_MB = 1984
PREDICT_WORK_MB = 212
PROFILE_MAIN_MB = 609
#: TransMIL's forward pass over 4 x 10^4 patches at 40x (benchmarks/head_memory.py).
TRANSMIL_40K_MB = 1696
# zoommil flops per test slide for the 9 CAMELYON16 methods at real size.
FLOPS_S_PER_TEST_SLIDE = 13


def _planned(out: str) -> list[tuple[str, str, dict[str, str]]]:
    """(rule, wildcards, resources) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"^(?:local)?(?:rule|checkpoint) ", out, flags=re.M)[1:]:
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        pairs = resources.group(1).split(", ") if resources else []
        jobs.append(
            (
                block.split(":", 1)[0],
                wildcards.group(1) if wildcards else "",
                dict(pair.split("=", 1) for pair in pairs if "=" in pair),
            )
        )
    return jobs


@pytest.fixture(scope="module")
def uni_workflow(tmp_path_factory):
    """A copy of the workflow and three UNI-preset configs on empty slide files: 4 test
    slides, 600 test slides with `cache_max_gb: 40`, and 4 test slides tiled at 20x and 40x."""
    sys.path.insert(0, str(REPO / "tests" / "workflow_config"))
    import harness

    work = harness.copy_workflow(tmp_path_factory.mktemp("uni"))
    preset = yaml.safe_load((work / "config" / "camelyon16_uni.yaml").read_text())
    configs = {}
    sets = (("small", 4, {}, None), ("large", 600, {"cache_max_gb": 40}, None))
    for name, n_test, extra, mags in (*sets, ("x40", 4, {}, [20, 40])):
        folder = work / name
        folder.mkdir()
        splits = ["train"] * 6 + ["val"] * 2 + ["test"] * n_test
        rows = []
        for i, split in enumerate(splits):
            (folder / f"s{i}.svs").write_bytes(b"")
            rows.append(f"s{i}\ts{i}.svs\t{('normal', 'tumor')[i % 2]}\t{split}\t\n")
        (folder / "slides.tsv").write_text(harness.SHEET_HEADER + "".join(rows))
        config = {**preset, "sheet": str(folder / "slides.tsv")}
        config["train"] = {**preset["train"], "extra": extra}
        if mags:
            config["preprocess"] = {**preset["preprocess"], "mags": mags}
        configs[name] = harness.write_config(work, config, f"{name}.yaml")
    return work, configs


_PLANNED: dict[tuple[str, str], list[tuple[str, str, dict[str, str]]]] = {}


def _dry_run(uni_workflow, config: str, profile: str) -> list[tuple[str, str, dict[str, str]]]:
    """The jobs a dry run through ``profile`` plans for one of `uni_workflow`'s configs (once
    per session)."""
    if (config, profile) not in _PLANNED:
        work, configs = uni_workflow
        result = snakemake(
            "--profile", str(REPO / "profiles" / profile), "-n",
            "--configfile", str(configs[config]), cwd=work, timeout=300,
        )  # fmt: skip
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-5000:]
        _PLANNED[config, profile] = _planned(out)
    return _PLANNED[config, profile]


@pytest.mark.parametrize("name", PROFILES)
def test_a_timing_job_asks_for_an_encoder_per_worker(name, uni_workflow):
    """The all-cores timing job of the UNI preset holds one UNI per worker process
    (min(16 threads, 10 slides)): ~22 GB, where the profiles' 16000 MB killed it."""
    timing = {
        w: int(r["mem_mb"])
        for rule, w, r in _dry_run(uni_workflow, "large", name)
        if rule == "profile"
    }
    workers = min(_profile(name)["set-threads"]["profile"], 10)
    needed = workers * (UNI_PROCESS_MB + PREDICT_WORK_MB) + PROFILE_MAIN_MB
    assert timing["device=cpu"] >= needed, (timing, needed)
    assert timing["device=cpu1"] >= UNI_PROCESS_MB + PREDICT_WORK_MB, timing


@pytest.mark.parametrize("name", PROFILES)
def test_a_40x_timing_job_asks_for_the_heads_on_a_40x_bag(name, uni_workflow):
    """At 20x and 40x a slide's bag is ~4 x 10^4 patches at 40x (10^4 at 20x): each timing
    worker holds it twice (5 x 10^4 rows of 1024 floats: 391 MB) and TransMIL's forward pass
    over it (+1696 MB, benchmarks/head_memory.py): ~43 GB for 10 UNI workers, where the job
    asked for the 30,540 MB of a 20x bag and its first attempt was killed."""
    timing = {
        w: int(r["mem_mb"])
        for rule, w, r in _dry_run(uni_workflow, "x40", name)
        if rule == "profile"
    }
    workers = min(_profile(name)["set-threads"]["profile"], 10)
    process = UNI_PROCESS_MB + PREDICT_WORK_MB + 391 + TRANSMIL_40K_MB
    assert timing["device=cpu"] >= workers * process + PROFILE_MAIN_MB, timing
    assert timing["device=cpu1"] >= process, timing


@pytest.mark.parametrize("name", PROFILES)
def test_a_train_job_asks_for_the_bags_its_cache_keeps(name, uni_workflow):
    """With `cache: auto` a train job keeps up to `cache_max_gb` of bags in memory: 40 GiB
    here, above the profiles' former 32000 MB (and the rule's 8000)."""
    train = [
        int(r["mem_mb"]) for rule, _, r in _dry_run(uni_workflow, "large", name) if rule == "train"
    ]
    assert train and min(train) > 40 * 1024, train


@pytest.mark.parametrize("name", PROFILES)
def test_the_flops_runtime_grows_with_the_test_split(name, uni_workflow):
    """FLOPs of every method on every test slide: ~13 s a test slide for the 9 methods at
    real size, so 600 test slides need more than the flat 60 min that 4 get."""
    flops = {
        config: int(r["runtime"])
        for config in ("large", "small")
        for rule, _, r in _dry_run(uni_workflow, config, name)
        if rule == "flops"
    }
    assert flops["large"] > flops["small"] >= 60, flops
    assert flops["large"] >= 600 * FLOPS_S_PER_TEST_SLIDE / 60, flops


@pytest.mark.parametrize("name", PROFILES)
def test_profile_features_memory_fits_a_gpu_job_of_every_encoder(name):
    """The profiles keep their own features memory for GPU jobs (one encoder process and its
    readers; the rule declares the CPU size, one encoder per thread): it covers every
    registered encoder."""
    from zoommil.features.encoders.registry import ENCODERS
    from zoommil.workflow import resources

    profile = _profile(name)
    features = profile["set-resources"]["features"]
    assert features["gpu"] == 1
    threads = profile["set-threads"]["features"]
    for encoder in ENCODERS:
        needed = resources.features_mem_mb(encoder, threads, "cuda")
        assert _size(features["mem_mb"], {}) >= needed, (encoder, needed)
