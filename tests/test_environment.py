"""What a result records about its making (zoommil.environment): commit, libraries, CPU."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import zoommil
from zoommil import environment
from zoommil.workflow import provenance

REPO = Path(__file__).resolve().parents[1]


def test_the_commit_is_the_checkouts_and_none_elsewhere(tmp_path, monkeypatch) -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    commit = environment.code_commit()
    if head:  # a git checkout (CI clones one)
        assert commit is not None and commit.removesuffix("+dirty") == head
    assert environment.code_commit(tmp_path) is None  # not a git checkout
    # an installed copy, even inside some checkout, names no commit (it may be another code)
    installed = REPO / ".venv" / "lib" / "site-packages" / "zoommil" / "__init__.py"
    monkeypatch.setattr(zoommil, "__file__", str(installed))
    assert environment.code_commit() is None


def test_the_record_names_the_cpu_and_the_libraries() -> None:
    record = environment.environment()
    assert record["zoommil_version"] == zoommil.__version__
    assert record["cpu"] == environment.cpu_model() and record["cpu"]
    assert set(record["cpu_flags"]) <= set(environment.ISA_FLAGS)
    assert record["libraries"]["torch"] and record["libraries"]["numpy"]
    assert "/" not in str(record["libraries"])  # versions, no paths of this machine
    # conda envs have the C library without the openslide-bin wheel: asked of the library
    import openslide

    assert record["openslide_library"] == openslide.__library_version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", record["openslide_library"])


def test_the_provenance_log_names_the_version_and_says_when_there_is_no_commit(
    tmp_path, monkeypatch
) -> None:
    """The provenance job's log read `zoommil None` for every install but an editable git
    checkout (pip, `--sdm conda`, a copied folder)."""
    env = {"zoommil_version": "9.9.9", "zoommil_commit": None}
    monkeypatch.setattr(provenance, "environment", lambda: dict(env))
    log, out = tmp_path / "provenance.log", tmp_path / "provenance.json"
    job = SimpleNamespace(log=[str(log)], output=SimpleNamespace(record=str(out)),
                          params=SimpleNamespace(config="{}"))  # fmt: skip
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the script points it at its log
    runpy.run_path(str(REPO / "scripts" / "provenance.py"), init_globals={"snakemake": job})
    sys.stderr.close()
    text = log.read_text()
    assert "None" not in text and "9.9.9" in text and "no git commit" in text, text
    env["zoommil_commit"] = "abc123+dirty"
    line = provenance.log_line({"environment": env}, out)
    assert line == f"zoommil 9.9.9, commit abc123+dirty -> {out}"
