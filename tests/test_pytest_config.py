"""pyproject.toml's pytest settings: a deprecation raised from zoommil's code fails the suite
(today's DeprecationWarning is the next release's crash), one raised in a dependency does not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_TESTS = """
import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
@pytest.mark.parametrize("module", ["zoommil.reporting.tables", "pandas.core.frame"])
def test_warn(module, category):
    code = "import warnings\\nwarnings.warn('old API', category)"
    exec(code, {"__name__": module, "category": category})
"""


def test_a_deprecation_from_zoommil_fails_and_one_from_a_dependency_does_not(tmp_path):
    (tmp_path / "test_warned.py").write_text(_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    failed = sorted(re.findall(r"^FAILED \S+\[(\S+)\]", result.stdout, flags=re.MULTILINE))
    assert failed == [
        f"zoommil.reporting.tables-{category}"
        for category in ["DeprecationWarning", "FutureWarning", "PendingDeprecationWarning"]
    ], result.stdout[-3000:]
    assert "3 failed, 3 passed" in result.stdout
