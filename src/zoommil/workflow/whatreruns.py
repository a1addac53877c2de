"""Which rules an uncommitted code change reruns: `python -m zoommil.workflow.whatreruns [REV]`.

Why: each rule's `code` param hashes its command's import closure (`codehash`), so an edit of
a module in the closure of tissue, tile or features reruns every user's feature extraction
and, after it, every training. This compares the hashes of the working tree's
``src/zoommil`` and ``scripts/`` with those of a git revision (default ``HEAD``, extracted
with ``git archive``) and lists the rules whose hash changes and the modules that change it,
before the edit is committed. Run it from the checkout's root. No rule imports this module,
so editing it reruns nothing.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from zoommil.workflow.codehash import _source, closure, code_hash, entry_files

#: ``rule NAME:`` / ``checkpoint NAME:`` at the start of a line of a ``.smk`` file.
_RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)
#: ``code=code("entry", ...)`` or ``code=all_code(...)`` inside a rule's ``params:``.
_CODE = re.compile(r"\bcode=(all_code|code)\(([^)]*)\)")
_ARG = re.compile(r"""["']([^"']+)["']""")
#: What a rule that hashes every rule's code (`all_code`) is listed with.
ALL_CODE = "*"


def rule_entries(rules_dir: str | Path) -> dict[str, list[str]]:
    """Rule -> the entries its `code` param hashes, read from ``rules_dir/*.smk``; a rule of
    `all_code` gets its own entries plus `ALL_CODE` (every other rule's entries)."""
    found: dict[str, list[str]] = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        starts = [(m.start(), m.group(1)) for m in _RULE.finditer(text)]
        for i, (start, rule) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            match = _CODE.search(text, start, end)
            if match is None:
                continue
            entries = _ARG.findall(match.group(2))
            found[rule] = entries + ([ALL_CODE] if match.group(1) == "all_code" else [])
    return found


def hashed_entries(entries: list[str], rules: dict[str, list[str]]) -> list[str]:
    """The entries `code_hash` gets: `ALL_CODE` replaced by every rule's entries."""
    if ALL_CODE not in entries:
        return entries
    every = {e for es in rules.values() for e in es if e != ALL_CODE}
    return sorted(every | {e for e in entries if e != ALL_CODE})


def _dumps(tree: Path, entries: list[str]) -> dict[str, str]:
    """Module -> normalised syntax tree of the entries' closure in ``tree``."""
    found = closure(tree / "src" / "zoommil", entries, tree)
    return {name: _source(path)[1] for name, path in found.items()}


def _absent(tree: Path, entries: list[str]) -> list[str]:
    """The entries without a file in ``tree`` (a command or script new, or deleted)."""
    absent = []
    for entry in entries:
        try:
            entry_files(tree / "src" / "zoommil", entry, tree)
        except FileNotFoundError:
            absent.append(entry)
    return absent


def _absent_label(old: Path, new: Path, entries: list[str]) -> str | None:
    """``"(deleted: ...)"`` for entries in ``old`` but not ``new`` (the rule's `code` param
    fails at load), ``"(missing: ...)"`` for entries in neither, ``"(new: ...)"`` for entries
    only in ``new``; None where every entry is in both."""
    gone, before = _absent(new, entries), _absent(old, entries)
    labels = {
        "deleted": [e for e in gone if e not in before],
        "missing": [e for e in gone if e in before],
        "new": [e for e in before if e not in gone],
    }
    for label, found in labels.items():
        if found:
            return f"({label}: {', '.join(found)})"
    return None


def changed_rules(old: Path, new: Path) -> dict[str, list[str]]:
    """Rule -> modules whose change reruns it, between two checkouts ``old`` and ``new``
    (each with ``src/zoommil``, ``scripts`` and ``workflow/rules``); rules whose code is the
    same are left out. A rule with an entry only in ``new`` lists ``"(new: ENTRY)"``, one with
    an entry only in ``old`` (a deleted script) ``"(deleted: ENTRY)"``, one with an entry in
    neither ``"(missing: ENTRY)"``."""
    rules = rule_entries(new / "workflow" / "rules")
    out: dict[str, list[str]] = {}
    for rule, entries in rules.items():
        entries = hashed_entries(entries, rules)
        label = _absent_label(old, new, entries)
        if label is not None:
            out[rule] = [label]
            continue
        after = _dumps(new, entries)
        before = _dumps(old, entries)
        if code_hash(new / "src" / "zoommil", entries, new) == code_hash(
            old / "src" / "zoommil", entries, old
        ):
            continue
        out[rule] = sorted(m for m in before.keys() | after.keys() if before.get(m) != after.get(m))
    return out


def _hasher_changed(old: Path, new: Path) -> bool:
    """Whether the hash function itself differs between the trees (by syntax tree)."""
    path = Path("src", "zoommil", "workflow", "codehash.py")
    if not (old / path).is_file():
        return True
    return _source(old / path)[1] != _source(new / path)[1]


def _git(repo: Path, *args: str) -> bytes:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"whatreruns: git {' '.join(args)}: {result.stderr.decode().strip()}")
    return result.stdout


def extract(repo: Path, rev: str, into: Path) -> None:
    """The code and rules of ``rev`` (``src/zoommil``, ``scripts``, ``workflow/rules``)."""
    data = _git(repo, "archive", "--format=tar", rev, "--", "src/zoommil", "scripts", "workflow")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: no links or paths out of `into`
            archive.extractall(into, filter="data")
        else:
            archive.extractall(into)  # git's own archive of this repository


def edited_workflow_files(repo: Path, rev: str) -> list[str]:
    """The Snakefile and rule files that differ from ``rev``: `git diff`'s, and the untracked
    ones it leaves out (a new rules file not yet added), ignored files apart."""
    paths = ("--", "Snakefile", "workflow/rules")
    edited = _git(repo, "diff", "--name-only", "-z", rev, *paths)
    untracked = _git(repo, "ls-files", "-z", "--others", "--exclude-standard", *paths)
    return sorted({path for path in (edited + untracked).decode().split("\0") if path})


def report(changes: dict[str, list[str]], rev: str) -> str:
    """The lines printed: each rerun rule with the modules that rerun it."""
    if not changes:
        return (
            f"No rule's code differs from {rev}: the working tree's src/zoommil and scripts "
            "rerun nothing (comments, docstrings and formatting do not count)."
        )
    width = max(map(len, changes))
    lines = [f"Rules whose code differs from {rev} (each reruns, and every job after it):"]
    for rule, modules in sorted(changes.items()):
        lines.append(f"  {rule:<{width}}  {', '.join(modules)}")
    lines.append(
        "A rerun of inspect, tissue, tile or features redoes every slide's chain and every "
        "training after it; `snakemake -n` shows the jobs."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.workflow.whatreruns", description=__doc__.splitlines()[0]
    )
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision (default HEAD)")
    args = parser.parse_args(argv)
    repo = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel").decode().strip())
    with tempfile.TemporaryDirectory(prefix="zoommil-whatreruns-") as tmp:
        extract(repo, args.rev, Path(tmp))
        print(report(changed_rules(Path(tmp), repo), args.rev))
        if _hasher_changed(Path(tmp), repo):
            print(
                "src/zoommil/workflow/codehash.py itself differs: the hashes above are both "
                "made by the working tree's; users' runs hold the old one's, and every rule "
                "whose hash it changes reruns (check with `snakemake -n` beside an earlier run)"
            )
    edited = edited_workflow_files(repo, args.rev)
    if edited:
        print(
            "Edited workflow files (a rule's shell command is not watched: after changing "
            "one, rerun that rule with `snakemake --forcerun RULE`): " + ", ".join(edited)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
