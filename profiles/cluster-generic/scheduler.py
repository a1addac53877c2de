#!/usr/bin/env python3
"""Submit, poll and cancel Snakemake jobs on SLURM or PBS for the cluster-generic executor.

Why a script and not a one-line submit command: a rule's resources differ (GPU or not, memory,
runtime), and a fixed `sbatch --gpus={resources.gpu}` line would ask CPU jobs for `--gpus=0`,
which some sites reject. This script reads the job's properties from the jobscript Snakemake
writes (`# properties = {...}`) and builds the scheduler's own options. Standard library only.

    scheduler.py submit JOBSCRIPT     prints the scheduler's job id
    scheduler.py status JOBID         prints running | success | failed (running while the
                                      scheduler does not answer: failed would resubmit it)
    scheduler.py cancel JOBID...      cancels the jobs

ZOOMMIL_SCHEDULER=slurm (default) or pbs picks the scheduler; ZOOMMIL_SLURM_PARTITION /
ZOOMMIL_SLURM_GPU_PARTITION / ZOOMMIL_SLURM_ACCOUNT (SLURM) or ZOOMMIL_PBS_QUEUE /
ZOOMMIL_PBS_GPU_QUEUE / ZOOMMIL_PBS_ACCOUNT (PBS) say where jobs go; resources
`slurm_partition` / `slurm_account` set per rule in the profile win over them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

# PREEMPTED stays failed: a requeued job shows its new record (PENDING) in sacct, while a job
# preempted under PreemptMode=CANCEL stays PREEMPTED for good, and "running" would wait forever.
RUNNING_SLURM = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD",
}  # fmt: skip
LOG_DIR = Path(".snakemake/cluster_logs")
QUERY_TIMEOUT_S = 60
# What the scheduler says of a job it does not know (finished and purged, or never ran); any
# other failed query is the scheduler not answering (e.g. "Socket timed out on send/recv").
UNKNOWN_JOB = re.compile(r"invalid job id|unknown job id", re.IGNORECASE)


def scheduler() -> str:
    name = os.environ.get("ZOOMMIL_SCHEDULER", "slurm").lower()
    if name not in ("slurm", "pbs"):
        sys.exit(f"scheduler.py: ZOOMMIL_SCHEDULER must be slurm or pbs, not {name!r}")
    return name


def read_properties(jobscript: Path) -> dict:
    """The job properties Snakemake embeds in the jobscript's second line."""
    for line in jobscript.read_text().splitlines()[:5]:
        if line.startswith("# properties = "):
            return json.loads(line[len("# properties = ") :])
    sys.exit(f"scheduler.py: no '# properties = ' line in {jobscript}")


def job_name(props: dict) -> str:
    name = props.get("rule") or f"group_{props.get('groupid', 'job')}"
    return f"smk-{name}-{props.get('jobid', 0)}"


def slurm_submit_args(props: dict) -> list[str]:
    res = props.get("resources", {})
    model = res.get("gpu_model")
    # `gpu_model` alone asks for one GPU of that model, as in the slurm executor plugin
    gpus = int(res.get("gpu", 0) or 0) if "gpu" in res or not model else 1
    gpu_job = gpus > 0 or "gpu" in str(res.get("gres") or "")  # --gres-only sites: gres gpu:1
    env = os.environ
    partition = (
        res.get("slurm_partition")
        or (gpu_job and env.get("ZOOMMIL_SLURM_GPU_PARTITION"))
        or env.get("ZOOMMIL_SLURM_PARTITION")
    )
    account = res.get("slurm_account") or env.get("ZOOMMIL_SLURM_ACCOUNT")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    args = [
        "sbatch", "--parsable", f"--job-name={job_name(props)}",
        f"--output={LOG_DIR / (job_name(props) + '-%j.log')}",
        "--ntasks=1", f"--cpus-per-task={int(props.get('threads', 1))}",
    ]  # fmt: skip
    if res.get("mem_mb"):
        args.append(f"--mem={int(res['mem_mb'])}")
    if res.get("runtime"):
        args.append(f"--time={int(res['runtime'])}")
    if gpus:
        args.append(f"--gpus={model}:{gpus}" if model else f"--gpus={gpus}")
    elif res.get("gres"):
        args.append(f"--gres={res['gres']}")
    if partition:
        args.append(f"--partition={partition}")
    if account:
        args.append(f"--account={account}")
    if res.get("slurm_extra"):
        args.extend(str(res["slurm_extra"]).split())
    return args


