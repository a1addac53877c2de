"""Figure 3: throughput vs accuracy per timed device, with the efficiency frontier.

Drawn on a `matplotlib.figure.Figure`, not pyplot (see `figure_files`).
"""

from __future__ import annotations

import itertools
import logging
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.lines
import matplotlib.ticker
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from zoommil.recipe import DEFAULT_ENCODER, weights_note
from zoommil.reporting import results, stats
from zoommil.reporting.figure_data import write_source_csv
from zoommil.reporting.figure_files import save_figure
from zoommil.reporting.table_format import count_text
from zoommil.reporting.table_frames import (
    add_intervals,
    display_name,
    run_predictions,
    summarize_runs,
)
from zoommil.reporting.table_notes import encoder_label

log = logging.getLogger(__name__)

FRONTIER_CIRCLE = 13.0  # points: a ring around a method's marker
PANELS = {"cpu1": "CPU, 1 thread", "cpu": "CPU, all cores", "gpu": "GPU"}
TICK_SIZE = 7  # points: every tick label, major and minor
LABEL_SIZE = 8  # points: axis labels and panel titles
NOTE_SIZE = 7  # points: the legend and the notes under the figure
#: A two-column page's text width is ~7.1 in: the figure is drawn at that size (its text at
#: 7-8 pt), not scaled down to it (a 12.7 in figure printed its 8 pt text at ~4.5 pt).
MAX_WIDTH = 7.0  # inches
PANEL_WIDTH = 2.1  # inches, with `MARGIN` for the y label and ticks (1 panel: a column)
MARGIN = 0.75
PANEL_HEIGHT = 2.3  # inches
#: Colour-blind-safe colours, one per method: Okabe & Ito's (Color Universal Design), vermillion
#: ZoomMIL's, yellow left out (too pale on white for a marker), leave six for the baselines;
#: the paper's eight take two of Paul Tol's muted (wine, indigo) too: with six, two shared a
#: colour. Under simulated protan, deutan and tritan vision (Machado et al. 2009) no two of
#: the nine are closer than CIELAB dE 16; each is at least 2.2:1 against white.
ZOOMMIL_COLOUR = "#D55E00"
BASELINE_COLOURS = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#882255",  # Tol's wine
    "#332288",  # Tol's indigo
)
#: One marker per baseline, in the order they had (ZoomMIL's star aside).
MARKERS = "osDvP<>Xph^"
#: The paper's baselines in its order: a baseline's colour and marker are those at its place.
#: Written out, not taken from `names.DISPLAY_NAMES`: a model a user names there (as
#: docs/ARCHITECTURE.md says) took a ninth slot, `BASELINE_COLOURS`' first again, MaxMIL's
#: blue, in every figure, however many colours were free.
PAPER_BASELINES = (
    "maxmil", "meanmil", "sparseconvmil", "abmil", "clam_sb", "transmil", "msmil", "dsmil",
)  # fmt: skip
#: Lead digits of the labelled log ticks, densest first: a panel takes the densest set whose
#: labels do not touch ("600 700800" at print width).
TICK_LEADS = ((1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))
#: Under the figure with the other notes: inside a panel it ran wider than a narrow panel,
#: across the left spine and the y ticks, and over the markers near the bottom.
DODGE_NOTE = (
    "markers of equal throughputs (within 1%) drawn a few points apart; their x bars at the "
    "true values"
)


def pareto_front(throughput: Sequence[float], score: Sequence[float]) -> list[int]:
    """Indices on the efficiency frontier, fastest first: no other point is both at least as
    fast and strictly more accurate (ties in speed keep the more accurate one)."""
    points = [
        (t, s, i)
        for i, (t, s) in enumerate(zip(throughput, score, strict=True))
        if not (math.isnan(t) or math.isnan(s))
    ]
    points.sort(key=lambda p: (-p[0], -p[1]))
    front, best = [], -math.inf
    for _, s, i in points:
        if s > best:
            front.append(i)
            best = s
    return front


