"""The conda envs (envs/*.yaml, for `snakemake --sdm conda`) stay in step with pyproject.toml.

- every runtime dependency of pyproject.toml is in the torch env (it runs everything), under its
  conda-forge name and with the same lower bound; the other envs repeat that bound when they
  list the package;
- each family's env holds what its stages import: the zoommil modules of that family are
  imported with every pyproject dependency missing from the env blocked;
- every env rule in the workflow names an existing env; the post-deploy scripts that install
  zoommil itself are the same for every env and find the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
FAMILIES = ("wsi", "torch", "report")

# pyproject (PyPI) name -> conda-forge name, where they differ.
CONDA_NAME = {
    "torch": "pytorch",
    "opencv-python-headless": "opencv",
    "openslide-bin": "openslide",  # the C library that openslide-bin bundles for pip
    "matplotlib": "matplotlib-base",  # matplotlib without the Qt GUI stack
    "huggingface-hub": "huggingface_hub",
}
# pyproject name -> (pyproject's lower bound, the env files'), where they differ. pyproject's
# are the first wheels built for NumPy 2: pip pairs an older one with numpy>=2 and it fails to
# import. conda-forge's builds of the older versions require numpy<2, so conda never pairs
# them, and the env files keep their bounds: an edited env file is a new env, and Snakemake's
# software-env trigger reruns every job of it.
CONDA_BOUND = {
    "scikit-learn": ("1.4.2", "1.3"),
    "opencv-python-headless": ("4.10.0.84", "4.8"),
    "h5py": ("3.11", "3.9"),
    "pandas": ("2.2.2", "2.0"),
    "matplotlib": ("3.8.4", "3.7"),
}
# Runtime dependencies that stage envs do not need: Snakemake runs the workflow from the
# user's own environment, and jobs never import it.
NOT_IN_ENVS = {"snakemake"}
# pyproject name -> import name, for the import check.
IMPORT_NAME = {
    "scikit-learn": "sklearn",
    "opencv-python-headless": "cv2",
    "openslide-python": "openslide",
    "openslide-bin": "openslide_bin",
    "pillow": "PIL",
    "pyyaml": "yaml",
}
# zoommil modules each family's stages run (commands import their library lazily).
FAMILY_MODULES = {
    "wsi": [
        "zoommil.cli",
        "zoommil.wsi.slide",
        "zoommil.wsi.resolution",
        "zoommil.wsi.pixels",
        "zoommil.wsi.tissue",
        "zoommil.wsi.lattice",
        "zoommil.synth",
    ],
    "report": ["zoommil.reporting", "zoommil.workflow"],
}  # torch: every dependency, nothing to block
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def _pyproject_lower() -> dict[str, str]:
    """name -> lower bound ('' when none) of pyproject's runtime dependencies."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        name, spec = REQUIREMENT.match(dep).groups()
        lower = re.search(r">=\s*([^,\s;]+)", spec)
        out[name.lower()] = lower.group(1) if lower else ""
    return out


def _pyproject_deps() -> dict[str, str]:
    """name -> the lower bound the env files should have for each pyproject dependency."""
    out = {}
    for name, lower in _pyproject_lower().items():
        pip, conda = CONDA_BOUND.get(name, (None, None))
        out[name] = conda if lower == pip else lower
    return out


def test_compiled_dependencies_start_at_their_first_numpy_2_wheels():
    """With numpy>=2, pip installs an older wheel of these beside it, which stops at import
    ("numpy.dtype size changed", "numpy.core.multiarray failed to import"); measured with
    numpy 2.0.0 on Python 3.11: scikit-learn 1.4.1.post1, opencv 4.10.0.82, h5py 3.10, pandas
    2.2.1 and matplotlib 3.8.3 fail, the versions in CONDA_BOUND import."""
    lower = _pyproject_lower()
    assert int(lower["numpy"].split(".")[0]) >= 2
    for name, (first, _) in CONDA_BOUND.items():
        assert Version(lower[name]) >= Version(first), f"pyproject: {name}>={lower[name]}"


def _env(family: str) -> dict[str, str]:
    """conda name -> lower bound ('' when none) of an env file's conda dependencies."""
    data = yaml.safe_load((ENVS / f"{family}.yaml").read_text())
    out = {}
    for dep in data["dependencies"]:
        assert isinstance(dep, str), f"{family}.yaml: use conda packages, not a pip section"
        name, spec = REQUIREMENT.match(dep).groups()
        lower = re.search(r">=\s*([^,\s]+)", spec)
        out[name.lower()] = lower.group(1) if lower else ""
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_env_file_is_valid(family):
    data = yaml.safe_load((ENVS / f"{family}.yaml").read_text())
    assert data["channels"][0] == "conda-forge"
    env = _env(family)
    for needed in ("python", "pip", "setuptools", "wheel"):  # for the post-deploy install
        assert needed in env, f"{family}.yaml lacks {needed}"
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    setuptools = next(r for r in build if r.startswith("setuptools"))
    # an older setuptools cannot read pyproject's license fields (PEP 639): install fails
    assert env["setuptools"] == setuptools.removeprefix("setuptools>=")
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert env["python"] == requires.removeprefix(">=")


