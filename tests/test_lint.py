"""The README's lint command (`ruff check . && ruff format --check .`) passes with the ruff
that the test extra installs, which is at least the floor pyproject.toml declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.fixture(scope="module")
def ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("ruff is not installed (the test extra installs it)")
    return found


def test_ruff_is_at_least_the_declared_floor(ruff: str) -> None:
    """Why the floor matters: ruff < 0.13 still selects UP038 with `select = ["UP"]` and
    flags the isinstance tuples this code keeps (0.13 removed the rule)."""
    (floor,) = re.findall(r'"ruff>=([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert _version(floor) >= (0, 13)
    installed = subprocess.run([ruff, "--version"], capture_output=True, text=True, check=True)
    assert _version(installed.stdout.split()[-1]) >= _version(floor)


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(ruff: str, command: list[str]) -> None:
    """`--no-cache`: ruff's cache went into the checkout, so the test failed on a read-only
    one (a packaging build's source tree) and left `.ruff_cache/` behind in every other."""
    result = subprocess.run(
        [ruff, *command, "--no-cache"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