def pbs_submit_args(props: dict) -> list[str]:
    res = props.get("resources", {})
    gpus = int(res.get("gpu", 0) or 0)
    env = os.environ
    select = f"select=1:ncpus={int(props.get('threads', 1))}"
    if res.get("mem_mb"):
        select += f":mem={int(res['mem_mb'])}mb"
    if gpus:
        select += f":ngpus={gpus}"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    args = ["qsub", "-N", job_name(props)[:15], "-j", "oe", "-o", str(LOG_DIR), "-l", select]
    if res.get("runtime"):
        minutes = int(res["runtime"])
        args += ["-l", f"walltime={minutes // 60:02d}:{minutes % 60:02d}:00"]
    queue = (gpus and env.get("ZOOMMIL_PBS_GPU_QUEUE")) or env.get("ZOOMMIL_PBS_QUEUE")
    if queue:
        args += ["-q", queue]
    if env.get("ZOOMMIL_PBS_ACCOUNT"):
        args += ["-A", env["ZOOMMIL_PBS_ACCOUNT"]]
    return args


def submit(jobscript: str) -> None:
    """Print the job id; a refused submission exits with the scheduler's own message and
    code (e.g. sbatch's "Invalid account or account/partition combination specified").

    The message goes to stdout: the cluster-generic plugin (1.0.9) keeps only the submit
    command's stdout in the job's error (Snakemake's log, the run's last lines); its stderr
    reaches the terminal alone."""
    props = read_properties(Path(jobscript))
    args = slurm_submit_args(props) if scheduler() == "slurm" else pbs_submit_args(props)
    out = subprocess.run([*args, jobscript], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stdout.write(out.stderr or out.stdout or f"{args[0]} exited {out.returncode}\n")
        sys.exit(out.returncode)
    # sbatch --parsable prints "id" or "id;cluster" (kept: status and cancel need the
    # cluster, `-M`, where it is not the local one); qsub prints "id.server"
    print(out.stdout.strip())


def slurm_job(jobid: str) -> tuple[str, list[str]]:
    """The job id and, for "ID;CLUSTER" (a job sent to another cluster), ``-M CLUSTER``."""
    job, _, cluster = jobid.partition(";")
    return job, (["-M", cluster] if cluster else [])


def query(args: list[str]) -> str | None:
    """The first line of a status query's answer ('' when the scheduler does not know the
    job), or None when the scheduler did not answer (down, timed out, overloaded)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"scheduler.py: {args[0]} timed out", file=sys.stderr)
        return None
    if out.returncode != 0:
        if UNKNOWN_JOB.search(out.stderr + out.stdout):
            return ""
        print(f"scheduler.py: {args[0]}: {out.stderr.strip()}", file=sys.stderr)
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if lines else ""


def slurm_status(jobid: str) -> str:
    """A job SLURM does not know is failed only when SLURM answered: a failed query (the
    controller down or timing out) says running, else Snakemake would submit the running job
    again."""
    job, where = slurm_job(jobid)
    state = query(["sacct", "-X", "-n", "-P", "-j", job, *where, "-o", "State"])
    if not state:  # no accounting database: slurmctld remembers finished jobs for MinJobAge
        squeue = query(["squeue", "-h", "-j", job, *where, "--states=all", "-o", "%T"])
        if squeue is None:
            return "running"
        state = squeue
    state = state.split()[0].rstrip("+") if state else ""
    if not state:
        print(f"scheduler.py: SLURM does not know job {jobid}", file=sys.stderr)
        return "failed"
    if state in RUNNING_SLURM:
        return "running"
    return "success" if state == "COMPLETED" else "failed"


#: A job's state and exit status in `qstat -f` text (``job_state = R``) or Torque's XML.
PBS_STATE = re.compile(r"job_state(?:\s*=\s*|>)(\w)")
PBS_EXIT = re.compile(r"[Ee]xit_status(?:\s*=\s*|>)(-?\d+)")


def pbs_status(jobid: str) -> str:
    """As slurm_status: failed for a job the server does not know, running while it does
    not answer. PBS Pro and OpenPBS need -x for finished jobs and answer ``job_state = F``;
    Torque's -x means XML (``<job_state>C</job_state>``), or is refused by an old one (then
    plain -f), so both forms are read."""
    out = subprocess.run(["qstat", "-x", "-f", jobid], capture_output=True, text=True)
    if out.returncode != 0:  # an old Torque: no -x
        out = subprocess.run(["qstat", "-f", jobid], capture_output=True, text=True)
    text = out.stdout
    state = PBS_STATE.search(text)
    if not state:
        if out.returncode != 0 and not UNKNOWN_JOB.search(out.stderr + text):
            print(f"scheduler.py: qstat: {out.stderr.strip()}", file=sys.stderr)
            return "running"
        return "failed"
    if state.group(1) not in ("F", "C"):
        return "running"
    code = PBS_EXIT.search(text)
    return "success" if code and code.group(1) == "0" else "failed"


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("submit", "status", "cancel"):
        sys.exit(__doc__)
    command, args = argv[0], argv[1:]
    if command == "submit":
        submit(args[-1])
    elif command == "status":
        print(slurm_status(args[0]) if scheduler() == "slurm" else pbs_status(args[0]))
    elif scheduler() == "pbs":
        subprocess.run(["qdel", *args], check=False)
    else:
        for jobid in args:
            job, where = slurm_job(jobid)
            subprocess.run(["scancel", *where, job], check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
