"""The .tex tables as pdflatex reads them: every special character escaped, exactly once."""

from __future__ import annotations

import pandas as pd

from zoommil.reporting import table_format

#: A class label holding each character LaTeX treats specially, and what the .tex must say.
LABELS = {
    "a&b": r"a\&b",
    "50%": r"50\%",
    "grade_1": r"grade\_1",
    "#3": r"\#3",
    "x^2": r"x\^{}2",
    "c:\\x": r"c:\textbackslash{}x",
    "{b}": r"\{b\}",
    "$5": r"\$5",
    "~1": r"\textasciitilde{}1",
    "<5mm": "$<$5mm",
    ">5mm": "$>$5mm",
    "a|b": "a$|$b",
    "a->b": r"a$\rightarrow$b",
    "±Δ†−≤": r"$\pm$$\Delta$$^\dagger$$-$$\leq$",
}


def _latex(columns: list[str], notes: list[str]) -> list[str]:
    frame = pd.DataFrame([["ZoomMIL", *["1.0"] * (len(columns) - 1)]], columns=columns)
    return table_format.to_latex(frame, "Per-class F1", notes, (), "tab:x").splitlines()


def test_class_labels_with_latex_specials_are_escaped_in_the_header() -> None:
    """A `$`, brace, `~`, `<`, `>` or `|` in a class label passed through to per_class.tex's
    header and broke the table (or printed `¿` for `>` in pdflatex's OT1 font)."""
    lines = _latex(["Method", *LABELS], [])
    header = lines[lines.index(r"\midrule") - 1]
    assert header == " & ".join(["Method", *LABELS.values()]) + r" \\"


def test_a_note_with_p_above_a_threshold_reads_as_math_in_the_caption() -> None:
    """comparisons.tex's caption holds "p > 0.05"; the `$` written for one character is not
    escaped again."""
    lines = _latex(["Method", "F1"], ["a CI clear of 0 can come with p > 0.05 {or} $1 | ~2"])
    caption = next(line for line in lines if line.startswith(r"\caption["))
    assert caption == (
        r"\caption[Per-class F1]{Per-class F1. a CI clear of 0 can come with p $>$ 0.05 "
        r"\{or\} \$1 $|$ \textasciitilde{}2.}"
    )


def test_negative_numbers_in_tex_take_a_math_minus_and_markdown_keeps_its_hyphen() -> None:
    """`[-5.1, +10.1]` in a .tex cell used a text hyphen beside the captions' `$-$`; words
    and ranges (`per-class`, `ResNet-50`, `2-3`) keep theirs, and Markdown is unchanged."""
    cell = "-2.5 [-5.1, +10.1] (p 1.9e-06, .5 vs -.5; per-class ResNet-50, CPU 2-3 processes)"
    frame = pd.DataFrame({"Comparison": ["ZoomMIL vs ABMIL"], "Δ F1": [cell]})
    latex = table_format.to_latex(frame, "t", [], (), "tab:x").splitlines()
    row = latex[latex.index(r"\midrule") + 1]
    assert row == (
        r"ZoomMIL vs ABMIL & $-$2.5 [$-$5.1, +10.1] (p 1.9e$-$06, .5 vs $-$.5; per-class "
        r"ResNet-50, CPU 2-3 processes) \\"
    )
    assert f"| ZoomMIL vs ABMIL | {cell} |" in table_format.to_markdown(frame, "t", [], ())
