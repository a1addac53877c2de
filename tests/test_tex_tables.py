"""The .tex tables as pdflatex reads them: every special character escaped, exactly once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

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


def _main_like() -> pd.DataFrame:
    """Nine methods with a CI in every metric cell, as main.tex has them."""
    cell = "97.8 ± 3.9 [92.7, 100.0]"
    return pd.DataFrame(
        [[f"Method{k}", "5x -> 10x", cell, cell, "0.178 ± 0.010", "3.93 ± 0.09"] for k in range(9)],
        columns=["Method", "Magnifications", "Weighted F1 (%)", "Accuracy (%)", "TFLOPs", "CPU"],
    )


def test_tex_tables_span_the_page_and_put_a_ci_under_its_mean() -> None:
    """main.tex was a `table` whose 8 columns (775 pt with the CIs on one line) were resized to
    the line: in a two-column paper's 248 pt column, 10 pt text printed at 3 pt; and a narrow
    table was enlarged. Now `table*`, shrunk only when wider than the line, the CI (and a
    header's unit) on a second line of its cell; names stay on one line."""
    lines = table_format.to_latex(_main_like(), "t", [], (0,), "tab:x").splitlines()
    assert lines[1] == r"\begin{table*}[t]" and lines[-1] == r"\end{table*}"
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" in lines
    header = lines[lines.index(r"\midrule") - 1]
    assert header.startswith(r"Method & Magnifications & \begin{tabular}[c]{@{}c@{}}Weighted F1")
    assert r"Weighted F1\\{}(\%)\end{tabular}" in header
    row = lines[lines.index(r"\midrule") + 1]
    assert row.startswith(r"\textbf{Method0} & 5x $\rightarrow$ 10x & ")
    assert r"{@{}c@{}}97.8 $\pm$ 3.9\\{}[92.7, 100.0]\end{tabular}" in row
    assert row.endswith(r" & 0.178 $\pm$ 0.010 & 3.93 $\pm$ 0.09 \\")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
@pytest.mark.parametrize("layout", ["twocolumn", "onecolumn"])
def test_a_tex_table_compiles_in_a_paper(tmp_path: Path, layout: str) -> None:
    """The table as a paper \\input's it, with the packages its first line names."""
    body = table_format.to_latex(_main_like(), "t", ["n - 1; p > 0.05"], (0,), "tab:x")
    (tmp_path / "t.tex").write_text(
        rf"\documentclass[{layout}]{{article}}\usepackage{{booktabs,graphicx}}"
        "\n\\begin{document}\n" + body + "\\end{document}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Overfull" not in done.stdout


def test_a_power_in_a_note_is_a_superscript_in_the_caption() -> None:
    """main.tex's caption read "TFLOPs = 2ˆ40" (`\\^{}` is a circumflex accent) and
    comparisons.tex's "all 2ˆn swaps"; a `^` after anything but a number stays escaped."""
    lines = _latex(["Method", "F1"], ["TFLOPs = 2^40 flops, 10^12; 2^n swaps, 2/2^k; x^2"])
    caption = next(line for line in lines if line.startswith(r"\caption["))
    assert caption.endswith(
        r"TFLOPs = 2$^{40}$ flops, 10$^{12}$; 2$^{n}$ swaps, 2/2$^{k}$; x\^{}2.}"
    )
