"""The suite's warning policy (`filterwarnings` in pyproject.toml): a deprecation attributed
to zoommil's own modules fails the test that reaches it; one attributed to any other module,
a dependency's or one whose name only begins with "zoommil", stays a warning."""

from __future__ import annotations

import warnings

import pytest

DEPRECATIONS = [DeprecationWarning, PendingDeprecationWarning, FutureWarning]


def _warn_from(module: str, category: type[Warning]) -> None:
    """Warn as code of ``module`` does: a warning is attributed to its caller's ``__name__``."""
    code = compile("import warnings\nwarnings.warn('old api', category)\n", module, "exec")
    exec(code, {"__name__": module, "category": category})


@pytest.mark.parametrize("category", DEPRECATIONS)
@pytest.mark.parametrize("module", ["zoommil", "zoommil.training.data"])
def test_a_deprecation_from_zoommil_is_an_error(module: str, category: type[Warning]) -> None:
    with pytest.raises(category):
        _warn_from(module, category)


@pytest.mark.parametrize("category", DEPRECATIONS)
@pytest.mark.parametrize("module", ["zoommil_plugin", "zoommilx", "pandas.core.frame"])
def test_a_deprecation_from_another_module_stays_a_warning(
    module: str, category: type[Warning]
) -> None:
    """Why: the filter's module field is a regex matched at the start of the name, so a bare
    `zoommil` also made errors of warnings from `zoommil_plugin` or `zoommilx`."""
    with warnings.catch_warnings(record=True) as caught:  # keeps the suite's filters
        _warn_from(module, category)
    assert [warning.category for warning in caught] == [category]
