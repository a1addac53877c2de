"""CITATION.cff, docs/citations.bib and the README's reference tables say the same thing.

Why: GitHub's "Cite this repository" and Zenodo read CITATION.cff, people copy BibTeX from
docs/citations.bib or the README, and a reader of a results table looks up a method in the
README's Models table. A release that bumps the package version but not the CFF's, a new
model or encoder without a reference, or a title or DOI corrected in one file only, fails
here. The checks are plain functions so that the tests below can also show them failing on
broken copies (each check is run both ways).
"""

from __future__ import annotations

import copy
import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

import zoommil
from zoommil.features.encoders.registry import encoder_names
from zoommil.models import MODEL_NAMES

REPO = Path(__file__).resolve().parents[1]
CFF = REPO / "CITATION.cff"
Bib = dict[str, dict[str, str]]
BIB = REPO / "docs" / "citations.bib"
README = REPO / "README.md"

#: Models with no paper of their own (README "Models" says so); every other one needs one.
NO_PAPER = {"maxmil", "meanmil"}
#: The DOI pattern of the CFF 1.2.0 schema (`definitions.doi`).
DOI = re.compile(r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: CFF 1.2.0 reference types used here (a subset of the schema's enum).
REFERENCE_TYPES = {"article", "conference-paper", "software", "book", "report", "thesis"}
REQUIRED = ("cff-version", "message", "title", "authors")


def load_cff() -> dict[str, Any]:
    return yaml.safe_load(CFF.read_text(encoding="utf-8"))


# --- checks ---------------------------------------------------------------------------------


def _date_problems(where: str, key: str, value: Any) -> list[str]:
    """A CFF date is YYYY-MM-DD (YAML reads it as a date; quoted, as a string)."""
    if isinstance(value, datetime.date):
        return []
    if isinstance(value, str) and DATE.match(value):
        try:
            datetime.date.fromisoformat(value)
            return []
        except ValueError:
            pass
    return [f"{where}: {key} {value!r} is not a YYYY-MM-DD date"]


def _author_problems(where: str, authors: Any) -> list[str]:
    if not isinstance(authors, list) or not authors:
        return [f"{where}: authors must be a non-empty list"]
    problems = []
    for i, author in enumerate(authors):
        if not isinstance(author, dict) or not (author.get("family-names") or author.get("name")):
            problems.append(f"{where}: author {i} has neither family-names nor name")
    return problems


def _common_problems(where: str, entry: dict[str, Any]) -> list[str]:
    problems = _author_problems(where, entry.get("authors"))
    for key, value in entry.items():
        if key.startswith("date-"):
            problems += _date_problems(where, key, value)
    if "doi" in entry and not (isinstance(entry["doi"], str) and DOI.match(entry["doi"])):
        problems.append(f"{where}: doi {entry['doi']!r} does not match the CFF DOI pattern")
    if "url" in entry and not str(entry["url"]).startswith(("https://", "http://")):
        problems.append(f"{where}: url {entry['url']!r} is not an http(s) URL")
    return problems


def cff_problems(cff: dict[str, Any]) -> list[str]:
    """Every way `cff` breaks the CFF 1.2.0 shapes this project relies on."""
    problems = [f"missing required key {key!r}" for key in REQUIRED if not cff.get(key)]
    if cff.get("cff-version") != "1.2.0":
        problems.append(f"cff-version {cff.get('cff-version')!r} is not '1.2.0'")
    if cff.get("type", "software") not in ("software", "dataset"):
        problems.append(f"type {cff.get('type')!r} is neither software nor dataset")
    if not isinstance(cff.get("version"), str):
        problems.append(f"version {cff.get('version')!r} is not a string (quote it in YAML)")
    problems += _common_problems("CITATION.cff", cff)
    for i, ref in enumerate(cff.get("references", [])):
        where = f"references[{i}] ({ref.get('title', '?')})"
        if ref.get("type") not in REFERENCE_TYPES:
            problems.append(f"{where}: type {ref.get('type')!r} not in {sorted(REFERENCE_TYPES)}")
        if not ref.get("title"):
            problems.append(f"{where}: no title")
        if not isinstance(ref.get("keywords", []), list):
            problems.append(f"{where}: keywords is not a list")
        if "year" in ref and not isinstance(ref["year"], int):
            problems.append(f"{where}: year {ref['year']!r} is not an integer")
        if ref.get("type") != "software" and "year" not in ref:
            problems.append(f"{where}: a paper without a year")
        problems += _common_problems(where, ref)
    return problems


def package_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def version_problems(cff: dict[str, Any], version: str) -> list[str]:
    if cff.get("version") != version:
        return [f"CITATION.cff version {cff.get('version')!r} is not the package's {version!r}"]
    return []


def parse_bib(text: str) -> Bib:
    """``{key: {"ENTRYTYPE": ..., field: value}}`` of a BibTeX file: braced, quoted or bare
    values; lines starting with ``%`` are comments. Enough for our own file, not for any."""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("%"))
    entries: Bib = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        fields = {"ENTRYTYPE": match.group(1).lower()}
        i = match.end()
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text) or text[i] == "}":
                break
            eq = text.index("=", i)
            name = text[i:eq].strip().lower()
            i = eq + 1
            while text[i] in " \t\r\n":
                i += 1
            if text[i] == "{":
                depth, start = 0, i
                while True:
                    depth += {"{": 1, "}": -1}.get(text[i], 0)
                    i += 1
                    if depth == 0:
                        break
                value = text[start + 1 : i - 1]
            elif text[i] == '"':
                end = text.index('"', i + 1)
                value, i = text[i + 1 : end], end + 1
            else:
                end = re.search(r"[,}]", text[i:]).start() + i
                value, i = text[i:end].strip(), end
            fields[name] = value
        assert match.group(2) not in entries, f"duplicate BibTeX key {match.group(2)}"
        entries[match.group(2)] = fields
    return entries


