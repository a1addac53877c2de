"""At the end of a failed run, the logs of the jobs that failed, in one list.

Why: Snakemake ends a failed run with "Look above for error messages" and the path of its own
log. Each failed job's block (with its log shown) is printed when the job fails, so with
`keep-going` (the cluster profiles) or a long local run it lies hours of output above the end,
and the last screen named no job log at all. The Snakefile's ``onerror`` prints these lines,
read back from Snakemake's own log file (it holds the same blocks as the terminal, with the
SLURM job's log beside the rule's where the executor adds it).

A job the scheduler refused (`sbatch` failed: a cap on the jobs a user may queue, an unknown
partition or account) never ran, so its rule log, if any, is an earlier run's: its line gives
the scheduler's reason instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

_RULE = re.compile(r"^\s*(?:Error in )?rule (\S+):$")
_JOBID = re.compile(r"^\s*jobid: (\d+)$")
_LOG = re.compile(r"^\s*log: (.+) \(check log file\(s\) for error details\)$")
_RESTART = re.compile(r"^Trying to restart job (\d+)\.$")
# An executor's submission failure, as the SLURM and cluster-generic plugins word it.
_REFUSED = re.compile(
    r"^\s*message: (?:SLURM sbatch failed\. The error message was '|Error submitting jobscript)"
)
#: The plugins' own words before the scheduler's message.
_PLUGIN_HEAD = re.compile(
    r"^(?:SLURM sbatch failed\. The error message was '"
    r"|Error submitting jobscript \(exit code -?\d+\):)"
)
_SBATCH_ERROR = "sbatch: error: "
#: A refusal whose message holds no word of the scheduler's: the cluster-generic plugin keeps
#: only the submit command's stdout, so a command that writes its error to stderr leaves it on
#: the terminal alone.
_NO_REASON = (
    "no reason in Snakemake's log (the submit command wrote it to stderr, which went to the "
    "terminal only)"
)
_FIELD = re.compile(r"^\s{4}\S|^For further error details")
_SUBMIT_CAP = re.compile(r"submit ?(?:job)?s? ?limit|MaxSubmitJob", re.IGNORECASE)


class FailedJob(NamedTuple):
    """A job that failed for good: its rule, its logs, and the scheduler's reason where the
    scheduler refused it (then it never ran)."""

    rule: str
    logs: list[str]
    refused: str = ""


def failed_job_logs(lines: Iterable[str]) -> list[FailedJob]:
    """Each job that failed for good, in the order Snakemake reported them; a failure followed
    by a restart of that job (`retries`) is left out."""
    failed: dict[str, FailedJob] = {}
    rule, jobid = "", ""
    refusal: list[str] | None = None  # the scheduler's message, where it refused the job
    in_message = False  # the message goes on over lines of its own (sbatch's stderr)
    for line in lines:
        line = line.rstrip("\n")
        if in_message and refusal is not None and not _FIELD.match(line):
            refusal.append(line)
            continue
        in_message = False
        if match := _RULE.match(line):
            rule, jobid, refusal = match[1], "", None
        elif _REFUSED.match(line):
            refusal, in_message = [line.split("message: ", 1)[1]], True
        elif match := _JOBID.match(line):
            jobid = match[1]
        elif (match := _LOG.match(line)) and rule:
            failed.pop(jobid, None)  # a later failure of the same job goes last
            reason = _refusal_reason(refusal) if refusal is not None else ""
            failed[jobid] = FailedJob(rule, match[1].split(", "), reason)
        elif match := _RESTART.match(line):
            failed.pop(match[1], None)
    return list(failed.values())


def _refusal_reason(text: list[str]) -> str:
    """The scheduler's error lines of a refused submission in one line, without the plugin's
    wording and quoting.

    Why every error line, not the last: sbatch prints the cause first (`invalid partition
    specified: gpu`, `CPU count per node can not be satisfied`) and the general 'Batch job
    submission failed: ...' last, which does not say which partition or request it refused."""
    lines = [_PLUGIN_HEAD.sub("", line).strip().rstrip(".").rstrip("'").strip() for line in text]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "error" in line.lower()] or lines or [_NO_REASON]
    return "; ".join([errors[0], *(line.removeprefix(_SBATCH_ERROR) for line in errors[1:])])


def failed_logs_message(snakemake_logs: Iterable[str | Path]) -> list[str]:
    """The lines naming the failed jobs' logs, from Snakemake's log file(s) (a list in
    Snakemake 9; one path is taken as one file, not as its characters); none when no failed
    job names a log (or the file cannot be read)."""
    if isinstance(snakemake_logs, str | Path):
        snakemake_logs = [snakemake_logs]
    failed: list[FailedJob] = []
    for path in snakemake_logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                failed += failed_job_logs(handle)
        except OSError:
            continue
    if not failed:
        return []
    refused = [job for job in failed if job.refused]
    head = f"zoommil: {len(failed)} job(s) failed; the reason is at the end of each log"
    if refused:
        head += (
            f", but {len(refused)} the scheduler refused never ran (a log named for them "
            "is an earlier run's)"
        )
    lines = [f"{head}:"]
    lines += [
        f"  {job.rule}: {', '.join(job.logs)}{' (refused)' if job.refused else ''}"
        for job in failed
    ]
    for reason in dict.fromkeys(job.refused for job in refused):  # each reason once, in order
        count = sum(job.refused == reason for job in refused)
        lines.append(f"zoommil: the scheduler refused {count} job(s): {reason}")
    if any(_SUBMIT_CAP.search(job.refused) for job in refused):
        lines.append(
            "zoommil: the scheduler caps the jobs you may have queued (MaxSubmitJobs): set the "
            "profile's `jobs` (or --jobs N) below that cap, less the jobs you have queued "
            "elsewhere, and run the same command again (docs/cluster.md, 'Jobs per user')"
        )
    return lines
