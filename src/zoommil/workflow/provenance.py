"""results/provenance.json: the resolved config and the environment of a workflow run.

Why: Snakemake keeps neither in results/, and `snakemake --report` labels the report from the
config it is given now, so a results folder read months later (or a report made without the
run's --configfile) could not say which settings, code and machine made it (review B). The
rule reruns whenever the config's values or this code change (its params), so the record
describes the config the results were last brought up to date with. Per-job machines (a
cluster) are in each output's own record (metrics.json, feature files, timing JSONs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoommil.environment import environment
from zoommil.io.jsonio import to_plain, write_json


def config_text(config: Mapping[str, Any]) -> str:
    """The config as canonical JSON (sorted keys): the rule's params value, so the same
    values written in another order rerun nothing."""
    return json.dumps(to_plain(dict(config)), sort_keys=True, default=str)


def write_provenance(path: str | Path, config_json: str) -> dict[str, Any]:
    record = {"config": json.loads(config_json), "environment": environment()}
    write_json(path, record)
    return record


def log_line(record: Mapping[str, Any], path: str | Path) -> str:
    """The provenance job's log line: the zoommil version and commit the record names.

    Why: the line printed only the commit, which is None outside an editable install of a
    git checkout (a pip or `--sdm conda` install, a copied folder), and the log read
    ``zoommil None``."""
    env = record["environment"]
    commit = env.get("zoommil_commit")
    where = f"commit {commit}" if commit else "no git commit (not an editable git checkout)"
    return f"zoommil {env.get('zoommil_version')}, {where} -> {path}"