def norm(text: str) -> str:
    """A title as a reader sees it: no BibTeX braces, case or extra spaces."""
    return " ".join(text.replace("{", "").replace("}", "").split()).casefold()


def cff_authors(entry: dict[str, Any]) -> list[str]:
    return [
        a["name"] if "name" in a else f"{a['family-names']}, {a.get('given-names', '')}".strip()
        for a in entry["authors"]
    ]


def bib_authors(value: str) -> list[str]:
    """``Family, Given and {Entity}`` -> ``["Family, Given", "Entity"]`` (split at depth 0)."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(value):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0 and value.startswith(" and ", i):
            names.append(value[start:i])
            start = i + 5
    names.append(value[start:])
    return [n.strip().removeprefix("{").removesuffix("}") for n in names]


def bib_problems(cff: dict[str, Any], bib: Bib) -> list[str]:
    """Where docs/citations.bib and CITATION.cff disagree: one entry per reference (matched by
    title) plus `zoommil`, with the same authors, year and DOI (or neither has one)."""
    problems = []
    software = bib.get("zoommil")
    if software is None:
        problems.append("docs/citations.bib has no @software{zoommil} entry")
    else:
        if norm(software.get("title", "")) != norm(cff["title"]):
            problems.append("zoommil's title differs between CITATION.cff and citations.bib")
        if software.get("version") != cff.get("version"):
            problems.append(
                f"citations.bib zoommil version {software.get('version')!r} is not "
                f"CITATION.cff's {cff.get('version')!r}"
            )
    papers = {norm(f["title"]): key for key, f in bib.items() if key != "zoommil"}
    seen = set()
    for ref in cff.get("references", []):
        key = papers.get(norm(ref["title"]))
        if key is None:
            problems.append(f"no citations.bib entry titled {ref['title']!r}")
            continue
        seen.add(key)
        entry = bib[key]
        if bib_authors(entry.get("author", "")) != cff_authors(ref):
            problems.append(f"{key}: authors differ from CITATION.cff's")
        if str(ref.get("year", "")) != entry.get("year", ""):
            problems.append(f"{key}: year {entry.get('year')!r} vs CFF {ref.get('year')!r}")
        if ref.get("doi", "") != entry.get("doi", ""):
            problems.append(f"{key}: doi {entry.get('doi')!r} vs CFF {ref.get('doi')!r}")
    extra = set(papers.values()) - seen
    problems += [f"citations.bib entry {k} is not in CITATION.cff" for k in sorted(extra)]
    return problems


def readme_table(header: str) -> dict[str, list[str]]:
    """The rows of the README table whose header line starts with `header`, by the name in
    backticks of the first cell: ``{"abmil": [cell, cell, ...]}``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.search(r"`([^`]+)`", cells[0]).group(1)
        rows[name] = cells
    return rows


def reference_problems(
    kind: str, names: list[str], rows: dict[str, list[str]], cff: dict[str, Any],
    bib: Bib, no_paper: set[str],
) -> list[str]:  # fmt: skip
    """Every registry name has a README row whose BibTeX key is in citations.bib and is the
    entry of the CFF reference tagged ``zoommil-{kind}:NAME``; `no_paper` names have none."""
    problems = []
    for name in names:
        tag = f"zoommil-{kind}:{name}"
        tagged = [r for r in cff["references"] if tag in (r.get("keywords") or [])]
        row = rows.get(name)
        if row is None:
            problems.append(f"README has no row for {kind} {name!r}")
            continue
        key = row[-1].strip("`")
        if name in no_paper:
            if tagged or key != "none":
                problems.append(f"{kind} {name!r} is listed as having no paper, but has one")
            continue
        if len(tagged) != 1:
            problems.append(f"{kind} {name!r}: {len(tagged)} CITATION.cff references tagged")
        if key not in bib:
            problems.append(f"{kind} {name!r}: README key {key!r} is not in citations.bib")
        elif tagged and norm(bib[key]["title"]) != norm(tagged[0]["title"]):
            problems.append(f"{kind} {name!r}: README key {key!r} is not the CFF's reference")
    problems += [f"README row {n!r} is not a registered {kind}" for n in set(rows) - set(names)]
    return problems


# --- the files as they are ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cff() -> dict[str, Any]:
    return load_cff()


