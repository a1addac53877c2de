"""The report's table captions describe the CSV the report holds, not the Markdown table."""

from __future__ import annotations

from pathlib import Path

import pytest

CAPTIONS = Path(__file__).resolve().parents[1] / "workflow" / "report"


@pytest.mark.parametrize(
    "name",
    ["main", "ablations", "comparisons", "per_class", "calibration", "reliability", "subgroups"],
)
def test_a_table_caption_says_the_csv_holds_fractions_and_a_notes_column(name: str) -> None:
    """The captions spoke of percentage points, bold cells and a note under the table, which
    only the Markdown and LaTeX tables have; the report embeds the CSV (fractions in [0, 1],
    the notes in a column), so a reader of the report took 0.38 for 0.38 points."""
    text = " ".join((CAPTIONS / f"table_{name}.rst").read_text().split())
    assert "fractions in [0, 1]" in text
    assert "``notes`` column" in text
