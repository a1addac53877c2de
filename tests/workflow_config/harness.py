"""Run the Snakemake workflow in a scratch copy, as a user would from a fresh clone.

The workflow files (Snakefile, workflow/, scripts/, config/, profiles/) and the library
sources (whose import closures are the rules' `code` params) are copied into a temporary
folder, so tests never touch
the repository's results/ or its .snakemake/ metadata, and may edit the copy's sources.
Snakemake runs as a subprocess (`python -m snakemake`) with the test interpreter's bin/ on
PATH, so the rules find the same `zoommil` CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(__file__).resolve().parent
SLIDES_DIR = REPO / ".." / "shared" / "data" / "slides"
WORKFLOW_FILES = ("Snakefile", "workflow", "scripts", "config", "profiles", "envs")
ENV_FAMILIES = ("wsi", "torch", "report")
SHEET_HEADER = "slide_id\tpath\tlabel\tsplit\tmpp\n"


def copy_workflow(dest: Path, with_sources: bool = True) -> Path:
    """Copy the workflow (and src/zoommil, for library tracking) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake", "results")
    for name in WORKFLOW_FILES:
        source = REPO / name
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest / name)
    for family in ENV_FAMILIES:  # rules name ../../envs/<family>.yaml (hashed into metadata)
        env = dest / "envs" / f"{family}.yaml"
        if not env.exists():
            env.parent.mkdir(exist_ok=True)
            env.write_text(f"name: zoommil-{family}\ndependencies: [python>=3.10]\n")
    if with_sources:
        shutil.copytree(REPO / "src" / "zoommil", dest / "src" / "zoommil", ignore=ignore)
    return dest


def write_config(dest: Path, config: dict, name: str = "test_config.yaml") -> Path:
    path = dest / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def load_config(path: Path = CONFIG_DIR / "config.yaml") -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def library_env(workdir: Path) -> dict[str, str]:
    """This process's environment, with the copy's src/ first on PYTHONPATH where the copy has
    the sources: the workflow refuses to run a zoommil other than the one it tracks
    (`zoommil.workflow.params.check_imported_library`), as a user's checkout would."""
    env = dict(os.environ)
    src = workdir / "src"
    if (src / "zoommil").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | None = None,
    check: bool = True,
    cores: int | None = 2,
    import_copy: bool = True,
) -> subprocess.CompletedProcess:
    """`python -m snakemake` in `workdir`; on failure the assertion shows the output.
    ``cores=None`` leaves out --cores, as a user typing `snakemake --report ...` does.
    ``import_copy``: the jobs import the copy's sources, where it has them (`library_env`)."""
    env = library_env(workdir) if import_copy else dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    command = [sys.executable, "-m", "snakemake"]
    if cores is not None:
        command += ["--cores", str(cores)]
    command += list(args)  # before --configfile, which would take a target as a 2nd file
    if configfile is not None:
        command += ["--configfile", str(configfile)]
    result = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800
    )
    if check and result.returncode != 0:
        logs = _failed_logs(workdir)
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}\n{logs}"
        )
    return result


def _failed_logs(workdir: Path) -> str:
    texts = []
    for log in sorted((workdir / "results" / "logs").rglob("*.log"))[-40:]:
        text = log.read_text(errors="replace")
        if "rror" in text:
            texts.append(f"--- {log.relative_to(workdir)}\n{text[-2000:]}")
    return "\n".join(texts)


def planned_jobs(workdir: Path, configfile: Path | None = None, *args: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run would execute (empty when nothing is to be done)."""
    # args first: --quiet takes several values, and would take a target as one
    result = snakemake(workdir, *args, "-n", "--quiet", "rules", configfile=configfile)
    text = result.stdout + result.stderr
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            match = re.match(r"^([A-Za-z_][\w]*)\s+(\d+)\s*$", line.strip())
            if match and match[1] != "total":
                counts[match[1]] = int(match[2])
            elif match is None and not line.strip().startswith("-") and counts:
                break
    return counts


def job_lines(result: subprocess.CompletedProcess, pattern: str) -> dict[str, set[str]]:
    """Rule -> the first group of ``pattern`` in the lines of each of its jobs in Snakemake's
    job log (a rule with jobs but no matching line maps to an empty set)."""
    found: dict[str, set[str]] = {}
    rule = None
    for line in (result.stdout + result.stderr).splitlines():
        match = re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):", line)
        if match:
            rule = match[1]
            found.setdefault(rule, set())
            continue
        match = re.match(pattern, line)
        if match and rule is not None:
            found[rule].add(match[1])
    return found


def rerun_reasons(workdir: Path, configfile: Path | None = None) -> dict[str, set[str]]:
    """Rule -> the reasons a dry run gives for its planned jobs (empty: nothing to be done)."""
    result = snakemake(workdir, "-n", configfile=configfile)
    return {r: s for r, s in job_lines(result, r"^\s*reason: (.*)$").items() if s}


def executed(result: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """Rule -> the slides whose job a real run executed (from Snakemake's job log)."""
    return job_lines(result, r"^\s*wildcards: slide=([^,\s]+)")


def make_tiny_sheet(dest: Path, n_slides: int = 6, bad: bool = True) -> Path:
    """Half-size demo slides (`zoommil synth`), plus, when `bad`, a slide with an implausible
    mpp (excluded at inspection), an all-white slide (excluded for lack of tissue) and a slide
    whose level-0 tiles are corrupt where inspection does not look (excluded at features)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    data = dest / "data"
    subprocess.run(
        [sys.executable, "-m", "zoommil", "synth", "--out", str(data), "--n-slides",
         str(n_slides), "--seed", "0", "--scale", "0.5"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    lines = (data / "slides.tsv").read_text().splitlines()[1:]
    rows = []
    for line in lines:
        slide_id, path, label, split = line.split("\t")[:4]
        rows.append(f"{slide_id}\tdata/{path}\t{label}\t{split}\t\n")
    if bad:
        rows.append(
            f"bad_mpp\t{(SLIDES_DIR / 'prostate-he-generic.tiff').resolve()}\tnormal\ttrain\t\n"
        )
        sys.path.insert(0, str(REPO / "tests"))
        from slide_factory import (
            corrupt_level_tiles,
            tiles_touched_by_test_read,
            write_pyramid_tiff,
        )

        write_pyramid_tiff(data / "blank.tiff", width=1024, height=1024, mpp=1.0, tissue=False)
        rows.append("blank\tdata/blank.tiff\tatypia\ttrain\t\n")
        corrupt = write_pyramid_tiff(
            data / "corrupt.tiff", width=1024, height=1024, mpp=1.0, levels=3, seed=7
        )
        corrupt_level_tiles(corrupt, 0, spare=tiles_touched_by_test_read(1024, 1024))
        rows.append("corrupt\tdata/corrupt.tiff\tcarcinoma\ttrain\t\n")
    sheet = dest / "slides.tsv"
    sheet.write_text(SHEET_HEADER + "".join(rows))
    return sheet


_RUNS: dict[str, tuple[Path, Path, subprocess.CompletedProcess]] = {}


def tiny_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The tiny config run to completion once per test session: (workdir, configfile, result).

    Shared by tests/test_workflow_run.py and tests/test_reruns.py (module-level cache, so the
    run happens once however many test modules ask for it).
    """
    if "tiny" not in _RUNS:
        workdir = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
        make_tiny_sheet(workdir)
        configfile = write_config(workdir, load_config())
        result = snakemake(workdir, configfile=configfile)
        _RUNS["tiny"] = (workdir, configfile, result)
    return _RUNS["tiny"]
