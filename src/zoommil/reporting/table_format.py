"""The tables as people read them: formatted cells, Markdown and LaTeX, and the files.

Percentages to one decimal with the spread and CI, costs to the digits their spread supports,
"n/a" for what is missing, the best weighted F1 in bold (every row tied for it as printed);
CSVs keep the numbers and carry the notes in a column. Every file is written atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from zoommil.io.atomic import atomic_path, write_text_atomic
from zoommil.reporting import stats
from zoommil.reporting.table_frames import (
    CI_METRICS,
    METRICS,
    TIMING_HEADERS,
    display_name,
    full_seeds,
)

METRIC_HEADERS = {"weighted_f1": "Weighted F1 (%)", "accuracy": "Accuracy (%)", "auc": "AUC (%)"}


def timing_headers(
    timings: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, str]:
    """TIMING_HEADERS with the all-cores column named by the processes its timings used
    (`CPU 2 processes (s/slide)`: no more processes than slides are timed, so "all cores"
    may be fewer than the machine's); the default where the files do not say (older ones)."""
    headers = dict(TIMING_HEADERS)
    timed = [t for t in timings.get("cpu", {}).values() if not t.get("skipped")]
    used = span_text(t.get("processes") for t in timed)
    if used:
        headers["cpu"] = f"CPU {count_text(used, 'process')} (s/slide)"
    return headers


def span_text(values: Iterable[Any]) -> str:
    """`2`, or `2-3` when the methods' files differ; empty when none says."""
    known = sorted({int(v) for v in values if v is not None and not _missing(v)})
    if not known:
        return ""
    return str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"


def count_text(n: str, word: str) -> str:
    """`1 process`, `2 processes` (``n`` as `span_text` gives it)."""
    return f"{n} {word}" if n == "1" else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _with_spread(mean: Any, std: Any, fmt: Any) -> str:
    """`mean ± std` with ``fmt`` applied to both, the bare mean without a std (one value,
    or an older file without the per-slide values), `n/a` without a mean."""
    if _missing(mean):
        return "n/a"
    return fmt(mean) if _missing(std) else f"{fmt(mean)} ± {fmt(std)}"


#: Marks an exact (Clopper-Pearson) CI; `table_notes.ci_notes` explains it under the table.
EXACT_MARK = "†"
#: The CI cell where every bootstrap resample gives the same value (`stats.CONSTANT`), or
#: (AUC) no resample holds a slide of every class (`stats.UNDEFINED`).
NO_CI = "[n/a]"


def _pct(
    mean: float,
    std: float,
    low: float = math.nan,
    high: float = math.nan,
    n: float = math.nan,
    seeds: int = 0,
    ci_method: Any = "",
) -> str:
    """`mean ± std [low, high]` in percent (the CI only when there is one; marked `†` when it
    is the exact interval, `[n/a]` where every bootstrap resample gave the same value), then
    `(n=k)` when it comes from k values, fewer than the ``seeds`` of the full benchmark, or
    from one value (which has no std: `80.0 (n=1)`, not `80.0 ± 0.0`)."""
    text = _with_spread(mean, std, lambda v: f"{100 * v:.1f}")
    if text == "n/a":
        return text
    if not (_missing(low) or _missing(high)):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
        text += EXACT_MARK if ci_method == stats.CLOPPER_PEARSON else ""
    elif ci_method in (stats.CONSTANT, stats.UNDEFINED):
        text += " " + NO_CI
    if not _missing(n) and (int(n) < seeds or int(n) == 1):
        text += f" (n={int(n)})"
    return text


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _num_sd(mean: Any, sd: Any) -> str:
    """A cost cell: `mean ± sd` over the slides, the sd to 2 significant digits and the mean
    to the same decimal place (`7.34 ± 0.17`, `0.500 ± 0.058`), so the digits shown are the
    ones the spread supports; the bare mean (3 significant digits) without an sd."""
    if _missing(mean) or _missing(sd):
        return _with_spread(mean, sd, _num)
    if float(sd) == 0:
        return f"{_num(mean)} ± 0"
    decimals = min(6, max(0, 1 - math.floor(math.log10(float(sd)))))
    return f"{float(mean):.{decimals}f} ± {float(sd):.{decimals}f}"


def display_frame(
    table: pd.DataFrame,
    kind: str,
    devices: Sequence[str],
    seeds: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The human-readable columns of a table (strings), best weighted F1 marked later.
    ``seeds``: the full number of seeds (default: the most in ``table``); a cell from fewer
    is marked ``(n=k)``."""
    seeds = full_seeds(table) if seeds is None else seeds
    headers = headers or TIMING_HEADERS
    out = pd.DataFrame()
    if kind == "main":
        out["Method"] = table["name"]
        out["Magnifications"] = table["mags"]
    else:  # the reference by the paper's name, as in the main table (it read **zoommil**)
        out["Method"] = [display_name(m) for m in table["method"]]
        out["Component"] = table["component"]
        out["Variant"] = table["variant"]
    nans = [math.nan] * len(table)
    for metric in METRICS:
        out[METRIC_HEADERS[metric]] = [
            _pct(*values)
            for values in zip(
                table.get(f"{metric}_mean", nans),
                table.get(f"{metric}_std", nans),
                table.get(f"{metric}_ci_low", nans),
                table.get(f"{metric}_ci_high", nans),
                table.get(f"{metric}_n", nans),
                [seeds] * len(table),
                table.get(f"{metric}_ci_method", [""] * len(table)),
                strict=True,
            )
        ]
    out["TFLOPs"] = [
        _num_sd(v, sd) for v, sd in zip(table["tflops"], table.get("tflops_sd", nans), strict=True)
    ]
    if kind == "main":
        for device in devices:
            out[headers[device]] = [
                _num_sd(v, sd)
                for v, sd in zip(
                    table[f"{device}_s_per_slide"],
                    table.get(f"{device}_s_per_slide_sd", nans),
                    strict=True,
                )
            ]
    return out


def best_rows(table: pd.DataFrame) -> list[int]:
    """The rows with the best mean weighted F1 as printed (percent to one decimal, as `_pct`
    writes it): rows whose cells read the same are tied and all bold, since a reader cannot
    tell them apart (the first of them alone was bold). Empty without a value (no evaluation
    yet: the summary has no metric columns)."""
    if "weighted_f1_mean" not in table.columns:
        return []
    values = pd.to_numeric(table["weighted_f1_mean"], errors="coerce").dropna()
    if values.empty:
        return []
    shown = {int(i): f"{100 * v:.1f}" for i, v in values.items()}
    best = shown[int(values.idxmax())]
    return [i for i, text in shown.items() if text == best]


def to_markdown(
    display: pd.DataFrame, title: str, notes: Sequence[str], best: Collection[int]
) -> str:
    header = "| " + " | ".join(display.columns) + " |"
    rule = "|" + "|".join("---" for _ in display.columns) + "|"
    lines = [f"**{title}**", "", header, rule]
    for index, row in display.iterrows():
        cells = [str(v) for v in row]
        if index in best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"*Note:* {note}" + "  " for note in _with_bold_note(notes, best)]
    return "\n".join(lines) + "\n"


#: What a bold row means (a table with a best row says so).
BOLD_NOTE = "bold: the best mean weighted F1 (rows that read the same are all bold)"


def _with_bold_note(notes: Sequence[str], best: Collection[int]) -> list[str]:
    return [*notes, BOLD_NOTE] if best else list(notes)


#: What `_tex_escape` writes for each special character or symbol: LaTeX's own specials
#: escaped; < > | as math (pdflatex's OT1 text font prints "p > 0.05" as "p ¿ 0.05"); and the
#: symbols the tables and notes use (±, Δ, †, −, ≤, ->), which its text mode cannot typeset.
TEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "^": r"\^{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "~": r"\textasciitilde{}",
    "<": "$<$",
    ">": "$>$",
    "|": "$|$",
    "->": r"$\rightarrow$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    EXACT_MARK: r"$^\dagger$",
    "−": "$-$",
    "≤": r"$\leq$",
}
#: A number's minus sign (`-5.1`, `.5`, `1e-06`): not a hyphen inside a word or a range
#: (`per-class`, `ResNet-50`, `2-3`).
_NUMBER_MINUS = r"(?<![A-Za-z0-9])-(?=\.?\d)|(?<=\d[eE])-(?=\d)"
#: A power of a number in the notes (`2^40`, `2^n`, `2/2^k`): `\^{}` printed a circumflex
#: accent, "2ˆ40", in the captions.
_NUMBER_POWER = r"(?<=\d)\^[0-9A-Za-z]+"
#: One pass over the text, so what one replacement writes (`\{`, `$`) is never escaped again;
#: `->` before `>` and before a minus; a power before `^`.
_TEX_SPECIAL = re.compile(
    "|".join(
        [
            _NUMBER_POWER,
            *(re.escape(key) for key in sorted(TEX_REPLACEMENTS, key=len, reverse=True)),
            _NUMBER_MINUS,
        ]
    )
)


def _tex_replacement(match: re.Match[str]) -> str:
    """A number's power as a superscript (`2$^{40}$`) and its minus as the math minus the
    captions use (`$-$`), not a text hyphen (the only matches not in `TEX_REPLACEMENTS`)."""
    text = match.group()
    if text.startswith("^") and len(text) > 1:
        return "$^{" + text[1:] + "}$"
    return TEX_REPLACEMENTS.get(text, "$-$")


def _tex_escape(text: str) -> str:
    """``text`` as LaTeX text: every special character and symbol of `TEX_REPLACEMENTS`
    replaced, so a class label, method name or note cannot break the table or its caption,
    and a number's minus typeset as one (`[$-$5.1, +10.1]`; Markdown and CSV keep `-`)."""
    return _TEX_SPECIAL.sub(_tex_replacement, str(text))


def caption_text(title: str, notes: Sequence[str]) -> str:
    """The title and the notes as sentences: the notes are lines under a Markdown table, and
    run together with spaces they read as one sentence in a caption."""
    parts = [str(text).strip().rstrip(".") for text in (title, *notes)]
    return ". ".join(part for part in parts if part) + "."


#: Where a centred cell breaks onto a second line: before its first bracket or parenthesis
#: (`97.8 ± 3.9` over `[92.7, 100.0]`, `Weighted F1` over `(%)`, a p over its Holm q), not
#: before a short `(n=k)` (`70.0 (n=1)` stays on one line).
_STACK_AT = re.compile(r" (?=\[|\((?!n=))")
#: Left-aligned columns (names, magnifications, kinds); the rest are centred and stacked.
_LEFT_COLUMNS = 2


def _tex_cell(text: Any, stacked: bool) -> str:
    """A cell as LaTeX; a centred one on two lines at `_STACK_AT` (a nested tabular, no package):
    on one line, the CIs made the main table 775 pt wide, shrunk to a third of its size in a
    two-column paper's column. `\\{}`: a second line starting with `[` is not read as
    `\\`'s optional space argument."""
    parts = _STACK_AT.split(str(text), maxsplit=1) if stacked else [str(text)]
    if len(parts) == 1:
        return _tex_escape(parts[0])
    first, second = (_tex_escape(part) for part in parts)
    return r"\begin{tabular}[c]{@{}c@{}}" + first + r"\\{}" + second + r"\end{tabular}"


def to_latex(
    display: pd.DataFrame, title: str, notes: Sequence[str], best: Collection[int], label: str
) -> str:
    """A booktabs table: `table*` (the width of the page in a two-column paper; in a
    one-column one the same as `table`), shrunk to the line only when wider than it (never
    enlarged), centred cells on two lines (`_tex_cell`)."""
    columns = "l" * _LEFT_COLUMNS + "c" * (len(display.columns) - _LEFT_COLUMNS)
    caption = _tex_escape(caption_text(title, _with_bold_note(notes, best)))

    def row_text(values: Iterable[Any]) -> list[str]:
        return [_tex_cell(v, k >= _LEFT_COLUMNS) for k, v in enumerate(values)]

    lines = [
        r"% needs \usepackage{booktabs,graphicx}",
        r"\begin{table*}[t]",
        r"\centering",
        # the short form is what a list of tables shows (not the whole paragraph of notes)
        r"\caption[" + _tex_escape(title) + "]{" + caption + "}",
        r"\label{" + label + "}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{" + columns + "}",
        r"\toprule",
        " & ".join(row_text(display.columns)) + r" \\",
        r"\midrule",
    ]
    for index, row in display.iterrows():
        cells = row_text(row)
        if index in best:
            cells[0] = r"\textbf{" + cells[0] + "}"
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def _signed(value: float) -> str:
    return "n/a" if _missing(value) else f"{100 * value:+.1f}"


def _difference(d: float, low: float, high: float) -> str:
    """``+2.2 [-4.4, +8.9]``; ``+0.0 [n/a]`` without an interval (one slide, or every
    resample giving the same difference: `stats.compare`)."""
    if _missing(d):
        return "n/a"
    if _missing(low) or _missing(high):
        return f"{_signed(d)} {NO_CI}"
    return f"{_signed(d)} [{_signed(low)}, {_signed(high)}]"


P_DIGITS = 3  # significant digits of a p-value, raw and Holm-adjusted alike


def _p(p: float, holm: float, exact: Any = True) -> str:
    """`p (Holm q)`, both to the same significant digits (Holm's had 2, so `0.375` read
    `0.38` beside a raw `0.0625`); `≤ p (Holm ≤ q)` at the Monte Carlo floor, where p is a
    bound (`stats.at_monte_carlo_floor`)."""
    if _missing(p):
        return "n/a"
    bound = "≤ " if stats.at_monte_carlo_floor(float(p), bool(exact)) else ""
    return f"{bound}{p:.{P_DIGITS}g} (Holm {bound}{holm:.{P_DIGITS}g})"


def _fewer_seeds(n: Any, most: Any) -> str:
    """`` (2 seeds)`` after a Δ over fewer shared seeds than one of the two methods has
    (``most``; `table_notes.seeds_note`): it then differs from the main table's means."""
    if _missing(n) or _missing(most) or int(n) >= int(most):
        return ""
    return f" ({count_text(str(int(n)), 'seed')})"


def _ratio(value: float) -> str:
    return "n/a" if _missing(value) or math.isinf(value) else f"{value:.2f}x"


def comparison_display(
    table: pd.DataFrame,
    names: Mapping[str, str],
    devices: Sequence[str],
    headers: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Human-readable comparison rows: differences in percentage points with their CI."""
    headers = headers or TIMING_HEADERS
    out = pd.DataFrame()
    out["Comparison"] = [
        f"{names.get(r, r)} vs {names.get(m, m)}"
        for r, m in zip(table["reference"], table["method"], strict=True)
    ]
    out["Kind"] = table["kind"]
    nans = pd.Series([math.nan] * len(table), index=table.index)
    seeds, either = table.get("n_seeds", nans), table.get("seeds_either", nans)
    for metric in CI_METRICS:
        header = METRIC_HEADERS[metric].replace(" (%)", "")
        out[f"Δ {header} (pp) [95% CI]"] = [
            _difference(d, lo, hi) + _fewer_seeds(n, most)
            for d, lo, hi, n, most in zip(
                table[f"{metric}_diff"],
                table[f"{metric}_ci_low"],
                table[f"{metric}_ci_high"],
                seeds,
                either,
                strict=True,
            )
        ]
        exact = table.get(f"{metric}_p_exact", pd.Series([True] * len(table)))
        out[f"p ({header})"] = [
            _p(p, h, e)
            for p, h, e in zip(table[f"{metric}_p"], table[f"{metric}_p_holm"], exact, strict=True)
        ]
    out["TFLOPs ratio"] = [_ratio(v) for v in table["tflops_ratio"]]
    for device in devices:
        out[f"Time ratio, {headers[device].split(' (')[0]}"] = [
            _ratio(v) for v in table[f"{device}_time_ratio"]
        ]
    return out


def write_text(path: str | Path, text: str) -> None:
    write_text_atomic(path, text)


#: The CSVs keep the raw values; the notes they share with the Markdown and LaTeX tables speak
#: of percent (review W: "Δ in percentage points" beside a difference of 0.379).
CSV_NOTE = (
    "in this CSV, metrics, their CIs and differences are fractions in [0, 1] (the Markdown and "
    "LaTeX tables show them in percent)"
)


def write_csv(path: str | Path, frame: pd.DataFrame, notes: Sequence[str]) -> None:
    frame = frame.copy()
    frame["notes"] = " | ".join([CSV_NOTE, *notes])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
