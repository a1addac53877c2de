"""Figure 3 (throughput vs accuracy with the efficiency frontier) and Figure 4 (attention maps).

Rendered with matplotlib's Agg backend (no display, safe in worker processes) to PNG and PDF.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from zoommil.reporting import results  # noqa: E402
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
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp" + out.suffix)
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(out)
    plt.close(fig)


def _minor_label(value: float, _position: int) -> str:
    """Label minor log ticks at 2x and 5x a power of ten (a one-decade axis has no majors)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(lead) in (2, 5) and abs(lead - round(lead)) < 1e-6 else ""


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
    records = results.eval_records(evals)
    summary = summarize_runs(records).set_index("method") if records else pd.DataFrame()
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
                    "f1": summary.loc[method, "weighted_f1_mean"]
                    if method in summary.index
                    else math.nan,
                    "f1_std": summary.loc[method, "weighted_f1_std"]
                    if method in summary.index
                    else math.nan,
                }
            )
    data = pd.DataFrame(rows)
    devices = list(timings)
    fig, axes = plt.subplots(1, len(devices), figsize=(4.6 * len(devices), 4.0), squeeze=False)
    for ax, device in zip(axes[0], devices, strict=True):
        part = data[data["device"] == device].reset_index(drop=True)
        ax.set_title(PANELS.get(device, device))
        ax.set_xlabel("throughput (slides / hour)")
        ax.set_ylabel("weighted F1 (%)")
        usable = part[~part["slides_per_hour"].isna()]
        if usable.empty:
            reason = next((s for s in part["skipped"] if s), "no timings")
            label = "no GPU" if device == "gpu" else "no timings"
            ax.text(
                0.5,
                0.5,
                f"{label}\n({reason})",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=11,
                color="0.35",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_xscale("log")
        for _, row in usable.iterrows():
            color = "tab:red" if row["method"].startswith("zoommil") else "tab:blue"
            ax.errorbar(
                row["slides_per_hour"],
                100 * row["f1"],
                yerr=100 * np.nan_to_num(row["f1_std"]),
                fmt="o",
                color=color,
                capsize=3,
            )
            ax.annotate(
                display_name(row["method"]),
                (row["slides_per_hour"], 100 * row["f1"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        front = pareto_front(list(part["slides_per_hour"]), list(part["f1"]))
        if len(front) > 1:
            pts = part.loc[front].sort_values("slides_per_hour")
            ax.plot(
                pts["slides_per_hour"],
                100 * pts["f1"],
                "--",
                color="0.4",
                label="efficiency frontier",
            )
            ax.legend(loc="lower left", fontsize=8)
        ax.set_ylim(-2, 102)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_minor_label))
        ax.grid(alpha=0.3, which="both")
    title = f"{dataset}: throughput vs weighted F1 ({encoder} encoder)"
    if str(weights) == "random":
        title += f"\n{RANDOM_NOTE}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, outputs)
    return data


def _lowest_attention(prediction: Mapping[str, Any]) -> Mapping[str, Any] | None:
    entries = prediction.get("attention") or []
    return min(entries, key=lambda e: float(e["mag"])) if entries else None


def attention_map(
    prediction: Mapping[str, Any], level0_size: tuple[int, int], thumb_size: tuple[int, int]
) -> np.ndarray:
    """Lowest-magnification attention painted on a [H, W] grid of the thumbnail (NaN = none).

    Weights are min-max scaled per slide, as attention is only comparable within a slide.
    """
    width0, height0 = level0_size
    width, height = thumb_size
    heat = np.full((height, width), np.nan, dtype=np.float32)
    entry = _lowest_attention(prediction)
    if entry is None or not entry.get("weights"):
        return heat
    weights = np.asarray(entry["weights"], dtype=np.float64)
    span = weights.max() - weights.min()
    weights = (weights - weights.min()) / span if span > 0 else np.ones_like(weights)
    sx, sy = width / width0, height / height0
    side = float(entry["side0"])
    for (x, y), w in zip(entry["xy"], weights, strict=True):
        c0, r0 = int(math.floor(x * sx)), int(math.floor(y * sy))
        c1 = max(c0 + 1, int(math.ceil((x + side) * sx)))
        r1 = max(r0 + 1, int(math.ceil((y + side) * sy)))
        heat[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = w
    return heat


def _thumbnail(path: str, max_side: int = 768) -> tuple[np.ndarray, tuple[int, int]]:
    import openslide

    with openslide.OpenSlide(path) as slide:
        size0 = slide.dimensions
        scale = max_side / max(size0)
        thumb = slide.get_thumbnail((max(1, int(size0[0] * scale)), max(1, int(size0[1] * scale))))
    background = np.asarray(thumb.convert("RGB"))
    return background, size0


def attention_figure(
    predictions: Sequence[str | Path],
    sheet: str | Path,
    outputs: Sequence[str | Path],
    method: str,
    dataset: str,
    weights: str,
) -> None:
    """Figure 4: one column per slide: thumbnail, and attention with the zoomed-in regions."""
    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False).set_index("slide_id")
    n = max(1, len(predictions))
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 7.0), squeeze=False)
    if not predictions:
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no test slides to show", ha="center", va="center")
    for col, path in enumerate(predictions):
        prediction = results.load_json(path)
        slide_id = prediction.get("slide_id") or Path(path).stem
        slide_path = prediction.get("slide") or table.loc[slide_id, "path"]
        if slide_id in table.index:
            slide_path = table.loc[slide_id, "path"]
        background, size0 = _thumbnail(slide_path)
        thumb_size = (background.shape[1], background.shape[0])
        heat = attention_map(prediction, size0, thumb_size)
        label = table.loc[slide_id, "label"] if slide_id in table.index else "?"
        predicted = prediction.get("predicted", "?")
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(background)
        top.set_title(f"{slide_id}\nlabel {label}, predicted {predicted}", fontsize=8)
        bottom.imshow(background)
        bottom.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        entry = _lowest_attention(prediction)
        mag = f"{float(entry['mag']):g}x" if entry else "lowest magnification"
        bottom.set_title(f"attention at {mag}", fontsize=8)
        selected = sorted(prediction.get("selected") or [], key=lambda e: float(e["mag"]))
        if selected:
            first = selected[0]
            sx, sy = thumb_size[0] / size0[0], thumb_size[1] / size0[1]
            side = float(first["side0"])
            for x, y in first["xy"]:
                bottom.add_patch(
                    Rectangle(
                        (x * sx, y * sy),
                        side * sx,
                        side * sy,
                        fill=False,
                        edgecolor="white",
                        linewidth=0.6,
                    )
                )
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    title = f"{dataset}: {display_name(method)} attention (white boxes: regions zoomed into)"
    if str(weights) == "random":
        title += f"\n{RANDOM_NOTE}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, outputs)
