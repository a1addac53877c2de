"""Where the zoommil checkout is, seen from the workflow's rule files.

A module of its own, not in `params` (which the QC and report scripts import): an edit here
changes no rule's code hash, so it reruns nothing.
"""

from __future__ import annotations

from pathlib import Path

from zoommil.errors import ZoomMILError


def checkout_root(rules_dir: str) -> Path:
    """The checkout that holds the workflow, from the folder of its `workflow/rules/*.smk`
    (Snakemake's `workflow.current_basedir` while it parses them).

    Why not `workflow.basedir`: that is the folder of the *main* Snakefile, which is a
    deployment's own folder where zoommil is used as a module (`module zoommil: snakefile:
    "/path/to/zoommil/Snakefile"`, as snakedeploy writes), and the scripts and sources the
    rules hash were looked for there. The hashes read files, so the checkout must be local.
    """
    if "://" in rules_dir:
        raise ZoomMILError(
            f"the zoommil workflow is read from {rules_dir}, not from a folder: it hashes its "
            "scripts and sources (the rules' rerun trigger) and needs a local checkout; clone "
            "it (git clone --branch TAG ...) and name its Snakefile by path in the module's "
            "`snakefile:` (README, section Using it as a Snakemake module)"
        )
    return Path(rules_dir).resolve().parents[1]