@pytest.fixture(scope="module")
def bib() -> Bib:
    return parse_bib(BIB.read_text(encoding="utf-8"))


def test_cff_has_the_required_keys_and_valid_shapes(cff: dict[str, Any]) -> None:
    assert cff_problems(cff) == []
    assert cff["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    assert cff["authors"] == [{"name": "Seed 70260d44 maintainers"}]
    assert "\n" not in cff["abstract"].strip()
    assert "preferred-citation" not in cff  # cite the software; the papers are references


def test_cff_version_is_the_package_version(cff: dict[str, Any]) -> None:
    assert package_version() == zoommil.__version__
    assert version_problems(cff, zoommil.__version__) == []


def test_citations_bib_agrees_with_the_cff(cff: dict[str, Any], bib: Bib) -> None:
    assert bib_problems(cff, bib) == []


def test_every_model_has_a_reference(cff: dict[str, Any], bib: Bib) -> None:
    rows = readme_table("| model (`model:` name)")
    assert reference_problems("model", list(MODEL_NAMES), rows, cff, bib, NO_PAPER) == []


def test_every_encoder_has_a_reference(cff: dict[str, Any], bib: Bib) -> None:
    rows = readme_table("| encoder (`--encoder`)")
    assert reference_problems("encoder", encoder_names(), rows, cff, bib, set()) == []


def test_readme_bibtex_block_is_the_bib_entry(bib: Bib) -> None:
    section = README.read_text(encoding="utf-8").split("## Citing", 1)[1]
    block = re.search(r"```bibtex\n(.*?)```", section, re.S).group(1)
    assert parse_bib(block) == {"thandiackal2022zoommil": bib["thandiackal2022zoommil"]}


# --- the checks catch what they are for (broken copies) -------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("references", 0, "doi"), "doi:10.1007/x", "does not match the CFF DOI pattern"),
        (("references", 0, "doi"), "https://doi.org/10.1007/978", "does not match"),
        (("references", 16, "date-published"), "27/09/2013", "is not a YYYY-MM-DD date"),
        (("references", 16, "date-published"), "2013-02-30", "is not a YYYY-MM-DD date"),
        (("cff-version",), "1.1.0", "cff-version '1.1.0'"),
        (("version",), 0.1, "is not a string"),
        (("references", 1, "year"), "2018", "is not an integer"),
        (("references", 2, "url"), "proceedings.mlr.press", "is not an http(s) URL"),
    ],
)
def test_cff_problems_catch_bad_values(
    cff: dict[str, Any], path: tuple, value: Any, message: str
) -> None:
    broken = copy.deepcopy(cff)
    target = broken
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert any(message in p for p in cff_problems(broken)), cff_problems(broken)


def test_cff_problems_catch_missing_keys(cff: dict[str, Any]) -> None:
    for key in REQUIRED:
        broken = {k: v for k, v in cff.items() if k != key}
        assert f"missing required key {key!r}" in cff_problems(broken)
    broken = copy.deepcopy(cff)
    broken["references"][3]["authors"] = []
    assert any("authors must be a non-empty list" in p for p in cff_problems(broken))


def test_a_release_that_forgets_the_cff_fails(cff: dict[str, Any]) -> None:
    assert version_problems(cff, "0.2.0") == [
        f"CITATION.cff version {cff['version']!r} is not the package's '0.2.0'"
    ]


def test_bib_problems_catch_drift(cff: dict[str, Any], bib: Bib) -> None:
    broken = copy.deepcopy(bib)
    broken["lu2021clam"]["doi"] = "10.1038/s41551-020-00682-x"
    broken["he2016resnet"]["author"] = "He, Kaiming and Zhang, Xiangyu and Sun, Jian"
    broken["zoommil"]["version"] = "0.0.9"
    del broken["goode2013openslide"]
    problems = bib_problems(cff, broken)
    assert any(p.startswith("lu2021clam: doi") for p in problems)
    assert "he2016resnet: authors differ from CITATION.cff's" in problems
    assert any("zoommil version '0.0.9'" in p for p in problems)
    assert any("OpenSlide" in p and p.startswith("no citations.bib entry") for p in problems)


def test_reference_problems_catch_a_model_without_one(cff: dict[str, Any], bib: Bib) -> None:
    rows = readme_table("| model (`model:` name)")
    names = [*MODEL_NAMES, "newmil"]
    assert "README has no row for model 'newmil'" in reference_problems(
        "model", names, rows, cff, bib, NO_PAPER
    )
    untagged = copy.deepcopy(cff)
    for ref in untagged["references"]:
        ref["keywords"] = [k for k in (ref.get("keywords") or []) if k != "zoommil-model:dsmil"]
    assert "model 'dsmil': 0 CITATION.cff references tagged" in reference_problems(
        "model", list(MODEL_NAMES), rows, untagged, bib, NO_PAPER
    )
    assert "model 'maxmil': 0 CITATION.cff references tagged" in reference_problems(
        "model", list(MODEL_NAMES), {**rows, "maxmil": ["MaxMIL", "x", "`ilse2018attention`"]},
        cff, bib, set(),
    )  # fmt: skip
