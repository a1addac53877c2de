"""Runs inside a container: a user id without a passwd entry, a CPU quota."""

from __future__ import annotations

import getpass
import os
import pwd
from pathlib import Path

import pytest
from workflow_config import harness

from zoommil import cgroup
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


def fake_cgroups(
    monkeypatch: pytest.MonkeyPatch, root: Path, files: dict[str, str], own: str = "/"
) -> None:
    """cgroup files under ``root`` (path -> text) and this process in cgroup v2 ``own``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"1:cpu,cpuacct:/\n0::{own}\n")
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroup, "PROC_CGROUP", proc)


@pytest.mark.parametrize(
    ("files", "own", "quota"),
    [
        ({"cpu.max": "400000 100000\n"}, "/", 4),  # docker run --cpus 4 (cgroup v2)
        ({"cpu.max": "250000 100000\n"}, "/", 3),  # --cpus 2.5: rounded up, as loky does
        ({"cpu.max": "50000 100000\n"}, "/", 1),
        ({"cpu.max": "max 100000\n"}, "/", None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "800000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "/", 8),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "/", None),
        # no cgroup namespace: the container's folder, and a pod's limit above it
        (
            {"kubepods/pod1/cpu.max": "800000 100000", "kubepods/pod1/c1/cpu.max": "max 100000"},
            "/kubepods/pod1/c1",
            8,
        ),  # fmt: skip
        ({"cpu.max": "garbage\n"}, "/", None),
        ({}, "/", None),  # not Linux, no cgroup files
    ],
)
def test_the_cpu_quota_of_a_container(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    own: str,
    quota: int | None,
) -> None:
    fake_cgroups(monkeypatch, tmp_path / "cgroup", files, own)
    assert cgroup.cpu_quota() == quota


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        # a cgroup v1 host (no container): a systemd slice's CPUQuota=, on the process's folder
        ({"cpu,cpuacct/user.slice/job/cpu.cfs_quota_us": "200000\n"}, 2),
        # a hybrid host: cgroup v2 mounted beside v1 (no cpu controller there), the quota in v1
        ({"cpu,cpuacct/user.slice/cpu.cfs_quota_us": "150000\n", "unified/cpu.max": ""}, 2),
        # a v1 container: its own cgroup at the mount's root, /proc/self/cgroup the host's path
        ({"cpu,cpuacct/cpu.cfs_quota_us": "400000\n"}, 4),
    ],
)
def test_the_cpu_quota_of_a_cgroup_v1_process_along_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], quota: int
) -> None:
    """cgroup v1 quotas were read at the mount's root only: outside a container the quota
    on the process's own folder (the "N:cpu,cpuacct:/PATH" line) was not seen."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        folder = (root / name).parent
        folder.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        if name.endswith("cpu.cfs_quota_us"):
            (folder / "cpu.cfs_period_us").write_text("100000\n")
    for folder in ("cpu,cpuacct", "cpu,cpuacct/user.slice"):  # levels without a quota: -1
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in (("cpu.cfs_quota_us", "-1\n"), ("cpu.cfs_period_us", "100000\n")):
            if not (root / folder / name).exists():
                (root / folder / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(
        "12:memory:/user.slice/job\n4:cpu,cpuacct:/user.slice/job\n"
        "1:name=systemd:/user.slice/job\n0::/user.slice/job\n"
    )
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroup, "PROC_CGROUP", proc)
    assert cgroup.cpu_quota() == quota


def test_cores_above_the_quota_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cgroups(monkeypatch, tmp_path / "cgroup", {"cpu.max": "400000 100000\n"})
    line = container.cores_above_quota(64)
    assert line and "--cores 64" in line and "run with --cores 4" in line
    assert container.cores_above_quota(4) is None
    fake_cgroups(monkeypatch, tmp_path / "none", {"cpu.max": "max 100000\n"})
    assert container.cores_above_quota(64) is None


def test_a_run_with_more_cores_than_the_container_may_use_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`snakemake --cores all` in `docker run --cpus 4` on a 64-core host counts 64 cores
    (the affinity mask; the limit is a quota) and started 64 jobs at once without a word."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "proc-self-cgroup").write_text("0::/\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from pathlib import Path\nimport zoommil.cgroup as cgroup\n"
        f"cgroup.CGROUP_ROOT = Path({str(root)!r})\n"
        f"cgroup.PROC_CGROUP = Path({str(tmp_path / 'proc-self-cgroup')!r})\n"
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    workdir = harness.copy_workflow(tmp_path / "run", with_sources=False)
    result = harness.snakemake(workdir, "-n", "--quiet", "rules", cores=8)
    assert "zoommil: --cores 8, but this container's CPU limit is 4 CPU(s)" in result.stderr
