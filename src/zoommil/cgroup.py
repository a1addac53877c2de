"""The CPU limit a container puts on this process: `docker run --cpus 4`, a Kubernetes limit.

Why a module of its own: such a limit is a cgroup bandwidth quota (CPU time per period), not
an affinity mask, so `os.sched_getaffinity`, `os.cpu_count` (and Python 3.13's
`os.process_cpu_count`), torch's default threads and Snakemake's `--cores all` still count
every core of the host: 64 on a 64-core node where the container may use 4 CPUs' time. The
workflow reads it (no torch import) to say so before a run.
"""

from __future__ import annotations

from pathlib import Path

#: Where the cgroup file systems are mounted, and this process's cgroups (module attributes,
#: read at each call, so a test can point them at a folder of its own).
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
#: cgroup v1's CPU controller folders (the second is the same on most systems).
_V1_FOLDERS = ("cpu", "cpu,cpuacct")


def cpu_quota() -> int | None:
    """Whole CPUs of time this process's cgroups allow per period, rounded up (as joblib's
    loky, Java and Go do: a 2.5-CPU quota is 3); the smallest where several levels set one;
    None where none is set or the files cannot be read (not Linux, no cgroups)."""
    quotas = [q for q in (*_v2_quotas(), *_v1_quotas()) if q is not None]
    return min(quotas) if quotas else None


def _v2_quotas() -> list[int | None]:
    """``cpu.max`` of this process's cgroup v2 and each one above it ("max": none): with a
    private cgroup namespace (Docker's default on cgroup v2) the container's own is at the
    root of the mount; without one its folder is the path in /proc/self/cgroup."""
    return [_quota_file(f / "cpu.max") for f in _up_from(CGROUP_ROOT, _own_path(""))]


def _own_path(controller: str) -> str:
    """This process's cgroup path in /proc/self/cgroup: the line "0::/PATH" of cgroup v2
    (``controller`` ""), or the v1 line "N:cpu,cpuacct:/PATH" naming ``controller``; "/"
    if none."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controller in controllers.split(","):
            return path or "/"
    return "/"


def _up_from(mount: Path, path: str) -> list[Path]:
    """The folder of cgroup ``path`` under ``mount`` and each one above it up to ``mount``:
    each level's limit applies to the process."""
    folder = mount / path.lstrip("/")
    return [f for f in [folder, *folder.parents] if f.is_relative_to(mount)]


def _quota_file(path: Path) -> int | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _whole_cpus(fields[0], fields[1])


def _v1_quotas() -> list[int | None]:
    """cgroup v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (-1: none), along the
    process's cpu cgroup path as for v2: in a container the mount's root is its own cgroup,
    outside one (a systemd slice's CPUQuota=) the quota is on the process's folder."""
    quotas = []
    for name in _V1_FOLDERS:
        for folder in _up_from(CGROUP_ROOT / name, _own_path("cpu")):
            try:
                quota = (folder / "cpu.cfs_quota_us").read_text()
                period = (folder / "cpu.cfs_period_us").read_text()
            except OSError:
                continue
            quotas.append(_whole_cpus(quota, period))
    return quotas


def _whole_cpus(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return -(-q // p) if q > 0 and p > 0 else None