def test_torch_env_has_every_runtime_dependency():
    env = _env("torch")
    for name, lower in _pyproject_deps().items():
        if name in NOT_IN_ENVS:
            continue
        conda = CONDA_NAME.get(name, name)
        assert conda in env, f"torch.yaml lacks {conda} (pyproject: {name})"
        assert env[conda] == lower, f"torch.yaml: {conda} >={env[conda]}, pyproject >={lower}"


@pytest.mark.parametrize("family", FAMILIES)
def test_env_bounds_match_pyproject(family):
    env = _env(family)
    deps = _pyproject_deps()
    by_conda = {CONDA_NAME.get(name, name): name for name in deps}
    extra = {"python", "pip", "setuptools", "wheel"}
    for conda, lower in env.items():
        if conda in extra:
            continue
        assert conda in by_conda, f"{family}.yaml: {conda} is not a pyproject dependency"
        assert lower == deps[by_conda[conda]], (
            f"{family}.yaml: {conda} >={lower}, pyproject {by_conda[conda]} "
            f">={deps[by_conda[conda]]}"
        )


_IMPORT_CHECK = """
import importlib, pkgutil, sys
for name in set(sys.argv[1].split(",")) - {""}:
    sys.modules[name] = None  # import fails, importlib.util.find_spec says "not installed"
for root in sys.argv[2].split(","):
    module = importlib.import_module(root)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
if "zoommil.cli" in sys.argv[2]:
    from zoommil.cli import build_parser
    build_parser()
"""


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_family_modules_import_with_only_their_env(family):
    env = _env(family)
    blocked = [
        IMPORT_NAME.get(name, name.replace("-", "_"))
        for name in _pyproject_deps()
        if name not in NOT_IN_ENVS and CONDA_NAME.get(name, name) not in env
    ]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, ",".join(blocked), ",".join(FAMILY_MODULES[family])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, (
        f"a '{family}' stage imports a package its env lacks:\n{result.stderr[-3000:]}"
    )


def test_workflow_rules_name_existing_envs():
    rules = list((REPO / "workflow" / "rules").glob("*.smk"))
    assert rules, "no rule file in workflow/rules"
    used = set()
    for smk in rules:
        used |= set(re.findall(r'"\.\./\.\./envs/([\w.-]+)\.yaml"', smk.read_text()))
    assert used, "no rule declares a conda env"
    assert used <= set(FAMILIES), f"unknown envs: {used - set(FAMILIES)}"


def test_post_deploy_scripts_are_one_script():
    texts = {f: (ENVS / f"{f}.post-deploy.sh").read_text() for f in FAMILIES}
    assert len(set(texts.values())) == 1
    for family in FAMILIES:
        assert os.access(ENVS / f"{family}.post-deploy.sh", os.X_OK)


def _post_deploy(tmp_path: Path, cwd: Path, source: str | None) -> subprocess.CompletedProcess:
    """Run the post-deploy script with a fake `python` that records its arguments."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    (fake / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "ZOOMMIL_SOURCE"}
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    if source is not None:
        env["ZOOMMIL_SOURCE"] = source
    return subprocess.run(
        ["bash", str(ENVS / "torch.post-deploy.sh")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_post_deploy_installs_the_checkout_from_zoommil_source(tmp_path):
    result = _post_deploy(tmp_path, cwd=tmp_path, source=str(REPO))
    assert result.returncode == 0, result.stderr
    pip = (tmp_path / "calls.txt").read_text().splitlines()[0]
    assert pip.startswith("-m pip install") and "--no-deps" in pip
    assert pip.endswith(f"--editable {REPO}")


def test_post_deploy_finds_the_checkout_above_the_working_directory(tmp_path):
    workdir = REPO / "src" / "zoommil"  # like running Snakemake inside the checkout
    result = _post_deploy(tmp_path, cwd=workdir, source=None)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines()[0].endswith(f"--editable {REPO}")


def test_post_deploy_without_checkout_says_what_to_set(tmp_path):
    result = _post_deploy(tmp_path, cwd=tmp_path, source=str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "set ZOOMMIL_SOURCE" in result.stderr
    assert not (tmp_path / "calls.txt").exists()


_RUN_WITHOUT = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, Block())
from zoommil.cli import main
out = sys.argv[2]
for argv in (
    ["synth", "--out", out, "--n-slides", "1", "--scale", "0.25", "--no-progress"],
    ["inspect", f"{out}/slides/demo_000.tiff", "--out", f"{out}/i.json"],
    ["tissue", f"{out}/slides/demo_000.tiff", "--out", f"{out}/m.png"],
    ["tile", f"{out}/slides/demo_000.tiff", "--mags", "2.5", "5", "--out", f"{out}/c.h5",
     "--tissue-mask", f"{out}/m.png"],
):
    code = main(argv)
    assert code == 0, (argv, code)
"""


def test_the_wsi_stages_run_without_torch(tmp_path):
    """`wsi.yaml` has no pytorch: synth, inspect, tissue and tile must run, not only import,
    with every package the env lacks unimportable (a command importing one in `run` would
    fail only in a conda job)."""
    env = _env("wsi")
    blocked = [
        IMPORT_NAME.get(name, name.replace("-", "_"))
        for name in _pyproject_deps()
        if CONDA_NAME.get(name, name) not in env  # snakemake too: jobs never import it
    ]
    assert {"torch", "torchvision", "snakemake"} <= set(blocked)
    result = subprocess.run(
        [sys.executable, "-c", _RUN_WITHOUT, ",".join(blocked), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "c.h5").exists()