def dodge_offsets(
    speeds: Sequence[float], tolerance: float = 0.01, step: float = 4.0
) -> list[float]:
    """Sideways offsets in points (display units, not data) that set apart the markers of
    (within ``tolerance``) equal throughput: methods timed in one shared pass differ only by
    their heads' ms, so their y error bars would lie on one another. Only the markers and
    their y error bars move; each x error bar is drawn at its true throughput (a group's bars
    coincide, as their timings do): shifted with the markers, the bars of one shared pass
    (353.3 and 353.7 slides/h) stopped overlapping, a difference that is not there (review W).
    A group of n gets ``step * (k - (n - 1) / 2)``, k = 0..n-1 from the slowest to the
    fastest (ties in the given order); a lone point 0."""
    offsets = [0.0] * len(speeds)
    order = sorted(range(len(speeds)), key=lambda i: speeds[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and speeds[i] <= speeds[groups[-1][0]] * (1 + tolerance):
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        group.sort(key=lambda i: (speeds[i], i))  # drawn left to right as they are fastest
        for k, i in enumerate(group):
            offsets[i] = step * (k - (len(group) - 1) / 2)
    return offsets


def _lead_formatter(leads: Sequence[int]) -> matplotlib.ticker.FuncFormatter:
    """A log axis' tick labels at the given lead digits only (1 = a power of ten)."""

    def label(value: float, _position: int) -> str:
        if value <= 0:
            return ""
        lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
        whole = round(lead) in leads and abs(lead - round(lead)) < 1e-6
        return f"{value:g}" if whole else ""

    return matplotlib.ticker.FuncFormatter(label)


@dataclass(frozen=True)
class Setting:
    """What a throughput panel was measured on (stated on the figure)."""

    device_name: str
    threads: int | None
    cpu_count: int | None
    precision: str | None
    processes: int | None = None  # CPU: worker processes used (min(threads, slides))


def x_limits(speeds: Iterable[float], margin: float = 1.4) -> tuple[float, float]:
    """Log-axis limits around the measured speeds, a factor ``margin`` beyond each end, so a
    single method (or equal speeds) still gets an axis and markers stay off the frame.
    Infinite values (an unbounded error bar's end) are left out."""
    values = [float(v) for v in speeds if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return 1.0, 10.0
    return min(values) / margin, max(values) * margin


def throughput_data(
    evals: Iterable[str | Path],
    timings: Mapping[str, Iterable[str | Path]],
    methods: Sequence[str],
    sheet: str | Path | None = None,
) -> pd.DataFrame:
    """One row per (device, method): slides/hour with ``slides_per_hour_low``/``_high`` (the
    throughput at seconds per slide + and - their std over the timed slides; NaN without
    per-slide timings), weighted F1 (seed mean) and its 95% bootstrap CI over test slides
    (``f1_low``/``f1_high``), and how the timing was taken. Without a CI both are NaN and
    ``f1_no_ci`` says why (`no_ci_reason`): the figure then draws no y bar, where it drew the
    seed std under the axis label "95% CI". With a `patient` column in ``sheet`` the CI
    resamples patients (`stats.with_patients`), as the tables' do."""
    evals = list(evals)
    records = results.eval_records(evals)
    summary = summarize_runs(records) if records else pd.DataFrame(columns=["method"])
    preds = run_predictions(results.eval_runs(evals), results.patients(sheet))
    summary = add_intervals(summary, preds)
    summary = summary.set_index("method")
    rows = []
    for device, paths in timings.items():
        paths = list(paths)
        timing = results.timing_by_method(paths)
        raw = {results.method_of(p): results.load_json(p) for p in paths}
        for method in methods:
            t = timing.get(method, {})
            info = raw.get(method, {})
            row = {
                "device": device,
                "method": method,
                "slides_per_hour": t.get("slides_per_hour", math.nan),
                "slides_per_hour_low": t.get("slides_per_hour_low", math.nan),
                "slides_per_hour_high": t.get("slides_per_hour_high", math.nan),
                "seconds_per_slide": t.get("seconds", math.nan),
                "seconds_per_slide_sd": t.get("seconds_sd", math.nan),
                "n_slides": t.get("n_slides", math.nan),
                "skipped": t.get("skipped", "missing"),
                "device_name": t.get("device_name", ""),
                "threads": info.get("threads"),
                "processes": info.get("processes"),
                "cpu_count": info.get("cpu_count"),
                "precision": info.get("precision"),
                "f1": math.nan,
                "f1_low": math.nan,
                "f1_high": math.nan,
                "f1_no_ci": "",
                "n_seeds": math.nan,
                "n_test": math.nan,
                "n_test_units": math.nan,
            }
            if method in summary.index:
                found = summary.loc[method]
                row.update(
                    n_seeds=found.get("n_seeds", math.nan),
                    n_test=found.get("n_test", math.nan),
                    n_test_units=found.get("n_test_units", math.nan),
                    f1=found["weighted_f1_mean"],
                    f1_low=found["weighted_f1_ci_low"],
                    f1_high=found["weighted_f1_ci_high"],
                    f1_no_ci=no_ci_reason(found),
                )
            rows.append(row)
    return pd.DataFrame(rows)


def no_ci_reason(summary_row: Mapping[str, Any]) -> str:
    """Why a method's weighted F1 has no 95% CI (`table_frames.add_intervals`' row); empty
    when it has one or has no value at all."""
    if _nan(summary_row.get("weighted_f1_mean")):
        return ""
    if not (
        _nan(summary_row.get("weighted_f1_ci_low")) or _nan(summary_row.get("weighted_f1_ci_high"))
    ):
        return ""
    kind = summary_row.get("weighted_f1_ci_method")
    if kind == stats.CONSTANT:
        return "every resample of the test slides gives the same value"
    if kind == stats.NO_INTERVAL:
        return "one test slide"
    return "no per-slide predictions"


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def counts_note(data: pd.DataFrame) -> str:
    """What the bars of Figure 3 are over: seeds and test slides (y), timed slides (x); the
    figure said neither (review W)."""
    drawn = data[data["slides_per_hour"].notna()]
    if drawn.empty:
        return ""

    def most(column: str) -> int | None:
        if column not in drawn.columns:  # a frame of older results: no patient counts
            return None
        values = pd.to_numeric(drawn[column], errors="coerce").dropna()
        return int(values.max()) if len(values) else None

    seeds, tested, units = most("n_seeds"), most("n_test"), most("n_test_units")
    timed = sorted({int(v) for v in pd.to_numeric(drawn["n_slides"], errors="coerce").dropna()})
    y = "y: weighted F1, mean" + (f" over {count_text(str(seeds), 'seed')}" if seeds else "")
    if tested and units and units < tested:  # resampled by patient (`stats.with_patients`)
        y += f", 95% bootstrap CI over the {units} patients of {tested} test slides"
    elif tested:
        y += f", 95% bootstrap CI over {count_text(str(tested), 'test slide')}"
    x = "x: slides/hour, ± std over the timed slides"
    if timed:
        x += f" (n = {'/'.join(map(str, timed))} per method)"
    return f"{y}; {x}"


def no_ci_note(data: pd.DataFrame) -> str:
    """The note under Figure 3 naming the drawn methods without a y error bar and why; empty
    when every one has its CI."""
    drawn = data[data["slides_per_hour"].notna() & data["f1"].notna()]
    if "f1_no_ci" not in drawn.columns:
        return ""
    reasons: dict[str, list[str]] = {}
    for method, reason in zip(drawn["method"], drawn["f1_no_ci"], strict=True):
        if reason and display_name(method) not in reasons.get(reason, []):
            reasons.setdefault(reason, []).append(display_name(method))
    if not reasons:
        return ""
    parts = [f"{', '.join(names)} ({reason})" for reason, names in reasons.items()]
    return "no y error bar, no 95% CI of weighted F1: " + "; ".join(parts)


def panel_setting(part: pd.DataFrame) -> Setting:
    """The device, thread count, cores and precision of one panel's timings."""
    timed = part[~part["slides_per_hour"].isna()]
    first = timed.iloc[0] if len(timed) else part.iloc[0]

    def value(name: str) -> Any:
        v = first.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    threads, cores, processes = value("threads"), value("cpu_count"), value("processes")
    return Setting(
        str(value("device_name") or ""),
        int(threads) if threads is not None else None,
        int(cores) if cores is not None else None,
        value("precision"),
        int(processes) if processes is not None else None,
    )


def panel_title(device: str, setting: Setting) -> str:
    """E.g. 'CPU, 1 thread' / 'CPU, 2 processes x 1 thread' over 'AMD EPYC 9454 (2 cores),
    fp32'. On CPU the count is of the processes the timing used (fewer than the threads asked
    when fewer slides were timed); a file without it (older) gives its threads."""
    used = setting.processes if setting.processes is not None else setting.threads
    if device == "gpu":
        head = "GPU"
    elif setting.processes is not None and device != "cpu1":
        # the all-cores panel by its processes, as the table's column, also with one (a
        # 1-core job): it was titled "CPU, 1 thread" like the 1-thread panel beside it
        head = f"CPU, {count_text(str(used), 'process')} x 1 thread"
    elif used == 1:
        head = "CPU, 1 thread"
    else:
        head = f"CPU, {setting.threads or 'all'} threads"
    details = setting.device_name or "unknown device"
    if device != "gpu" and setting.cpu_count:
        details += f" ({setting.cpu_count} cores)"
    if setting.precision:
        details += f", encoder {setting.precision}"
    return f"{head}\n{details}"


def frontier(part: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``part`` on the efficiency frontier, fastest first."""
    front = pareto_front(list(part["slides_per_hour"]), list(part["f1"]))
    return part.iloc[front]


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour and a marker per method: ZoomMIL a large vermillion star, each baseline its own
    colour of `BASELINE_COLOURS` (the eight of the paper: all different) and marker, so a
    marker tells apart what a colour may not. A further ZoomMIL variant is a star in the next
    baseline colour (two vermillion stars could not be told apart).

    A paper baseline keeps its slot (its place in `PAPER_BASELINES`) whichever methods a
    config runs, so ABMIL has one colour in every run's figure; by position, a config without
    SparseConvMIL drew ABMIL in SparseConvMIL's colour. Another method takes the first slot no
    baseline of ``methods`` holds."""
    taken = {PAPER_BASELINES.index(m) for m in methods if m in PAPER_BASELINES}
    free = (k for k in itertools.count() if k not in taken)
    styles: dict[str, dict[str, Any]] = {}
    for method in methods:
        zoommil = method.startswith("zoommil")
        if zoommil and not any(s["color"] == ZOOMMIL_COLOUR for s in styles.values()):
            styles[method] = {"color": ZOOMMIL_COLOUR, "marker": "*", "markersize": 10}
            continue
        k = PAPER_BASELINES.index(method) if method in PAPER_BASELINES else next(free)
        colour = BASELINE_COLOURS[k % len(BASELINE_COLOURS)]
        marker = "*" if zoommil else MARKERS[k % len(MARKERS)]
        styles[method] = {"color": colour, "marker": marker, "markersize": 8 if zoommil else 5.5}
    return styles


def legend_marker(style: Mapping[str, Any]) -> matplotlib.lines.Line2D:
    """A method's legend entry: its marker alone. The error bar container drew its x and y
    bars and their caps across the marker, so in the legend a circle, square, diamond, plus
    and cross all read as a crossed blob, and in grayscale or to a colour-blind reader (whose
    colours may merge) the marker was all there was to tell the methods apart."""
    return matplotlib.lines.Line2D(
        [],
        [],
        linestyle="None",
        marker=style["marker"],
        markersize=style["markersize"],
        color=style["color"],
        alpha=0.9,
    )


def _device_panel(
    ax: Axes,
    data: pd.DataFrame,
    device: str,
    styles: Mapping[str, dict[str, Any]],
    handles: dict[str, Any],
) -> bool:
    """One device's panel: the timed methods with their CIs (y) and throughput +- std over
    the timed slides (x), and the efficiency frontier. True when it set markers of equal
    throughput apart: the figure then says so in its notes (`DODGE_NOTE`)."""
    part = data[(data["device"] == device) & data["slides_per_hour"].notna()]
    part = part.reset_index(drop=True)
    title = panel_title(device, panel_setting(part))
    ax.set_title("\n".join(textwrap.fill(line, 34) for line in title.split("\n")), fontsize=7.5)
    ax.set_xscale("log")
    dodge = dodge_offsets(list(part["slides_per_hour"]))
    nans = pd.Series(math.nan, index=part.index)
    lows, highs = (part.get(f"slides_per_hour_{b}", nans) for b in ("low", "high"))
    limits = x_limits([*part["slides_per_hour"], *lows, *highs])
    front = frontier(part)
    if len(front) > 1:  # on the true throughputs; the circles sit on the (dodged) markers
        ordered = front.sort_values("slides_per_hour")
        ax.step(
            ordered["slides_per_hour"],
            100 * ordered["f1"],
            where="pre",
            linestyle="--",
            color="0.45",
            zorder=1,
        )
    if len(front):  # a lone frontier point is circled too: the legend says what a ring is
        handles["efficiency frontier"] = matplotlib.lines.Line2D(
            [],
            [],
            color="0.45",
            linestyle="--" if len(front) > 1 else "None",
            marker="o",
            markersize=FRONTIER_CIRCLE,
            markerfacecolor="none",
        )
    for index, row in part.iterrows():
        style = styles[row["method"]]
        shifted = offset_copy(ax.transData, fig=ax.figure, x=dodge[index], units="points")
        yerr = None  # no CI: no bar (`no_ci_note` names the method under the figure)
        if not (math.isnan(row["f1_low"]) or math.isnan(row["f1_high"])):
            low, high = max(0.0, row["f1"] - row["f1_low"]), max(0.0, row["f1_high"] - row["f1"])
            yerr = [[100 * low], [100 * high]]
        container = ax.errorbar(
            row["slides_per_hour"],
            100 * row["f1"],
            xerr=_x_arms(row, limits),
            yerr=yerr,
            fmt=style["marker"],
            markersize=style["markersize"],
            color=style["color"],
            ecolor=style["color"],
            elinewidth=0.8,
            capsize=2,
            alpha=0.9,
            zorder=3,
            transform=shifted,
        )
        if container.has_xerr:  # the x bar (and its caps) at the true throughput, undodged
            container.lines[2][0].set_transform(ax.transData)
            for cap in container.lines[1][:2]:
                cap.set_transform(ax.transData)
        handles.setdefault(display_name(row["method"]), legend_marker(style))
        if index in front.index:
            ax.plot(
                row["slides_per_hour"],
                100 * row["f1"],
                marker="o",
                markersize=FRONTIER_CIRCLE,
                markerfacecolor="none",
                markeredgecolor="0.45",
                markeredgewidth=0.8,
                linestyle="None",
                zorder=2,
                transform=shifted,
            )
    ax.set_ylim(-2, 102)
    ax.set_xlim(*limits)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(_lead_formatter(TICK_LEADS[0]))
    # one size for every tick label: the minor ones (7 pt) beside a 10 pt "1000" read as two
    ax.tick_params(which="both", labelsize=TICK_SIZE)
    ax.grid(alpha=0.3, which="both")
    return any(dodge)


def _x_arms(row: Mapping[str, Any], limits: tuple[float, float]) -> list[list[float]]:
    """The x error bar of one marker: from the throughput at seconds per slide + std to that
    at - std; an unbounded upper end (std >= seconds) runs to the panel's edge; none without
    a std."""
    speed, low, high = (
        float(row.get(k, math.nan))
        for k in ("slides_per_hour", "slides_per_hour_low", "slides_per_hour_high")
    )
    if math.isnan(low) or math.isnan(high) or not speed > 0:
        return [[0.0], [0.0]]
    high = min(high, limits[1])
    return [[max(0.0, speed - low)], [max(0.0, high - speed)]]


#: Figure 3's source data (`source_data`): one row per point drawn, units in the names.
SOURCE_COLUMNS = (
    "panel",
    "device",
    "device_name",
    "cpu_count",
    "processes",
    "threads",
    "precision",
    "method",
    "name",
    "slides_per_hour",
    "slides_per_hour_low",
    "slides_per_hour_high",
    "seconds_per_slide",
    "seconds_per_slide_sd",
    "n_timed_slides",
    "weighted_f1_pct",
    "weighted_f1_pct_ci_low",
    "weighted_f1_pct_ci_high",
    "no_ci_reason",
    "n_seeds",
    "n_test_slides",
    "n_test_units",
    "on_frontier",
)
#: What the source CSV's columns are: the first of its notes.
SOURCE_NOTE = (
    "one row per point of Figure 3, per panel (device); x: slides_per_hour (log axis), its bar "
    "from slides_per_hour_low to slides_per_hour_high, the throughput at seconds_per_slide + "
    "and - seconds_per_slide_sd (std over the n_timed_slides timed slides; inf: unbounded, "
    "drawn to the panel's edge; empty: no per-slide times, no bar); y: weighted F1 in percent "
    "(mean over n_seeds seeds), its bar the 95% bootstrap CI weighted_f1_pct_ci_low to _high "
    "(empty: no bar, no_ci_reason says why); on_frontier: ringed, on the efficiency frontier"
)


def source_data(data: pd.DataFrame, devices: Sequence[str]) -> pd.DataFrame:
    """Every point Figure 3 draws (`_device_panel`'s rows of the ``devices`` panels), with
    its panel, the bars' ends and what they are over: the GPU throughput and both error bars
    were in the image only. Weighted F1 in percent, as the y axis."""
    rows = []
    for device in devices:
        part = data[(data["device"] == device) & data["slides_per_hour"].notna()]
        part = part.reset_index(drop=True)
        panel = panel_title(device, panel_setting(part)).split("\n")[0]
        front = set(frontier(part).index)
        for index, row in part.iterrows():
            rows.append(
                {
                    "panel": panel,
                    "device": device,
                    "device_name": row.get("device_name"),
                    "cpu_count": row.get("cpu_count"),
                    "processes": row.get("processes"),
                    "threads": row.get("threads"),
                    "precision": row.get("precision"),
                    "method": row["method"],
                    "name": display_name(row["method"]),
                    "slides_per_hour": row["slides_per_hour"],
                    "slides_per_hour_low": row.get("slides_per_hour_low", math.nan),
                    "slides_per_hour_high": row.get("slides_per_hour_high", math.nan),
                    "seconds_per_slide": row.get("seconds_per_slide", math.nan),
                    "seconds_per_slide_sd": row.get("seconds_per_slide_sd", math.nan),
                    "n_timed_slides": row.get("n_slides", math.nan),
                    "weighted_f1_pct": 100 * row["f1"],
                    "weighted_f1_pct_ci_low": 100 * row["f1_low"],
                    "weighted_f1_pct_ci_high": 100 * row["f1_high"],
                    "no_ci_reason": row.get("f1_no_ci", ""),
                    "n_seeds": row.get("n_seeds", math.nan),
                    "n_test_slides": row.get("n_test", math.nan),
                    "n_test_units": row.get("n_test_units", math.nan),
                    "on_frontier": index in front,
                }
            )
    frame = pd.DataFrame(rows, columns=list(SOURCE_COLUMNS))
    counts = ("cpu_count", "processes", "threads", "n_timed_slides", "n_seeds", "n_test_slides")
    for column in (*counts, "n_test_units"):  # 2, not 2.0; empty where unknown
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    return frame


def setting_note(dataset: str, encoder: str, weights: str, skipped: Mapping[str, str]) -> str:
    """The setting under Figure 3 (it was a four-line title over the panels): what is timed,
    the encoder and weights, the random-weights warning, the devices not timed and why."""
    lines = []
    if note := weights_note(weights):
        lines.append(note)
    lines.append(
        f"{dataset}: throughput end to end from the slide file; "
        f"encoder {encoder_label(encoder)}, {weights} weights"
    )
    if skipped:
        lines.append(
            "; ".join(f"{PANELS.get(d, d)}: not timed ({reason})" for d, reason in skipped.items())
        )
    return "\n".join(lines)


def figure_size(panels: int) -> tuple[float, float]:
    """Inches: `PANEL_WIDTH` per panel up to `MAX_WIDTH` (a two-column page), the legend
    below (the notes under it extend the saved figure)."""
    width = MARGIN + PANEL_WIDTH * panels if panels == 1 else MAX_WIDTH
    return width, PANEL_HEIGHT + 1.0


def legend_columns(labels: Sequence[str], width: float) -> int:
    """As many legend columns as fit ``width`` inches at `NOTE_SIZE` (a label's characters at
    ~0.6 em, the handle and padding ~3 em), in rows as even as that allows."""
    if not labels:
        return 1
    em = NOTE_SIZE / 72
    entry = (0.55 * max(len(label) for label in labels) + 3.0) * em
    fit = max(1, min(len(labels), int(width / entry)))
    rows = math.ceil(len(labels) / fit)
    return math.ceil(len(labels) / rows)


def _label_boxes(panels: Iterable[Axes]) -> list[Any]:
    """Window boxes of the x tick labels ``panels`` show, left to right: those with text at a
    tick inside the panel's limits (the locator also labels ticks beyond them, never drawn)."""
    boxes = []
    for panel in panels:
        low, high = sorted(panel.get_xlim())
        boxes += [
            t.get_window_extent()
            for t in panel.get_xticklabels(which="both")
            if t.get_text() and low <= t.get_position()[0] <= high
        ]
    return sorted(boxes, key=lambda b: b.x0)


def _thin_tick_labels(ax: Axes, row: Sequence[Axes]) -> None:
    """Label the densest `TICK_LEADS` set of x ticks whose labels touch neither each other nor
    the labels the panels beside it in ``row`` show now (a panel's last label runs past its
    right edge); the other panels' labels among themselves are theirs to thin. After the
    layout: tick positions in points are known only then."""
    others = [panel for panel in row if panel is not ax]
    gap = TICK_SIZE * 0.4 * ax.figure.dpi / 72  # ~ a space between two labels
    for leads in TICK_LEADS:
        ax.xaxis.set_minor_formatter(_lead_formatter(leads))
        ax.figure.draw_without_rendering()
        own, beside = _label_boxes([ax]), _label_boxes(others)
        apart = all(a.x1 + gap <= b.x0 for a, b in zip(own, own[1:], strict=False))
        clear = all(a.x1 + gap <= b.x0 or b.x1 + gap <= a.x0 for a in own for b in beside)
        if apart and clear:
            return


def throughput_figure(
    evals: Iterable[str | Path],
    timings: Mapping[str, Iterable[str | Path]],
    methods: Sequence[str],
    outputs: Sequence[str | Path],
    dataset: str,
    weights: str,
    encoder: str = DEFAULT_ENCODER,
    sheet: str | Path | None = None,
    source: str | Path | None = None,
) -> pd.DataFrame:
    """Figure 3: slides/hour (log x, +- std over the timed slides) vs weighted F1 with 95% CIs
    over test slides, one panel per device that was timed, the efficiency frontier drawn, one
    legend below the panels (no labels to overlap), at a two-column page's width; the setting
    and devices without timings are in the notes under the legend. ``source``: a CSV of every
    point drawn (`source_data`) with those notes. Returns the plotted data."""
    data = throughput_data(evals, timings, methods, sheet)
    devices = [d for d in timings if data[data["device"] == d]["slides_per_hour"].notna().any()]
    skipped = {
        d: next((s for s in data[data["device"] == d]["skipped"] if s and s != "missing"), "")
        or "no timings"
        for d in timings
        if d not in devices
    }
    styles = method_styles(methods)
    n = max(1, len(devices))
    width, height = figure_size(n)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    dodged = False
    for ax, device in zip(axes[0], devices or [None], strict=True):
        ax.set_xlabel("slides / hour (log scale)", fontsize=LABEL_SIZE)
        ax.tick_params(which="both", labelsize=TICK_SIZE)
        if device is None:
            ax.text(
                0.5,
                0.5,
                "no timings",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=LABEL_SIZE,
            )
            ax.set_xticks([])
            continue
        dodged = _device_panel(ax, data, device, styles, handles) or dodged
    axes[0, 0].set_ylabel("weighted F1 (%)\n95% CI over test slides", fontsize=LABEL_SIZE)
    legend = None
    if handles:
        legend = fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncol=legend_columns(list(handles), width),
            fontsize=NOTE_SIZE,
            frameon=False,
            columnspacing=1.0,
            handletextpad=0.3,
        )
    fig.suptitle(f"{dataset}: throughput vs weighted F1", fontsize=9)
    timed = axes[0][: len(devices)]
    for ax in timed:  # sparsest first, so a panel is thinned against what its neighbours keep
        ax.xaxis.set_minor_formatter(_lead_formatter(TICK_LEADS[-1]))
    for ax in timed:
        _thin_tick_labels(ax, timed)
    fig.draw_without_rendering()
    fig.set_layout_engine("none")  # fixed now: the notes go under what it laid out
    if legend:  # where the layout put it (else it falls to the figure's bottom edge)
        box = legend.get_window_extent().transformed(fig.transFigure.inverted())
        legend.set_bbox_to_anchor(box, transform=fig.transFigure)
    shown = data[data["device"].isin(devices)]
    notes = [
        setting_note(dataset, encoder, weights, skipped),
        counts_note(shown),
        no_ci_note(shown),
        DODGE_NOTE if dodged else "",
    ]
    bottom = legend.get_window_extent().y0 / fig.bbox.height if legend else 0.0
    if note := "\n".join(filter(None, notes)):
        fig.text(0.01, bottom - 0.01, note, fontsize=NOTE_SIZE, va="top", wrap=True)
    save_figure(fig, outputs)
    if source is not None:
        write_source_csv(source, source_data(data, devices), SOURCE_COLUMNS, [SOURCE_NOTE, *notes])
    return data
