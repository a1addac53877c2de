"""At the end of a failed run, the logs of the jobs that failed, in one list.

Why: Snakemake ends a failed run with "Look above for error messages" and the path of its own
log. Each failed job's block (with its log shown) is printed when the job fails, so with
`keep-going` (the cluster profiles) or a long local run it lies hours of output above the end,
and the last screen named no job log at all. The Snakefile's ``onerror`` prints these lines,
read back from Snakemake's own log file (it holds the same blocks as the terminal, with the
SLURM job's log beside the rule's where the executor adds it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

_RULE = re.compile(r"^\s*(?:Error in )?rule (\S+):$")
_JOBID = re.compile(r"^\s*jobid: (\d+)$")
_LOG = re.compile(r"^\s*log: (.+) \(check log file\(s\) for error details\)$")
_RESTART = re.compile(r"^Trying to restart job (\d+)\.$")


def failed_job_logs(lines: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(rule, log files) of each job that failed for good, in the order Snakemake reported
    them; a failure followed by a restart of that job (`retries`) is left out."""
    failed: dict[str, tuple[str, list[str]]] = {}
    rule, jobid = "", ""
    for line in lines:
        line = line.rstrip("\n")
        if match := _RULE.match(line):
            rule, jobid = match[1], ""
        elif match := _JOBID.match(line):
            jobid = match[1]
        elif (match := _LOG.match(line)) and rule:
            failed.pop(jobid, None)  # a later failure of the same job goes last
            failed[jobid] = (rule, match[1].split(", "))
        elif match := _RESTART.match(line):
            failed.pop(match[1], None)
    return list(failed.values())


def failed_logs_message(snakemake_logs: Iterable[str | Path]) -> list[str]:
    """The lines naming the failed jobs' logs, from Snakemake's log file(s) (a list in
    Snakemake 9; one path is taken as one file, not as its characters); none when no failed
    job names a log (or the file cannot be read)."""
    if isinstance(snakemake_logs, str | Path):
        snakemake_logs = [snakemake_logs]
    failed: list[tuple[str, list[str]]] = []
    for path in snakemake_logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                failed += failed_job_logs(handle)
        except OSError:
            continue
    if not failed:
        return []
    lines = [f"zoommil: {len(failed)} job(s) failed; the reason is at the end of each log:"]
    lines += [f"  {rule}: {', '.join(logs)}" for rule, logs in failed]
    return lines
