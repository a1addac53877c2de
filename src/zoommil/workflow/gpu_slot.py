"""Run a workflow job on a GPU of its own: `python -m zoommil.workflow.gpu_slot -- CMD ...`.

Why: Snakemake counts `--resources gpu=N` but names no GPU to a local job, and `--device
auto` (or `cuda`) takes cuda:0. On one machine with several GPUs (a whole GPU node from
`srun --gres=gpu:4 --pty bash`, a DGX workstation) concurrent `features` jobs all ran on the
first card while the others sat idle. This prefix claims one free GPU for the job's lifetime
with an OS lock (`flock` on a file per GPU under ``.snakemake/gpu_slots/``), sets
``CUDA_VISIBLE_DEVICES`` to it and execs the command, which then holds the lock: the kernel
releases it when the job ends or dies. Where there is nothing to choose (one GPU visible, as
in a SLURM job granted one; none; ``CUDA_VISIBLE_DEVICES=`` hiding them) it execs the command
unchanged. Standard library only: importing torch would cost seconds per job.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

LOCK_DIR = Path(".snakemake") / "gpu_slots"
_UUID = re.compile(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)")


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs a job may use: ``CUDA_VISIBLE_DEVICES`` where set (empty: none), else the
    UUIDs `nvidia-smi -L` lists (a MIG-enabled card's MIG devices in its place), else none."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _uuids(listing)


def _uuids(listing: str) -> list[str]:
    """GPU UUIDs of `nvidia-smi -L`, each MIG-enabled GPU replaced by its MIG devices (CUDA
    runs a process on one MIG device, named by its UUID)."""
    gpus: list[list[str]] = []
    for line in listing.splitlines():
        match = _UUID.search(line)
        if match is None:
            continue
        if match[1].startswith("MIG-") and gpus:
            if gpus[-1][0].startswith("GPU-"):
                gpus[-1] = []
            gpus[-1].append(match[1])
        else:
            gpus.append([match[1]])
    return [uuid for group in gpus for uuid in group]


def claim(gpus: Sequence[str], lock_dir: Path = LOCK_DIR, poll_s: float = 1.0) -> tuple[str, int]:
    """Lock the first free GPU of `gpus`, waiting while all are held: (GPU, open lock fd).

    The lock files are named by host too, so that jobs on other nodes sharing the working
    directory (a cluster's file system) never wait for each other."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    waiting = False
    while True:
        for gpu in gpus:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{host}.{gpu}") + ".lock"
            fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return gpu, fd
        if not waiting:
            print(
                f"gpu_slot: all {len(gpus)} GPUs are held by other jobs, waiting", file=sys.stderr
            )
            waiting = True
        time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> None:
    """Claim a GPU where several are visible, then exec the command after ``--``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise SystemExit("usage: python -m zoommil.workflow.gpu_slot -- COMMAND [ARGS...]")
    gpus = visible_gpus()
    if len(gpus) > 1:
        gpu, fd = claim(gpus)
        os.set_inheritable(fd, True)  # the command holds the lock until it exits
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        print(f"gpu_slot: CUDA_VISIBLE_DEVICES={gpu} (1 of {len(gpus)} GPUs)", file=sys.stderr)
        sys.stderr.flush()
    try:
        os.execvp(args[0], args)
    except OSError as error:
        raise SystemExit(f"gpu_slot: cannot run {args[0]!r}: {error}") from None


if __name__ == "__main__":
    main()
