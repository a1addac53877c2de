"""`python -m zoommil.workflow.whatreruns`: the rules a working-tree change reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_config import harness

from zoommil.workflow import whatreruns
from zoommil.workflow.codehash import closure, code_hash

REPO = Path(__file__).resolve().parents[1]

# The `code` param of every rule as Snakemake computes it (provenance's is a param function).
SNAKEMAKE_CODE_PARAMS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, OutputSettings, ResourceSettings,
                                      StorageSettings)
with SnakemakeApi(OutputSettings(quiet=True)) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                            storage_settings=StorageSettings(), snakefile=Path("Snakefile"),
                            workdir=Path("."))._workflow
    codes = {}
    for rule in workflow.rules:
        code = dict(rule.params.items()).get("code")
        if code is not None:
            codes[rule.name] = code(None) if callable(code) else code
    print(json.dumps(codes))
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A git repository of the workflow and its sources, everything committed."""
    repo = harness.copy_workflow(tmp_path / "zoommil")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    return repo


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is no longer in {path}: update the test"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _whatreruns(repo: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "zoommil.workflow.whatreruns"],
        cwd=repo,
        env=harness.library_env(repo),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_rules_entries_give_the_code_params_snakemake_computes(tmp_path: Path) -> None:
    """The tool reads each rule's entries from the .smk text: a rule it missed, or entries
    it read wrong, would leave a rerun out of its answer."""
    workdir = harness.copy_workflow(tmp_path / "zoommil")
    result = subprocess.run(
        [sys.executable, "-c", SNAKEMAKE_CODE_PARAMS],
        cwd=workdir,
        env=harness.library_env(workdir),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    snakemake_codes = json.loads(result.stdout.strip().splitlines()[-1])
    rules = whatreruns.rule_entries(workdir / "workflow" / "rules")
    ours = {
        rule: code_hash(
            workdir / "src" / "zoommil", whatreruns.hashed_entries(entries, rules), workdir
        )
        for rule, entries in rules.items()
    }
    assert ours == snakemake_codes
    assert {"tissue", "tile", "features", "train", "provenance"} <= set(ours)


def test_editing_the_tool_reruns_no_rule() -> None:
    rules = whatreruns.rule_entries(REPO / "workflow" / "rules")
    for entries in rules.values():
        found = closure(REPO / "src" / "zoommil", whatreruns.hashed_entries(entries, rules), REPO)
        assert "zoommil.workflow.whatreruns" not in found


def test_a_docstring_reruns_nothing_and_a_behaviour_edit_names_its_rules(checkout: Path) -> None:
    src = checkout / "src" / "zoommil"
    assert "No rule's code differs from HEAD" in _whatreruns(checkout)
    _edit(src / "models" / "abmil.py", "in the flavour used", "in the flavor used")
    assert "No rule's code differs from HEAD" in _whatreruns(checkout)

    # a tissue detector's default: every user's tissue masks and tiles, not training's code
    _edit(src / "wsi" / "tissue.py", "sigma: float = 20.0,", "sigma: float = 21.0,")
    out = _whatreruns(checkout)
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:-1]}
    assert lines["tissue"] == ["zoommil.wsi.tissue"] and lines["tile"] == ["zoommil.wsi.tissue"]
    assert "provenance" in lines and "train" not in lines and "tables" not in lines
    assert "every slide's chain and every training after it" in out


def test_old_and_new_trees_compare_module_by_module(checkout: Path, tmp_path: Path) -> None:
    _edit(checkout / "src" / "zoommil" / "models" / "abmil.py", '"""ABMIL', 'X = 1\n"""ABMIL')
    _edit(checkout / "workflow" / "rules" / "train.smk", "rule train:", "rule train:  # note")
    old = tmp_path / "old"
    whatreruns.extract(checkout, "HEAD", old)
    changes = whatreruns.changed_rules(old, checkout)
    assert changes["train"] == ["zoommil.models.abmil"]
    assert "tissue" not in changes and "features" not in changes
    assert "workflow/rules/train.smk" in _whatreruns(checkout)  # a shell edit is not hashed
    # a new hash function: users' runs hold the old one's hashes
    _edit(
        checkout / "src" / "zoommil" / "workflow" / "codehash.py",
        "\nPACKAGE = ",
        "\nX = 1\nPACKAGE = ",
    )
    assert "codehash.py itself differs" in _whatreruns(checkout)


def test_a_rule_whose_script_is_deleted_is_not_labelled_new(checkout: Path, tmp_path: Path) -> None:
    (checkout / "scripts" / "qc_exclusions.py").unlink()
    old = tmp_path / "old"
    whatreruns.extract(checkout, "HEAD", old)
    changes = whatreruns.changed_rules(old, checkout)
    assert changes["qc_exclusions"] == ["(deleted: scripts/qc_exclusions.py)"]
    assert changes["provenance"] == ["(deleted: scripts/qc_exclusions.py)"]  # all_code
    assert "(new)" not in str(changes)
    # a script new in the working tree is new
    (checkout / "scripts" / "qc_exclusions.py").write_text("X = 1\n", encoding="utf-8")
    (old / "scripts" / "qc_exclusions.py").unlink()
    assert whatreruns.changed_rules(old, checkout)["qc_exclusions"] == [
        "(new: scripts/qc_exclusions.py)"
    ]
    (checkout / "scripts" / "qc_exclusions.py").unlink()  # a typo in a rule's entry
    assert whatreruns.changed_rules(old, checkout)["qc_exclusions"] == [
        "(missing: scripts/qc_exclusions.py)"
    ]


def test_a_new_rules_file_is_named_though_git_diff_does_not_list_it(checkout: Path) -> None:
    """`git diff REV` leaves untracked files out: a new, not yet added, rules file with a
    shell command was missing from the edited workflow files."""
    rules = checkout / "workflow" / "rules"
    (rules / "extra.smk").write_text(
        'rule extra:\n    output:\n        "extra.txt",\n    shell:\n        "touch {output}"\n',
        encoding="utf-8",
    )
    (checkout / ".gitignore").write_text("ignored.smk\n", encoding="utf-8")
    (rules / "ignored.smk").write_text("", encoding="utf-8")
    out = _whatreruns(checkout)
    assert "workflow/rules/extra.smk" in out and "ignored.smk" not in out
