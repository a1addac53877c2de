"""Figure 3 (throughput vs accuracy with the efficiency frontier) and Figure 4 (attention maps,
drawn by `zoommil.reporting.attention`, the renderer of `zoommil predict --heatmap`).

Rendered with matplotlib's Agg backend (no display, safe in worker processes) to PNG and PDF.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from zoommil.io.atomic import atomic_path  # noqa: E402
from zoommil.io.sheet import read_sheet  # noqa: E402
from zoommil.reporting import attention, results  # noqa: E402
from zoommil.reporting.tables import display_name, summarize_runs  # noqa: E402

PANELS = {"cpu1": "CPU, 1 thread", "cpu": "CPU, all cores", "gpu": "GPU"}
RANDOM_NOTE = "random encoder weights (offline demo): not a measure of the methods"


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


def _save(fig: plt.Figure, outputs: Iterable[str | Path]) -> None:
    for out in outputs:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _minor_label(value: float, _position: int) -> str:
    """Label minor log ticks at 2x and 5x a power of ten (a one-decade axis has no majors)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(lead) in (2, 5) and abs(lead - round(lead)) < 1e-6 else ""


def throughput_data(
    evals: Iterable[str | Path], timings: Mapping[str, Iterable[str | Path]], methods: Sequence[str]
) -> pd.DataFrame:
    """One row per device and method: slides/hour (NaN when skipped) and weighted F1."""
    records = results.eval_records(evals)
    summary = summarize_runs(records).set_index("method") if records else pd.DataFrame()

    def f1(method: str, column: str) -> float:
        return summary.loc[method, column] if method in summary.index else math.nan

    rows = []
    for device, paths in timings.items():
        timing = results.timing_by_method(paths)
        for method in methods:
            t = timing.get(method, {})
            rows.append(
                {
                    "device": device,
                    "method": method,
                    "slides_per_hour": t.get("slides_per_hour", math.nan),
                    "skipped": t.get("skipped", "missing"),
                    "f1": f1(method, "weighted_f1_mean"),
                    "f1_std": f1(method, "weighted_f1_std"),
                }
            )
    return pd.DataFrame(rows)


def _empty_panel(ax: plt.Axes, part: pd.DataFrame, device: str) -> None:
    """A panel without timings says why (no GPU, a skip reason)."""
    reason = next((s for s in part["skipped"] if s), "no timings")
    label = "no GPU" if device == "gpu" else "no timings"
    ax.text(0.5, 0.5, f"{label}\n({reason})", ha="center", va="center",
            transform=ax.transAxes, fontsize=11, color="0.35")  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def _throughput_panel(ax: plt.Axes, part: pd.DataFrame) -> None:
    """Methods as points with their seed spread, and the efficiency frontier."""
    ax.set_xscale("log")
    usable = part[~part["slides_per_hour"].isna()]
    for _, row in usable.iterrows():
        color = "tab:red" if row["method"].startswith("zoommil") else "tab:blue"
        x, y = row["slides_per_hour"], 100 * row["f1"]
        ax.errorbar(x, y, yerr=100 * np.nan_to_num(row["f1_std"]), fmt="o", color=color,
                    capsize=3)  # fmt: skip
        ax.annotate(display_name(row["method"]), (x, y), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)  # fmt: skip
    front = pareto_front(list(part["slides_per_hour"]), list(part["f1"]))
    if len(front) > 1:
        pts = part.loc[front].sort_values("slides_per_hour")
        ax.plot(pts["slides_per_hour"], 100 * pts["f1"], "--", color="0.4",
                label="efficiency frontier")  # fmt: skip
        ax.legend(loc="lower left", fontsize=8)
    ax.set_ylim(-2, 102)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_minor_label))
    ax.grid(alpha=0.3, which="both")


def _title(text: str, weights: str) -> str:
    return f"{text}\n{RANDOM_NOTE}" if str(weights) == "random" else text


def throughput_figure(
    evals: Iterable[str | Path],
    timings: Mapping[str, Iterable[str | Path]],
    methods: Sequence[str],
    outputs: Sequence[str | Path],
    dataset: str,
    weights: str,
    encoder: str = "resnet50_layer3",
) -> pd.DataFrame:
    """Figure 3: slides/hour (log x) vs weighted F1, one panel per device; returns the data."""
    data = throughput_data(evals, timings, methods)
    devices = list(timings)
    fig, axes = plt.subplots(1, len(devices), figsize=(4.6 * len(devices), 4.0), squeeze=False)
    for ax, device in zip(axes[0], devices, strict=True):
        part = data[data["device"] == device].reset_index(drop=True)
        ax.set_title(PANELS.get(device, device))
        ax.set_xlabel("throughput (slides / hour)")
        ax.set_ylabel("weighted F1 (%)")
        if part["slides_per_hour"].isna().all():
            _empty_panel(ax, part, device)
        else:
            _throughput_panel(ax, part)
    title = f"{dataset}: throughput vs weighted F1 ({encoder} encoder)"
    fig.suptitle(_title(title, weights), fontsize=10)
    fig.tight_layout()
    _save(fig, outputs)
    return data


def attention_figure(
    predictions: Sequence[str | Path],
    sheet: str | Path,
    outputs: Sequence[str | Path],
    method: str,
    dataset: str,
    weights: str,
) -> None:
    """Figure 4: one column per slide: thumbnail, and attention with the zoomed-in regions."""
    table = read_sheet(sheet).set_index("slide_id")
    n = max(1, len(predictions))
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 7.0), squeeze=False)
    if not predictions:
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no test slides to show", ha="center", va="center")
    for col, path in enumerate(predictions):
        prediction = results.load_json(path)
        slide_id = prediction.get("slide_id") or Path(path).stem
        row = table.loc[slide_id] if slide_id in table.index else None
        slide_path = row["path"] if row is not None else prediction.get("slide")
        mpp = float(row["mpp"]) if row is not None and str(row.get("mpp", "")).strip() else None
        background = attention.render({}, slide_path, mpp, max_side=768)
        overlay = attention.render(prediction, slide_path, mpp, max_side=768, steps=1)
        label = row["label"] if row is not None else "?"
        predicted = prediction.get("predicted", "?")
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(background)
        top.set_title(f"{slide_id}\nlabel {label}, predicted {predicted}", fontsize=8)
        bottom.imshow(overlay)
        entry = attention.lowest_attention(prediction)
        mag = f"{float(entry['mag']):g}x" if entry else "lowest magnification"
        bottom.set_title(f"attention at {mag}", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    title = f"{dataset}: {display_name(method)} attention (boxes: regions zoomed into)"
    fig.suptitle(_title(title, weights), fontsize=10)
    fig.tight_layout()
    _save(fig, outputs)
