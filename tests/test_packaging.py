"""The sdist is the whole project (workflow, configs, tests, docs), with the MIT LICENSE.

Built offline with the declared backend's PEP 517 hook in this interpreter (what
`python -m build --sdist --no-isolation` calls), from a copy of the checkout, so the build's
egg-info never lands in src/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Folders and files a user of the sdist needs besides the package: run, test, read.
PROJECT = ("Snakefile", "workflow", "config", "profiles", "envs", "scripts", "tests",
           "benchmarks", "docs", "README.md", "CONTRIBUTING.md", "LICENSE", "CITATION.cff",
           "pyproject.toml")  # fmt: skip
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "shared", "results", ".snakemake", "__pycache__", "*.pyc", "*.egg-info",
    "build", "dist", ".pytest_cache", ".ruff_cache",
)  # fmt: skip


def _backend_available() -> bool:
    """Whether this interpreter has the build backend pyproject.toml asks for (the test
    extra installs it; an older setuptools cannot read the PEP 639 license fields)."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    if not _backend_available():
        pytest.skip("setuptools>=77 (the build backend, in the test extra) is not installed")
    assert 'build-backend = "setuptools.build_meta"' in (REPO / "pyproject.toml").read_text()
    root = tmp_path_factory.mktemp("sdist")
    source, out = root / "zoommil", root / "dist"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    hook = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", hook], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = result.stdout.strip().splitlines()[-1]
    archive = tarfile.open(out / name)
    yield archive
    archive.close()


def _members(archive: tarfile.TarFile) -> set[str]:
    return {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}


def _project_files() -> set[str]:
    """The checkout's files under `PROJECT` (what the copy holds), relative, POSIX."""
    found = set()
    for name in PROJECT:
        if (REPO / name).is_file():
            found.add(name)
            continue
        for folder, dirs, files in os.walk(REPO / name):
            ignored = NOT_SOURCES(folder, dirs + files)
            dirs[:] = [d for d in dirs if d not in ignored]
            relative = Path(folder).relative_to(REPO)
            found.update((relative / f).as_posix() for f in files if f not in ignored)
    return found


def test_sdist_has_every_project_file(sdist: tarfile.TarFile) -> None:
    members = _members(sdist)
    expected = _project_files()
    assert {"tests/conftest.py", "tests/slide_factory.py", "Snakefile", "LICENSE"} <= expected
    assert expected - members == set()
    assert "src/zoommil/__init__.py" in members
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


def test_sdist_declares_the_mit_license_file(sdist: tarfile.TarFile) -> None:
    (info,) = [m for m in sdist.getmembers() if m.name.count("/") == 1 and "PKG-INFO" in m.name]
    text = sdist.extractfile(info).read().decode()
    assert "License-Expression: MIT" in text and "License-File: LICENSE" in text
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "zoommil contributors" in license_text
