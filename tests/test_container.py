"""Runs inside a container: a user id without a passwd entry, a CPU quota."""

from __future__ import annotations

import getpass
import os
import pwd
from pathlib import Path

import pytest
from workflow_config import harness

from zoommil.workflow import container

#: The names `getpass.getuser` reads before asking the passwd database.
USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")

#: Imported by every Python started with its folder on PYTHONPATH: pwd lookups fail, as for a
#: user id without a passwd entry (`docker run -u 1234`).
NO_PASSWD = """
import pwd

def _missing(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")

pwd.getpwuid = _missing
"""


def _no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", missing)
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_user_id_without_a_name_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_passwd_entry(monkeypatch)
    with pytest.raises(KeyError):
        getpass.getuser()
    line = container.set_missing_user()
    assert getpass.getuser() == os.environ["USER"] == str(os.getuid())
    assert line and "no passwd entry" in line and f"USER={os.getuid()}" in line
    assert container.set_missing_user() is None  # a name now: nothing to say


def test_a_user_with_a_name_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    assert container.set_missing_user() is None
    assert os.environ["USER"] == "alice"


def test_a_dry_run_as_a_user_id_without_a_passwd_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snakemake 9.27.1 asks getpass.getuser() for its run header: with no passwd entry and
    no USER (`docker run -u 1234`) a dry run stopped with a KeyError traceback."""
    workdir = harness.copy_workflow(tmp_path / "run", with_sources=False)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PASSWD)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    result = harness.snakemake(workdir, "-n", "--quiet", "rules", check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "KeyError" not in text
    assert f"zoommil: user id {os.getuid()} has no passwd entry" in text
