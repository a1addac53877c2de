"""Figure 3 (throughput vs weighted F1) and Figure 4 (attention) content that could break."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from zoommil.reporting import attention, figure_attention, figure_throughput

CLASSES = ["a", "b", "c"]
#: The demo's nine methods, in its order: written out, not `MODEL_NAMES`, which grows with a
#: model a user adds (docs/ARCHITECTURE.md "Adding a model"), and ten methods have no ten
#: colours for these tests to find apart.
DEMO_METHODS = [
    "zoommil", "maxmil", "meanmil", "sparseconvmil", "abmil", "clam_sb", "transmil", "msmil",
    "dsmil",
]  # fmt: skip


def test_frontier_keeps_only_undominated_points() -> None:
    part = pd.DataFrame(
        {
            "method": ["fast_bad", "slow_good", "dominated", "fastest_worst", "tie"],
            "slides_per_hour": [100.0, 10.0, 50.0, 1000.0, 10.0],
            "f1": [0.5, 0.9, 0.4, 0.1, 0.8],
        }
    )
    # fastest first; "dominated" is slower and worse than fast_bad; "tie" is as fast as
    # slow_good and worse
    assert list(figure_throughput.frontier(part)["method"]) == [
        "fastest_worst",
        "fast_bad",
        "slow_good",
    ]


def test_method_styles_are_distinct_and_zoommil_stands_out() -> None:
    methods = ["zoommil", "maxmil", "meanmil", "abmil", "clam_sb", "transmil", "dsmil"]
    styles = figure_throughput.method_styles(methods)
    zoom = styles["zoommil"]
    assert zoom["marker"] == "*" and zoom["color"] == figure_throughput.ZOOMMIL_COLOUR
    # colour-blind-safe colours; each baseline keeps the marker it had (review: print size)
    assert {styles[m]["color"] for m in methods[1:]} <= set(figure_throughput.BASELINE_COLOURS)
    assert [styles[m]["marker"] for m in methods[1:]] == ["o", "s", "v", "P", "<", "X"]
    # a baseline is drawn alike whichever methods a config runs (by position, this subset
    # without SparseConvMIL and MS-MIL drew ABMIL in SparseConvMIL's colour)
    full = figure_throughput.method_styles(DEMO_METHODS)
    assert all(styles[m] == full[m] for m in methods)
    assert figure_throughput.method_styles(methods[::-1]) == styles
    others = [(tuple(styles[m]["color"]), styles[m]["marker"]) for m in methods[1:]]
    assert len(set(others)) == len(others)
    assert all(c[:3] != styles["zoommil"]["color"] for c, _ in others)
    assert all(styles[m]["markersize"] < zoom["markersize"] for m in methods[1:])


def test_a_model_of_ones_own_takes_a_free_colour_when_named(monkeypatch) -> None:
    """A tenth model named in `names.DISPLAY_NAMES`, as "Adding a model" says, became a
    ninth paper baseline with a slot past the eight colours: MaxMIL's blue, beside MaxMIL,
    in a figure of three methods. It takes a free colour as an unnamed method does; a method
    of one's own beyond the nine colours shares one, with a marker of its own."""
    import importlib

    from zoommil.reporting import names

    monkeypatch.setitem(names.DISPLAY_NAMES, "mymil", "MyMIL")
    module = importlib.reload(figure_throughput)  # PAPER_BASELINES is made at import
    try:
        styles = module.method_styles(["zoommil", "maxmil", "mymil"])
        assert len({s["color"] for s in styles.values()}) == 3
        full = module.method_styles([*DEMO_METHODS, "mymil"])
        pairs = {(s["color"], s["marker"]) for s in full.values()}
        assert len(pairs) == len(DEMO_METHODS) + 1
    finally:
        monkeypatch.undo()
        importlib.reload(figure_throughput)


def _linear_rgb(colour: str) -> np.ndarray:
    c = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of linear sRGB."""
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    x = xyz @ np.clip(linear, 0, 1) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(x > 0.008856, np.cbrt(x), 7.787 * x + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


#: Machado, Oliveira & Fernandes (2009), severity 1: protanopia, deuteranopia, tritanopia.
DICHROMACY = {
    "protan": [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ],
    "deutan": [
        [0.367322, 0.860646, -0.227968],
        [0.280085, 0.672501, 0.047413],
        [-0.011820, 0.042940, 0.968881],
    ],
    "tritan": [
        [1.255528, -0.076749, -0.178779],
        [-0.078411, 0.930809, 0.147602],
        [0.004733, 0.691367, 0.303900],
    ],
}


def test_the_nine_methods_have_nine_colours_apart_for_colour_blind_readers() -> None:
    """Eight baselines shared six Okabe-Ito colours: two of Figure 3's had one colour (their
    markers differed). Nine colours, ZoomMIL's vermillion its own, each readable on white
    (>= 2:1) and apart (CIELAB dE >= 15) in normal and simulated dichromat vision."""
    styles = figure_throughput.method_styles(DEMO_METHODS)
    colours = [styles[m]["color"] for m in DEMO_METHODS]
    assert len(set(colours)) == 9 and colours.count(figure_throughput.ZOOMMIL_COLOUR) == 1
    for colour in colours:
        luminance = _linear_rgb(colour) @ [0.2126, 0.7152, 0.0722]
        assert 1.05 / (luminance + 0.05) >= 2.0, colour
    for vision, matrix in {"normal": np.eye(3), **DICHROMACY}.items():
        labs = [_lab(np.asarray(matrix) @ _linear_rgb(c)) for c in colours]
        for i, a in enumerate(labs):
            for j in range(i + 1, len(labs)):
                assert np.linalg.norm(a - labs[j]) >= 15, (vision, colours[i], colours[j])
    # a second ZoomMIL variant: a star, not a second vermillion one
    variants = figure_throughput.method_styles(["zoommil", "zoommil_k8", "abmil"])
    assert variants["zoommil_k8"]["marker"] == "*"
    assert len({s["color"] for s in variants.values()}) == 3


def test_heatmap_boxes_of_each_zoom_step_are_apart_in_grayscale_and_dichromat_vision() -> None:
    """`zoommil predict --heatmap` outlined the zoom steps in green, blue and orange: green and
    orange were one grey (L* 70 and 69) and one olive to protan and deutan readers (dE 13-14),
    and orange vanished on inferno's orange top, where the chosen regions lie. The steps'
    colours are now apart in lightness and in every simulated vision, the legend names them,
    and each box has a black casing, seen on any colour of the map."""
    rgb = ["#{:02X}{:02X}{:02X}".format(*c) for c in attention.OUTLINE_COLOURS]
    lightness = sorted(_lab(_linear_rgb(c))[0] for c in rgb)
    assert all(b - a >= 20 for a, b in zip(lightness, lightness[1:], strict=False)), lightness
    for vision, matrix in {"normal": np.eye(3), **DICHROMACY}.items():
        labs = [_lab(np.asarray(matrix) @ _linear_rgb(c)) for c in rgb]
        for i, a in enumerate(labs):
            for j in range(i + 1, len(labs)):
                assert np.linalg.norm(a - labs[j]) >= 20, (vision, rgb[i], rgb[j])
    assert len(attention.OUTLINE_NAMES) == len(attention.OUTLINE_COLOURS)
    prediction = {"selected": [{"mag": 1.0, "xy": [[0, 0]], "side0": 1024}] * 3}
    text = attention.legend_text(prediction, 3)
    assert "(white step 1, sky blue step 2, blue step 3)" in text
    # a box over the top of the map: its core colour with black on both sides of it
    entry = {"mag": 1.0, "side0": 512, "xy": [[0, 0], [512, 0]], "weights": [0.0, 1.0]}
    thumb = np.full((64, 128, 3), 230, np.uint8)
    image = attention.attention_overlay(
        thumb, (1024, 512), entry, [{"mag": 1.0, "side0": 512, "xy": [[512, 0]]}]
    )
    column = image[32, 60:72]  # across the box's left edge, at x = 64
    core = [k for k, pixel in enumerate(column) if tuple(pixel) == attention.OUTLINE_COLOURS[0]]
    assert core, column
    assert tuple(column[core[0] - 1]) == attention.OUTLINE_CASING
    assert tuple(column[core[-1] + 1]) == attention.OUTLINE_CASING


def write_run(root: Path, method: str, seconds: float, correct: list[bool]) -> tuple[Path, Path]:
    labels = [CLASSES[i % 3] for i in range(len(correct))]
    preds = [
        y if ok else CLASSES[(CLASSES.index(y) + 1) % 3]
        for y, ok in zip(labels, correct, strict=True)
    ]
    evaluation = root / "eval" / method / "seed~0.json"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    evaluation.write_text(
        json.dumps(
            {
                "seed": 0,
                "classes": CLASSES,
                "accuracy": float(np.mean(correct)),
                "weighted_f1": f1_score(labels, preds, average="weighted", zero_division=0),
                "predictions": [
                    {"slide_id": f"t{i}", "label": y, "pred": p}
                    for i, (y, p) in enumerate(zip(labels, preds, strict=True))
                ],
            }
        )
    )
    timing = root / "efficiency" / method / "throughput_cpu1.json"
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_text(
        json.dumps(
            {
                "seconds_per_slide": seconds,
                "slides_per_hour": 3600 / seconds,
                "threads": 1,
                "cpu_count": 2,
                "device_name": "Test CPU 9000",
                "precision": "fp32",
                "skipped": None,
            }
        )
    )
    return evaluation, timing


def test_throughput_figure_data_states_the_setting_and_ci(tmp_path: Path) -> None:
    zoom = write_run(tmp_path, "zoommil", 2.0, [True] * 6)
    abmil = write_run(tmp_path, "abmil", 4.0, [True, True, True, False, False, False])
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"skipped": "no CUDA device"}))
    data = figure_throughput.throughput_figure(
        [zoom[0], abmil[0]],
        {"cpu1": [zoom[1], abmil[1]], "gpu": []},
        ["zoommil", "abmil"],
        [tmp_path / "fig.png"],
        "demo",
        "random",
    )
    assert (tmp_path / "fig.png").stat().st_size > 1000
    cpu = data[data["device"] == "cpu1"].set_index("method")
    # right on every slide: every resample gives 100%, so weighted F1 has no CI (it was a
    # zero-width [1, 1]), and one seed has no std
    assert cpu.loc[["zoommil"], ["f1_low", "f1_high"]].isna().all(axis=None)
    assert cpu.loc["abmil", "f1_low"] < 0.5 < cpu.loc["abmil", "f1_high"]
    setting = figure_throughput.panel_setting(data[data["device"] == "cpu1"])
    assert setting == figure_throughput.Setting("Test CPU 9000", 1, 2, "fp32")
    title = figure_throughput.panel_title("cpu1", setting)
    assert title == "CPU, 1 thread\nTest CPU 9000 (2 cores), encoder fp32"
    # ZoomMIL is both faster and better: the frontier is ZoomMIL alone
    assert list(figure_throughput.frontier(data[data["device"] == "cpu1"])["method"]) == ["zoommil"]


def test_no_ci_draws_no_bar_where_one_labelled_95_percent_ci_was(tmp_path: Path) -> None:
    """A run without per-slide predictions (or a score every resample agrees on) has no CI:
    the figure drew its seed std as the y bar under the axis label "95% CI over test
    slides". Now no bar, and a note under the figure names the method and why."""
    import matplotlib.pyplot as plt

    zoom = write_run(tmp_path, "zoommil", 2.0, [True, False, True, True])
    perfect = write_run(tmp_path, "maxmil", 8.0, [True] * 4)
    abmil = write_run(tmp_path, "abmil", 4.0, [True, False, False, True])
    for seed, f1 in ((0, 0.5), (1, 0.7)):  # two seeds, no per-slide predictions
        path = tmp_path / "eval" / "abmil" / f"seed~{seed}.json"
        path.write_text(json.dumps({"seed": seed, "weighted_f1": f1, "accuracy": f1}))
    evals = [zoom[0], perfect[0], abmil[0], tmp_path / "eval" / "abmil" / "seed~1.json"]
    methods = ["zoommil", "maxmil", "abmil"]
    data = figure_throughput.throughput_figure(
        evals,
        {"cpu1": [zoom[1], perfect[1], abmil[1]]},
        methods,
        [tmp_path / "fig.png"],
        "demo",
        "random",
    )
    cpu = data.set_index("method")
    assert cpu.loc["abmil", "f1"] == pytest.approx(0.6)
    assert cpu.loc[["abmil", "maxmil"], ["f1_low", "f1_high"]].isna().all(axis=None)
    assert cpu.loc["zoommil", "f1_low"] < cpu.loc["zoommil", "f1"]
    assert cpu.loc["zoommil", "f1_no_ci"] == ""
    assert cpu.loc["abmil", "f1_no_ci"] == "no per-slide predictions"
    assert cpu.loc["maxmil", "f1_no_ci"] == "every resample of the test slides gives the same value"
    note = figure_throughput.no_ci_note(data)
    assert note.startswith("no y error bar, no 95% CI of weighted F1: ")
    assert "ABMIL (no per-slide predictions)" in note and "MaxMIL (every resample" in note
    assert "ZoomMIL" not in note
    fig, ax = plt.subplots()
    try:
        figure_throughput._device_panel(
            ax, data, "cpu1", figure_throughput.method_styles(methods), {}
        )
        bars = {round(float(c.lines[0].get_ydata()[0]), 3): c.has_yerr for c in ax.containers}
    finally:
        plt.close(fig)
    f1 = {m: round(100 * cpu.loc[m, "f1"], 3) for m in methods}
    assert bars == {f1["zoommil"]: True, f1["maxmil"]: False, f1["abmil"]: False}


def test_figures_leave_the_callers_backend_alone(tmp_path: Path) -> None:
    """Importing the module called matplotlib.use("Agg"), switching the backend of whoever
    imported it (a notebook's inline or an svg backend became Agg). Drawing uses Figure
    objects, not pyplot: the backend set before stays, through an import and a figure."""
    zoom = write_run(tmp_path, "zoommil", 2.0, [True, False, True])
    code = (
        "import matplotlib, sys\n"
        "matplotlib.use('svg')\n"
        "from zoommil.reporting import figure_attention, figure_throughput\n"
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')\n"
        f"figure_throughput.throughput_figure([{str(zoom[0])!r}], {{'cpu1': [{str(zoom[1])!r}]}}, "
        f"['zoommil'], [{str(tmp_path / 'f.png')!r}], 'demo', 'random')\n"
        "print(matplotlib.get_backend())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no", "pyplot", "svg"]
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_equal_throughputs_are_drawn_a_few_points_apart() -> None:
    """Methods timed in one shared pass have (almost) equal throughput: their markers are
    spread sideways in points, symmetric about the true value, slower ones left; other
    points stay put."""
    speeds = [560.0, 1500.0, 561.0, 390.0, 560.5]
    offsets = figure_throughput.dodge_offsets(speeds, step=5.0)
    assert offsets == pytest.approx([-5.0, 0.0, 5.0, 0.0, 0.0])
    assert figure_throughput.dodge_offsets([100.0, 200.0]) == [0.0, 0.0]
    assert figure_throughput.dodge_offsets([100.0, 100.0], step=4.0) == pytest.approx([-2.0, 2.0])


def _panel(data: pd.DataFrame) -> tuple[Any, Any, dict[str, Any]]:
    import matplotlib.pyplot as plt

    styles = figure_throughput.method_styles(list(data["method"]))
    fig, ax = plt.subplots()
    handles: dict[str, Any] = {}
    figure_throughput._device_panel(ax, data, "cpu1", styles, handles)
    fig.canvas.draw()
    return fig, ax, handles


def test_dodged_markers_keep_their_true_throughput_and_order() -> None:
    """Equal throughputs are set apart by a few points on screen, never in data: each marker
    and its x error bar stay at the method's own throughput. In data units (the old +-3.5 %
    steps of a group of six) a marker's bar could miss its own value and a faster method be
    drawn left of a slower one (run 35: MaxMIL 466.5 slides/h drawn at 428, MS-MIL 440.7)."""
    import matplotlib.pyplot as plt

    speeds = [466.5, 466.1, 440.7, 466.3, 466.2, 466.4]
    data = pd.DataFrame(
        {
            "method": ["maxmil", "transmil", "msmil", "meanmil", "abmil", "clam_sb"],
            "device": ["cpu1"] * 6,
            "slides_per_hour": speeds,
            "slides_per_hour_low": [s * 0.96 for s in speeds],
            "slides_per_hour_high": [s * 1.04 for s in speeds],
            "f1": [0.5, 0.55, 0.6, 0.45, 0.52, 0.58],
            "f1_low": [np.nan] * 6,
            "f1_high": [np.nan] * 6,
        }
    )
    fig, ax, _ = _panel(data)
    try:
        to_data = ax.transData.inverted()
        drawn = {}
        for container, speed in zip(ax.containers, speeds, strict=True):
            marker = container.lines[0]
            screen = marker.get_transform().transform(
                np.column_stack([marker.get_xdata(), marker.get_ydata()]).astype(float)
            )
            x_bar, x_cap = container.lines[2][0], container.lines[1][0]
            ends = x_bar.get_transform().transform(np.asarray(x_bar.get_segments()[0], dtype=float))
            drawn[speed] = (to_data.transform(screen)[0, 0], to_data.transform(ends)[:, 0])
            assert marker.get_xdata()[0] == speed  # the data are the true throughput
            # the x bar and its caps are not dodged: one shared pass's bars coincide (review W)
            assert x_bar.get_transform() == ax.transData == x_cap.get_transform()
    finally:
        plt.close(fig)
    for speed, (x, (left, right)) in drawn.items():
        assert abs(x / speed - 1) < 0.02  # a few points, not 9 %
        assert left == pytest.approx(speed * 0.96) and right == pytest.approx(speed * 1.04)
    assert drawn[440.7][0] < min(x for s, (x, _) in drawn.items() if s != 440.7)


def test_frontier_circles_sit_on_the_drawn_markers_of_dodged_methods() -> None:
    """Methods of (nearly) equal throughput are drawn side by side; the frontier's circles
    ring the drawn markers of the frontier methods, its step line runs through the true
    throughputs, and the legend names the ring."""
    import matplotlib.pyplot as plt

    data = pd.DataFrame(
        {
            "method": ["meanmil", "abmil", "clam_sb", "zoommil"],
            "device": ["cpu1"] * 4,
            "slides_per_hour": [700.0, 700.5, 701.0, 150.0],  # one shared pass for three
            "f1": [0.45, 0.50, 0.60, 0.90],
            "f1_low": [np.nan] * 4,
            "f1_high": [np.nan] * 4,
        }
    )
    fig, ax, handles = _panel(data)

    def screen(line: Any) -> tuple[float, float]:
        xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
        return tuple(np.round(line.get_transform().transform(xy)[0], 3))

    try:
        markers = [screen(container.lines[0]) for container in ax.containers]
        rings = [
            screen(line)
            for line in ax.lines
            if line.get_markersize() == figure_throughput.FRONTIER_CIRCLE
        ]
        step = ax.lines[0]
        step_x = sorted(step.get_xdata())
    finally:
        plt.close(fig)
    front = [markers[2], markers[3]]  # CLAM-SB (best of the three equally fast ones), ZoomMIL
    assert sorted(rings) == sorted(front)
    assert step_x == [150.0, 701.0]
    assert len({x for x, _ in markers}) == 4  # the three tied methods are spread sideways
    assert "efficiency frontier" in handles


def test_a_lone_frontier_point_still_has_its_legend_entry() -> None:
    """One method fastest and most accurate: no step line, but its ring is explained."""
    import matplotlib.pyplot as plt

    data = pd.DataFrame(
        {
            "method": ["zoommil", "abmil"],
            "device": ["cpu1"] * 2,
            "slides_per_hour": [900.0, 150.0],
            "f1": [0.9, 0.5],
            "f1_low": [np.nan] * 2,
            "f1_high": [np.nan] * 2,
        }
    )
    fig, ax, handles = _panel(data)
    plt.close(fig)
    assert handles["efficiency frontier"].get_linestyle() == "None"
    assert handles["efficiency frontier"].get_marker() == "o"


def test_attention_figure_has_a_column_per_magnification(make_slide, tmp_path: Path) -> None:
    slide = make_slide("t0.tiff", width=1024, height=768, mpp=1.0, levels=2)
    sheet = tmp_path / "usable.tsv"
    other = make_slide("other.tiff", width=512, height=512, mpp=1.0, levels=1)
    sheet.write_text(
        f"slide_id\tpath\tlabel\tsplit\nt0\t{slide}\tb\ttest\nscan_7\t{other}\ta\ttest\n"
    )
    prediction = {
        # what `zoommil predict` without --slide-id records: the file's name, here also
        # another sheet row's id; the workflow's JSON name (the sheet id) must win
        "slide_id": "scan_7",
        "predicted": "b",
        "attention": [
            {"mag": 10.0, "side0": 256, "xy": [[0, 0], [256, 0]], "weights": [0.3, 0.7]},
            {"mag": 5.0, "side0": 512, "xy": [[0, 0], [512, 0]], "weights": [0.9, 0.1]},
        ],
        "selected": [{"mag": 5.0, "side0": 512, "xy": [[0, 0]]}],
    }
    path = tmp_path / "t0.json"
    path.write_text(json.dumps(prediction))
    layout = figure_attention.attention_figure(
        [path], sheet, [tmp_path / "att.png"], "zoommil", "demo", "random", "uni"
    )
    assert layout["rows"] == 1 and layout["colorbar"]
    # the colour bar off the panels, not over the last one (review G); the three-line title
    # clear of the column titles (review H2): the two-column page test checks every text
    assert not layout["colorbar_overlaps"]
    assert layout["title"].count("\n") == 2
    # the encoder the workflow passes is named, as in Figure 3 (the param went unread)
    assert "encoder uni (ViT-L/16, 224 px, 1024-d)" in layout["title"]
    assert layout["slides"] == [("t0", "b")]
    assert layout["titles"][1:] == ["attention at 5x", "attention at 10x"]
    assert (tmp_path / "att.png").stat().st_size > 1000
    # the 10x map covers only the zoomed region, normalised within that magnification
    heat = attention.attention_map(prediction["attention"][0], (1024, 768), (128, 96))
    assert np.all(heat[:32, :32] == 0.0) and np.all(heat[:32, 32:64] == 1.0)
    assert np.isnan(heat[:, 64:]).all() and np.isnan(heat[32:, :]).all()


def test_figure_4_boxes_over_the_maps_have_a_dark_casing(
    make_slide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regions zoomed into were cyan lines (L* 91) over the maps: on inferno's pale yellow
    top, where they lie, and on glass they were one grey in print. Each box over a map is
    now drawn over a black stroke; the thumbnail column's black boxes need none."""
    from matplotlib.patches import Rectangle

    slide = make_slide("t0.tiff", width=1024, height=768, mpp=1.0, levels=2)
    sheet = tmp_path / "usable.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\nt0\t{slide}\tb\ttest\n")
    prediction = {
        "predicted": "b",
        "attention": [{"mag": 5.0, "side0": 512, "xy": [[0, 0], [512, 0]], "weights": [0.9, 0.1]}],
        "selected": [{"mag": 5.0, "side0": 512, "xy": [[0, 0]]}],
    }
    path = tmp_path / "t0.json"
    path.write_text(json.dumps(prediction))
    drawn: list[Any] = []
    monkeypatch.setattr(figure_attention, "save_pages", lambda figs, out: drawn.extend(figs))
    figure_attention.attention_figure([path], sheet, [tmp_path / "a.png"], "zoommil", "demo", "r")
    thumb_ax, map_ax = drawn[0].axes[:2]
    (box,) = [p for p in map_ax.patches if isinstance(p, Rectangle)]
    strokes = [e for e in box.get_path_effects() if hasattr(e, "_gc")]
    assert strokes and strokes[0]._gc["foreground"] == "black"
    assert strokes[0]._gc["linewidth"] > box.get_linewidth()
    assert [p.get_edgecolor()[:3] for p in thumb_ax.patches] == [(0.0, 0.0, 0.0)]


def test_attention_figure_without_a_slide_says_the_chosen_ones_failed_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chosen prediction failed: the figure said "no test slides to show" (there were
    some) and its note cut the reason at 80 characters, mid-sentence ("...but the file )").
    With no slide at all it drew a stray "slide" column title over nothing: an empty Figure 4
    shows its title and why, as Figure 3 without timings does, within the page's width."""
    from matplotlib.text import Text

    from zoommil.workflow.failure import Failure, write_marker

    drawn: list[Any] = []
    real_save = figure_attention.save_figure
    monkeypatch.setattr(
        figure_attention, "save_figure", lambda fig, out: (drawn.append(fig), real_save(fig, out))
    )

    reason = (
        "truncated or corrupt TIFF file: directory 1 starts at byte 1834270 but the file has "
        "only 1586951 bytes"
    )
    sheet = tmp_path / "usable.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\nt0\tt0.tiff\tb\ttest\n")
    marker = write_marker(tmp_path / "t0.json", Failure("failed", "predict", reason))
    layout = figure_attention.attention_figure(
        [marker], sheet, [tmp_path / "att.png"], "zoommil", "demo", "random"
    )
    assert layout["skipped"] == [f"t0 (predict: {reason})"]
    assert layout["empty"] == (
        f"no test slide could be shown: the chosen slides failed\nt0 (predict: {reason})"
    )
    assert (tmp_path / "att.png").stat().st_size > 1000
    none = figure_attention.attention_figure(
        [], sheet, [tmp_path / "none.png"], "zoommil", "demo", "x"
    )
    for fig, drawn_layout in zip(drawn, (layout, none), strict=True):
        fig.draw_without_rendering()
        shown = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert sorted(t.get_text() for t in shown) == sorted(
            [drawn_layout["title"], drawn_layout["empty"]]
        )
        assert {t.get_fontsize() for t in shown} <= {8, 9}
        assert fig.get_figwidth() <= 7.1
    assert none["empty"] == "no test slides to show: the test split has no slide that QC kept"
    assert not none["skipped"] and none["rows"] == 0 and none["titles"] == []


def test_figure_4_left_out_by_the_config_says_so(tmp_path: Path) -> None:
    """figures.attention.method: null: the figure says it is left out (the workflow redraws
    it so, instead of keeping maps an earlier config drew), no column title, no slide."""
    layout = figure_attention.attention_figure(
        [], tmp_path / "none.tsv", [tmp_path / "off.png"], None, "demo", "random"
    )
    assert layout["empty"] == "left out: figures.attention.method is null"
    assert layout["titles"] == [] and layout["rows"] == 0 and not layout["colorbar"]
    assert (tmp_path / "off.png").stat().st_size > 1000


def test_attention_layout_is_the_union_of_magnifications() -> None:
    predictions = [
        {"attention": [{"mag": 5.0}, {"mag": 10.0}]},
        {"attention": [{"mag": 2.5}, {"mag": 5.0}]},
    ]
    assert figure_attention.attention_layout(predictions) == [2.5, 5.0, 10.0]
    assert figure_attention.attention_layout([{}]) == []


@pytest.mark.parametrize("weights", ["random", "imagenet"])
def test_throughput_figure_without_any_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str
) -> None:
    """It says "no timings" in its panel, at the figure's 7-9 pt as every other text (the
    panel's text was at matplotlib's default 10 pt)."""
    from matplotlib.text import Text

    drawn: list[Any] = []
    real_save = figure_throughput.save_figure
    monkeypatch.setattr(
        figure_throughput, "save_figure", lambda fig, out: (drawn.append(fig), real_save(fig, out))
    )
    zoom = write_run(tmp_path, "zoommil", 2.0, [True, False, True])
    data = figure_throughput.throughput_figure(
        [zoom[0]], {"cpu1": []}, ["zoommil"], [tmp_path / "f.png"], "demo", weights
    )
    assert data["slides_per_hour"].isna().all() and (tmp_path / "f.png").exists()
    (fig,) = drawn
    shown = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert "no timings" in [t.get_text() for t in shown]
    sizes = {t.get_fontsize() for t in shown}
    assert min(sizes) >= 7 and max(sizes) <= 9, sizes


def test_the_same_results_draw_byte_identical_pdfs(tmp_path: Path) -> None:
    """A PDF carried its creation time, so a rerun of unchanged results gave a different
    file; without it a figure can be compared by checksum."""
    zoom = write_run(tmp_path, "zoommil", 2.0, [True, False, True])
    for name in ("a.pdf", "b.pdf"):
        figure_throughput.throughput_figure(
            [zoom[0]], {"cpu1": [zoom[1]]}, ["zoommil"], [tmp_path / name], "demo", "random"
        )
    first = (tmp_path / "a.pdf").read_bytes()
    assert first.startswith(b"%PDF") and b"/CreationDate" not in first
    assert first == (tmp_path / "b.pdf").read_bytes()


def test_throughput_has_x_error_bars_of_its_spread_over_slides() -> None:
    """A marker's x error bar runs from the throughput at s/slide + std to that at - std;
    one with std >= s/slide runs to the panel's edge; a timing without per-slide values has
    none. There were y error bars only."""
    import matplotlib.pyplot as plt

    data = pd.DataFrame(
        {
            "method": ["zoommil", "abmil", "maxmil"],
            "device": ["cpu1"] * 3,
            "slides_per_hour": [1800.0, 180.0, 90.0],
            "slides_per_hour_low": [3600 / 2.5, 3600 / 30.0, np.nan],
            "slides_per_hour_high": [3600 / 1.5, np.inf, np.nan],
            "f1": [0.9, 0.6, 0.5],
            "f1_low": [np.nan] * 3,
            "f1_high": [np.nan] * 3,
        }
    )
    styles = figure_throughput.method_styles(list(data["method"]))
    fig, ax = plt.subplots()
    try:
        figure_throughput._device_panel(ax, data, "cpu1", styles, {})
        spans = {}
        for container in ax.containers:
            assert container.has_xerr
            x_bars = container.lines[2][0]  # x error bars come first
            (x0, _), (x1, _) = x_bars.get_segments()[0]
            spans[round(float(container.lines[0].get_xdata()[0]))] = (x0, x1)
        left, right = ax.get_xlim()
    finally:
        plt.close(fig)
    assert spans[1800] == pytest.approx((3600 / 2.5, 3600 / 1.5))
    assert spans[180][0] == pytest.approx(120.0) and spans[180][1] == pytest.approx(right)
    assert spans[90] == pytest.approx((90.0, 90.0))
    assert left < 90 and right > 3600 / 1.5


def test_figure_data_carries_the_throughput_spread(tmp_path: Path) -> None:
    zoom = write_run(tmp_path, "zoommil", 2.0, [True] * 6)
    record = json.loads(zoom[1].read_text())
    rows = [
        {"slide_id": "t0", "seconds": 1.5, "pid": 1},
        {"slide_id": "t1", "seconds": 2.5, "pid": 1},
    ]
    zoom[1].write_text(json.dumps({**record, "per_slide": rows}))
    data = figure_throughput.throughput_data([zoom[0]], {"cpu1": [zoom[1]]}, ["zoommil"]).iloc[0]
    sd = float(np.std([1.5, 2.5], ddof=1))
    assert data["slides_per_hour_low"] == pytest.approx(3600 / (2.0 + sd))
    assert data["slides_per_hour_high"] == pytest.approx(3600 / (2.0 - sd))
    assert data["n_slides"] == 2


def test_cpu_panel_is_titled_by_the_processes_used() -> None:
    """ "All cores" runs min(threads, slides) processes: the title names the processes used,
    not the threads asked (4 threads, 2 slides: 2 processes); a file without `processes`
    (older) keeps its threads."""
    used = figure_throughput.Setting("Test CPU", 4, 4, "fp32", processes=2)
    assert figure_throughput.panel_title("cpu", used).startswith("CPU, 2 processes x 1 thread\n")
    one = figure_throughput.Setting("Test CPU", 4, 4, None, processes=1)
    # as the table's "CPU 1 process" column, not the 1-thread panel's title (review B)
    assert figure_throughput.panel_title("cpu", one).startswith("CPU, 1 process x 1 thread\n")
    assert figure_throughput.panel_title("cpu1", one).startswith("CPU, 1 thread\n")
    old = figure_throughput.Setting("Test CPU", 4, 4, None)
    assert figure_throughput.panel_title("cpu", old).startswith("CPU, 4 threads\n")
    part = pd.DataFrame(
        [
            {
                "slides_per_hour": 10.0,
                "device_name": "X",
                "threads": 4,
                "processes": 2,
                "cpu_count": 4,
                "precision": None,
            }
        ]  # fmt: skip
    )
    assert figure_throughput.panel_setting(part).processes == 2


def test_figure_captions_describe_what_is_drawn() -> None:
    """The report's captions said "error bars one standard deviation" (the code draws the 95%
    bootstrap CI over test slides, and now throughput +- std) and "attention at the lowest
    magnification" (Figure 4 has a column per magnification)."""
    report = Path(__file__).resolve().parents[1] / "workflow" / "report"
    throughput = " ".join((report / "figure_throughput.rst").read_text().split())
    assert "95% bootstrap CI over the test slides" in throughput
    assert "Horizontal error bars" in throughput and "error bars one standard" not in throughput
    attention_caption = " ".join((report / "figure_attention.rst").read_text().split())
    assert "one column per magnification" in attention_caption
    assert "lowest magnification" not in attention_caption


def test_figure_captions_say_how_to_read_them_without_colour() -> None:
    """The report's captions (an image's only text there: Snakemake's viewer gives it no alt
    text) did not say what tells Figure 3's methods apart (a marker each, named in the
    legend) nor which end of Figure 4's colour scale is high, so a reader of the caption
    alone, or of a grayscale print, could not read either figure."""
    report = Path(__file__).resolve().parents[1] / "workflow" / "report"
    throughput = " ".join((report / "figure_throughput.rst").read_text().split())
    assert "marker shape of its own" in throughput and "named in the legend" in throughput
    assert "Tables 1-3" in throughput  # where the numbers are, as text
    attention_caption = " ".join((report / "figure_attention.rst").read_text().split())
    assert "inferno" in attention_caption
    assert "dark (black, purple) for low and bright (yellow) for high" in attention_caption


def test_figure_3_says_what_its_bars_are_over() -> None:
    """The seeds and test slides of the y bars and the timed slides of the x bars were
    nowhere on the figure (review W)."""
    data = pd.DataFrame(
        {
            "slides_per_hour": [900.0, 300.0, np.nan],
            "n_seeds": [3, 3, 3],
            "n_test": [15, 15, 15],
            "n_slides": [2, 2, np.nan],
        }
    )
    assert figure_throughput.counts_note(data) == (
        "y: weighted F1, mean over 3 seeds, 95% bootstrap CI over 15 test slides; "
        "x: slides/hour, ± std over the timed slides (n = 2 per method)"
    )
    assert figure_throughput.counts_note(data.iloc[2:]) == ""  # nothing timed: no note


def test_figure_3_notes_lie_under_its_panels_and_tick_labels_are_one_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dodge note was drawn inside each panel's lower right, wider than a narrow panel
    (across the left spine and the y ticks) and over the markers near the bottom; it is a
    note under the figure now, clear of every panel. Minor x tick labels were 7 pt beside a
    10 pt "1000"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs = [  # equal throughputs within 1%: their markers are set apart, and the note says so
        write_run(tmp_path, "abmil", 4.0, [True, False, True]),
        write_run(tmp_path, "meanmil", 4.01, [True, True, False]),
    ]
    drawn: list[Any] = []
    monkeypatch.setattr(figure_throughput, "save_figure", lambda fig, _: drawn.append(fig))
    figure_throughput.throughput_figure(
        [e for e, _ in runs], {"cpu1": [t for _, t in runs]}, ["abmil", "meanmil"], [], "d", "r"
    )
    (fig,) = drawn
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    (note,) = [t for t in fig.texts if figure_throughput.DODGE_NOTE in t.get_text()]
    assert not any(figure_throughput.DODGE_NOTE in t.get_text() for t in ax.texts)
    box = note.get_window_extent(renderer)
    assert box.y1 < ax.get_tightbbox(renderer).y0  # under the panel, its ticks and label
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width  # wrapped within the figure's width
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
    assert len(labels) > 1 and {t.get_fontsize() for t in labels} == {figure_throughput.TICK_SIZE}


def drawn_x_labels(ax: Any) -> list[Any]:
    """The x tick labels matplotlib draws: those with text at a tick inside the axis' limits
    (the locator also places labelled ticks beyond them, which are never drawn)."""
    low, high = sorted(ax.get_xlim())
    return [
        t
        for t in ax.get_xticklabels(which="both")
        if t.get_text() and low <= t.get_position()[0] <= high
    ]


def text_boxes(fig: Any) -> list[tuple[str, Any]]:
    """Every visible text of a drawn figure (tick labels, axis labels, titles, legend, notes)
    with its box on screen."""
    texts = list(fig.texts)  # the title and the notes
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        texts += drawn_x_labels(ax) + ax.get_yticklabels()
    for legend in fig.legends:
        texts += legend.get_texts()
    return [
        (t.get_text(), t.get_window_extent())
        for t in texts
        if t is not None and t.get_visible() and t.get_text().strip()
    ]


@pytest.mark.parametrize("devices", [["cpu1", "cpu"], ["cpu1", "cpu", "gpu"]])
def test_figure_3_fits_a_two_column_page_with_no_text_overlapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: list[str]
) -> None:
    """The PDF was 12.7 in wide (8 pt text printed at ~4.5 pt on a 7.1 in page), and a
    smaller figsize alone ran the y label into the notes and the x ticks into each other
    ("600 700800"). Nine methods, shared-pass throughputs across a decade: at most 7.2 in
    wide, text at 7-9 pt, no two texts touching, each method with its own marker."""
    runs = {
        m: write_run(tmp_path / m, m, 1.3 + 0.02 * k + (k == 0) * 8, [True, k % 2 == 0, True])
        for k, m in enumerate(DEMO_METHODS)
    }
    evals = [e for e, _ in runs.values()]
    drawn: list[Any] = []
    real_save = figure_throughput.save_figure
    monkeypatch.setattr(
        figure_throughput, "save_figure", lambda fig, out: (drawn.append(fig), real_save(fig, out))
    )
    figure_throughput.throughput_figure(
        evals,
        {d: [t for _, t in runs.values()] for d in devices},
        DEMO_METHODS,
        [tmp_path / "f.pdf"],
        "demo",
        "random",
    )
    (fig,) = drawn
    fig.draw_without_rendering()
    boxes = text_boxes(fig)
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), (a, b)
    from matplotlib.text import Text

    shown = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    sizes = {t.get_fontsize() for t in shown}
    assert min(sizes) >= 7 and max(sizes) <= 9
    for ax in fig.axes:  # each method keeps its own marker in every panel
        markers = [container.lines[0].get_marker() for container in ax.containers]
        assert len(set(markers)) == len(DEMO_METHODS)
        # a reader can place the points: thinning counted labels of ticks beyond the panel's
        # limits (never drawn) and left the demo's panels with a lone "1000" each
        labelled = [t.get_text() for t in drawn_x_labels(ax)]
        assert len(labelled) >= 3, labelled
    text = (tmp_path / "f.pdf").read_bytes()
    box = text[text.index(b"/MediaBox") :].split(b"]")[0].split(b"[")[1].split()
    assert float(box[2]) - float(box[0]) <= 7.2 * 72 + 2


def test_figure_3_legend_shows_each_methods_marker_uncrossed_by_error_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legend's entries were the error bar containers: each drew its x and y bars with
    caps across the marker, so circle, square, diamond, plus and cross read alike there, and
    in grayscale (MaxMIL, SparseConvMIL and ABMIL one grey) the marker is all that tells the
    methods apart. Each entry is now the method's marker alone, in its colour."""
    runs = {
        m: write_run(tmp_path / m, m, 1.3 + 0.3 * k, [True, k % 2 == 0, True])
        for k, m in enumerate(DEMO_METHODS)
    }
    drawn: list[Any] = []
    monkeypatch.setattr(figure_throughput, "save_figure", lambda fig, out: drawn.append(fig))
    figure_throughput.throughput_figure(
        [e for e, _ in runs.values()],
        {"cpu1": [t for _, t in runs.values()]},
        DEMO_METHODS,
        [tmp_path / "f.png"],
        "demo",
        "random",
    )
    (legend,) = drawn[0].legends
    styles = figure_throughput.method_styles(DEMO_METHODS)
    texts = [t.get_text() for t in legend.get_texts()]
    entries = dict(zip(texts, legend.legend_handles, strict=True))
    for method, style in styles.items():
        handle = entries[figure_throughput.display_name(method)]
        assert handle.get_marker() == style["marker"], method
        assert handle.get_linestyle() == "None" and handle.get_color() == style["color"]
    # no error bar lines or caps anywhere in the legend
    from matplotlib.collections import LineCollection

    assert not [c for c in legend.findobj(LineCollection) if c.get_segments()]


def test_figure_pdfs_embed_truetype_fonts_not_type_3(tmp_path: Path) -> None:
    """Journals' PDF checks (IEEE PDF eXpress and others) reject Type 3 fonts, matplotlib's
    default (review W); the setting holds for our saves only."""
    import matplotlib
    from matplotlib.figure import Figure

    from zoommil.reporting.figure_files import save_figure

    fig = Figure()
    fig.subplots().set_title("weighted F1 (%)")
    save_figure(fig, [tmp_path / "f.pdf"])
    data = (tmp_path / "f.pdf").read_bytes()
    assert b"/Type3" not in data and b"/FontFile2" in data
    assert matplotlib.rcParams["pdf.fonttype"] == 3  # the caller's settings are untouched


def test_figure_4_of_maxmil_does_not_read_as_probabilities(make_slide, tmp_path: Path) -> None:
    """Its colour bar ran 0.0-1.0 beside "probability" while each map is min-max scaled: the
    patches coloured 1.0 had probabilities of ~0.5 (review B); the columns said "attention"."""
    slide = make_slide("m0.tiff", width=512, height=512, mpp=1.0, levels=1)
    sheet = tmp_path / "usable.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\nm0\t{slide}\tb\ttest\n")
    entry = {"mag": 10.0, "side0": 256, "xy": [[0, 0], [256, 0]], "weights": [0.32, 0.51]}
    path = tmp_path / "m0.json"
    path.write_text(json.dumps({"arch": "maxmil", "predicted": "b", "attention": [entry]}))
    layout = figure_attention.attention_figure(
        [path], sheet, [tmp_path / "m.png"], "maxmil", "demo", "random", wanted=3
    )
    assert layout["titles"][1:] == ["per-patch probability at 10x"]
    # fewer slides than asked for say so (a 2-slide test split drew 2 rows silently, review L)
    assert layout["footnotes"] == [
        "1 of the 3 slides asked for (figures.attention.n_slides): the test split has no more "
        "that could be shown"
    ]
    assert layout["colorbar_ticks"] == ["low", "high"]
    assert layout["colorbar_label"].endswith(
        "(min-max per slide and magnification: relative within one map)"
    )


def test_figure_4_names_the_class_of_its_colour() -> None:
    """A MaxMIL or DSMIL map is of one class per slide: the colour bar named the first row's
    class for every row (review G)."""
    rows = [
        {"arch": "maxmil", "attention": [{"mag": 5.0, "class": "b", "weights": [1.0]}]},
        {"arch": "maxmil", "attention": [{"mag": 5.0, "class": "c", "weights": [1.0]}]},
    ]
    name = attention.score_name(*rows)
    assert name == "per-patch probability of a class (each slide's predicted class)"
    assert attention.score_name(rows[0]).endswith("(class b)")
    assert attention.score_name({"arch": "abmil", "attention": []}) == "attention"


def attention_rows(
    make_slide, root: Path, ids: list[str], width: int | list[int], mags: list[float]
) -> Path:
    """A sheet and one `zoommil predict` JSON per slide id (512 px high, ``width`` wide, or
    each its own), with attention at ``mags`` and a region zoomed into at each but the lowest;
    returns the sheet."""
    classes = ["normal", "atypia", "carcinoma"]
    lines = ["slide_id\tpath\tlabel\tsplit"]
    widths = width if isinstance(width, list) else [width] * len(ids)
    for k, (slide_id, width) in enumerate(zip(ids, widths, strict=True)):
        slide = make_slide(f"{slide_id}.tiff", width=width, height=512, mpp=1.0, levels=2, seed=k)
        lines.append(f"{slide_id}\t{slide}\t{classes[k % 3]}\ttest")
        entries, selected = [], []
        for mag in mags:
            side = int(64 * 10 / mag)
            xy = [[x, y] for y in range(0, 512 - side + 1, side) for x in range(0, width, side)]
            weights = [(i * 7 % 5) / 5 for i in range(len(xy))]
            entries.append({"mag": mag, "side0": side, "xy": xy, "weights": weights})
            if mag > mags[0]:
                selected.append({"mag": mag, "side0": side, "xy": [[0, 0]]})
        prediction = {"arch": "zoommil", "predicted": "carcinoma", "attention": entries}
        (root / f"{slide_id}.json").write_text(json.dumps({**prediction, "selected": selected}))
    (root / "usable.tsv").write_text("\n".join(lines) + "\n")
    return root / "usable.tsv"


def pdf_pages(path: Path) -> list[tuple[float, float]]:
    """Width and height in inches of each page of a PDF (its MediaBoxes)."""
    import re

    boxes = re.findall(rb"/MediaBox \[([^\]]*)\]", path.read_bytes())
    return [
        ((float(x1) - float(x0)) / 72, (float(y1) - float(y0)) / 72)
        for x0, y0, x1, y1 in (box.split() for box in boxes)
    ]


@pytest.mark.parametrize(
    ("ids", "width", "mags", "n_pages"),
    [
        (["demo_000", "demo_001", "demo_002"], 704, [5.0, 10.0], 1),  # the demo's 4:3, 3 columns
        # the paper's BRIGHT setting (4 columns), wide slides with long TCGA ids
        ([f"TCGA-CR-7395-01A-01-TS{k}" for k in range(3)], 1152, [1.25, 2.5, 10.0], 1),
        # 3 portrait slides (biopsies) drew 10.6 in tall: narrower, on one page
        (["b0", "b1", "b2"], 400, [5.0, 10.0], 1),
        # figures.attention.n_slides: 12 drew one figure 21 in tall: pages of what fits 9 in
        ([f"demo_{k:03d}" for k in range(12)], 704, [5.0, 10.0], 3),
        # a biopsy 5 times as tall as wide drew its row alone 12.3 in tall: narrower still,
        # alone and on a page of its own after others (4 columns)
        (["strip"], 100, [5.0, 10.0], 1),
        ([*(f"demo_{k:03d}" for k in range(6)), "strip"], [704] * 6 + [100], [1.25, 2.5, 10.0], 3),
    ],
)
def test_figure_4_fits_a_two_column_page_without_bands_between_rows(
    make_slide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids, width, mags, n_pages
) -> None:
    """Figure 4 was 8.6 x 7.7 in (its 7-8 pt text printed at ~6 pt on a 7.1 in page) with
    empty bands between its rows (a fixed figsize around maps of fixed aspect). At most
    7.1 x 9 in a page (more rows go on further pages of the PDF, each saying which slides it
    holds), text at 7-9 pt, no two texts touching nor a text over a map, the maps filling
    their panels' width, rows a few points apart; a footnote under the colour bar."""
    from matplotlib.text import Text

    sheet = attention_rows(make_slide, tmp_path, ids, width, mags)
    from matplotlib.figure import Figure

    saved: dict[int, Any] = {}  # every page saved, once (a page goes to the PDF and the PNG)
    real_save = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *args, **kwargs: (
            saved.setdefault(id(fig), fig),
            real_save(fig, *args, **kwargs),
        ),
    )
    predictions = [tmp_path / f"{slide_id}.json" for slide_id in ids]
    layout = figure_attention.attention_figure(
        predictions,
        sheet,
        [tmp_path / "f.pdf", tmp_path / "f.png"],
        "zoommil",
        "demo",
        "random",
        "uni",
        wanted=len(ids) + 1,
    )
    drawn = list(saved.values())
    pages = pdf_pages(tmp_path / "f.pdf")
    for page_width, page_height in pages:
        assert page_width <= 7.1 and page_height <= 9.0, (page_width, page_height)
    assert layout["rows"] == len(ids) and layout["footnotes"] and not layout["colorbar_overlaps"]
    assert [slide for slide, _ in layout["slides"]] == ids  # each once, in order
    assert layout["pages"] == len(drawn) == len(pages) == n_pages
    assert sum(layout["page_rows"]) == len(ids)
    first = 0
    for number, (fig, n_rows) in enumerate(zip(drawn, layout["page_rows"], strict=True), 1):
        shown = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        sizes = {t.get_fontsize() for t in shown}
        assert min(sizes) >= 7 and max(sizes) <= 9
        notes = [t.get_text() for t in fig.texts if "slides asked for" in t.get_text()]
        if len(drawn) > 1:  # each page says which slides it holds
            assert (
                f"page {number} of {len(drawn)}: slides {first + 1}-{first + n_rows} " in (notes[0])
            )
        first += n_rows
        fig.draw_without_rendering()
        boxes = text_boxes(fig)
        # title, footnote, column titles, row labels, colour bar label and its two ticks
        assert len(boxes) == 2 + 1 + len(mags) + n_rows + 1 + 2
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1 :]:
                assert not box_a.overlaps(box_b), (a, b)
        maps = [ax for ax in fig.axes if ax.images]
        assert len(maps) == n_rows * (1 + len(mags))
        for name, box_t in boxes:
            assert not any(box_t.overlaps(ax.get_window_extent()) for ax in maps), name
        rows = [
            [ax for ax in maps if ax.get_subplotspec().rowspan.start == r] for r in range(n_rows)
        ]
        for row in rows:
            for ax in row:  # the map fills the width of its panel (no band beside it either)
                cell, active = ax.get_position(original=True), ax.get_position()
                assert active.width >= 0.98 * cell.width
        for upper, lower in zip(rows, rows[1:], strict=False):
            gap = upper[0].get_position().y0 - lower[0].get_position().y1
            assert 0 <= gap <= 0.15 * upper[0].get_position().height


def _captured(module: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures ``module`` saves through its ``name`` (save_figure, save_pages), kept for
    reading their artists back; the files are still written."""
    kept: list[Any] = []
    save = getattr(module, name)

    def keep(figs: Any, outputs: Any) -> None:
        kept.extend(figs if isinstance(figs, list) else [figs])
        save(figs, outputs)

    monkeypatch.setattr(module, name, keep)
    return kept


def test_figure_3_source_csv_holds_every_point_it_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figure 3's numbers (the GPU throughput, both error bars) were in the image only: a
    journal's source data and a reader who cannot see the figure had nothing. The CSV beside
    it has one row per drawn point, with the values the markers and bars are drawn at, read
    back here from the figure's artists."""
    kept = _captured(figure_throughput, "save_figure", monkeypatch)
    methods = ["zoommil", "abmil", "maxmil"]
    runs = {
        "zoommil": write_run(tmp_path, "zoommil", 2.0, [True, True, False, True, True, False]),
        "abmil": write_run(tmp_path, "abmil", 4.0, [True, False, False, False, True, True]),
        "maxmil": write_run(tmp_path, "maxmil", 6.0, [True] * 6),  # no CI: no y bar
    }
    timings: dict[str, list[Path]] = {"cpu1": [], "gpu": []}
    for method, (_, cpu1) in runs.items():
        record = json.loads(cpu1.read_text())
        if method != "maxmil":  # per-slide times: an x bar; maxmil's bare value has none
            seconds = record["seconds_per_slide"]
            record["per_slide"] = [
                {"slide_id": "t0", "seconds": seconds * 0.8, "pid": 1},
                {"slide_id": "t1", "seconds": seconds * 1.2, "pid": 1},
            ]
        cpu1.write_text(json.dumps(record))
        gpu = cpu1.with_name("throughput_gpu.json")
        speed = {**record, "device_name": "Test GPU", "threads": None, "precision": "bf16"}
        speed["per_slide"] = [
            {**r, "seconds": r["seconds"] / 10} for r in record.get("per_slide", [])
        ]
        speed.update(seconds_per_slide=record["seconds_per_slide"] / 10)
        speed.update(slides_per_hour=3600 / speed["seconds_per_slide"])
        gpu.write_text(json.dumps(speed))
        timings["cpu1"].append(cpu1)
        timings["gpu"].append(gpu)
    source = tmp_path / "throughput.csv"
    figure_throughput.throughput_figure(
        [run[0] for run in runs.values()], timings, methods, [tmp_path / "f.png"], "demo",
        "random", source=source,
    )  # fmt: skip
    table = pd.read_csv(source)
    assert list(table.columns) == [*figure_throughput.SOURCE_COLUMNS, "notes"]
    assert len(table) == 6 and set(table["device"]) == {"cpu1", "gpu"}
    assert table["notes"].str.contains("random encoder weights").all()
    colour_of = {s["color"]: m for m, s in figure_throughput.method_styles(methods).items()}
    (fig,) = kept
    seen = 0
    for ax in fig.axes:
        if not ax.containers:
            continue
        panel = table[table["panel"] == ax.get_title().split("\n")[0]].set_index("method")
        assert len(panel) == len(ax.containers) == 3
        for container in ax.containers:
            marker = container.lines[0]
            row = panel.loc[colour_of[marker.get_color()]]
            assert marker.get_xdata()[0] == row["slides_per_hour"]
            assert marker.get_ydata()[0] == pytest.approx(row["weighted_f1_pct"], abs=1e-12)
            (x0, _), (x1, _) = container.lines[2][0].get_segments()[0]
            if np.isnan(row["slides_per_hour_low"]):
                assert x0 == x1 == row["slides_per_hour"]
            else:
                assert (x0, x1) == pytest.approx(
                    (row["slides_per_hour_low"], row["slides_per_hour_high"])
                )
            assert container.has_yerr == (not np.isnan(row["weighted_f1_pct_ci_low"]))
            if container.has_yerr:
                (_, y0), (_, y1) = container.lines[2][1].get_segments()[0]
                ci = (row["weighted_f1_pct_ci_low"], row["weighted_f1_pct_ci_high"])
                assert (y0, y1) == pytest.approx(ci)
            else:
                assert (
                    row["no_ci_reason"] == "every resample of the test slides gives the same value"
                )
            seen += 1
    assert seen == 6
    gpu_rows = table[table["device"] == "gpu"].set_index("method")
    assert gpu_rows.loc["zoommil", "slides_per_hour"] == pytest.approx(3600 / 0.2)
    assert gpu_rows.loc["zoommil", "device_name"] == "Test GPU"
    assert gpu_rows.loc["zoommil", "n_timed_slides"] == 2
    assert table.set_index(["device", "method"])["on_frontier"].to_dict() == {
        (d, m): m != "abmil" for d in ("cpu1", "gpu") for m in methods
    }


def test_figure_3_without_timings_says_so_in_its_source_csv(tmp_path: Path) -> None:
    zoom = write_run(tmp_path, "zoommil", 2.0, [True, False, True])
    gpu = zoom[1].with_name("throughput_gpu.json")
    gpu.write_text(json.dumps({"skipped": "no CUDA device"}))
    source = tmp_path / "throughput.csv"
    figure_throughput.throughput_figure(
        [zoom[0]], {"gpu": [gpu]}, ["zoommil"], [tmp_path / "f.png"], "demo", "random",
        source=source,
    )  # fmt: skip
    table = pd.read_csv(source)
    assert len(table) == 1 and table.drop(columns="notes").isna().all(axis=None)
    assert "GPU: not timed (no CUDA device)" in table.loc[0, "notes"]


def test_figure_4_source_csv_holds_every_region_it_draws(
    make_slide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figure 4's slides, predictions and regions per zoom step were in the image only. The
    CSV beside it has every painted patch with its score and the colour value drawn (read
    back from the map's pixels) and the boxes of the regions zoomed into, by step."""
    kept = _captured(figure_attention, "save_pages", monkeypatch)
    slide = make_slide("t0.tiff", width=1024, height=768, mpp=1.0, levels=2)
    sheet = tmp_path / "usable.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\nt0\t{slide}\tb\ttest\n")
    prediction = {
        "slide_id": "t0",
        "arch": "zoommil",
        "method": "zoommil",
        "predicted": "c",
        "probabilities": {"a": 0.1, "b": 0.2, "c": 0.7},
        "mpp": 1.0,
        "attention": [
            {"mag": 10.0, "side0": 256, "xy": [[0, 0], [256, 0]], "weights": [0.3, 0.7]},
            {
                "mag": 5.0,
                "side0": 512,
                "xy": [[0, 0], [512, 0], [0, 512]],
                "weights": [0.6, 0.1, 0.3],
            },
        ],  # fmt: skip
        # step 1 at 5x: one scored patch, one box over no scored patch
        "selected": [{"mag": 5.0, "side0": 512, "xy": [[0, 0], [512, 512]]}],
    }
    path = tmp_path / "t0.json"
    path.write_text(json.dumps(prediction))
    source = tmp_path / "attention.csv"
    figure_attention.attention_figure(
        [path], sheet, [tmp_path / "att.png"], "zoommil", "demo", "random", source=source
    )
    table = pd.read_csv(source)
    assert list(table.columns) == [*figure_attention.SOURCE_COLUMNS, "notes"]
    assert len(table) == 6
    assert set(table["slide_id"]) == {"t0"} and set(table["label"]) == {"b"}
    assert set(table["predicted"]) == {"c"} and set(table["predicted_probability"]) == {0.7}
    assert set(table["score_name"]) == {"pooling attention"}
    assert table["notes"].str.contains("random encoder weights").all()
    (fig,) = kept
    thumb_ax, map5, map10 = fig.axes[:3]
    assert "predicted c" in thumb_ax.get_ylabel()
    height, width = thumb_ax.get_images()[0].get_array().shape[:2]
    sx, sy = width / 1024, height / 768
    for ax, mag in ((map5, 5.0), (map10, 10.0)):
        heat = ax.get_images()[1].get_array()
        rows = table[(table["mag"] == mag) & table["score"].notna()]
        assert len(rows) == len(prediction["attention"][mag == 5.0]["xy"])
        for row in rows.itertuples():
            r = int((row.y0 + row.side0 / 4) * sy)  # inside the slide, past its edge too
            c = int((row.x0 + row.side0 / 4) * sx)
            assert float(heat[r, c]) == pytest.approx(row.score_scaled, abs=1e-6)
    boxes = {
        (round(p.get_x() / sx), round(p.get_y() / sy), round(p.get_width() / sx))
        for p in thumb_ax.patches
    }
    zoomed = table[table["zoom_step"].notna()]
    assert (
        boxes
        == {(r.x0, r.y0, r.side0) for r in zoomed.itertuples()}
        == {
            (0, 0, 512),
            (512, 512, 512),
        }
    )
    assert set(zoomed["zoom_step"]) == {1}
    assert zoomed.set_index("x0")["score"].isna().to_dict() == {0: False, 512: True}
    assert table.loc[table["score"] == 0.6, "score_scaled"].item() == 1.0


def test_figure_4_left_out_says_so_in_its_source_csv(tmp_path: Path) -> None:
    source = tmp_path / "attention.csv"
    figure_attention.attention_figure(
        [], tmp_path / "none.tsv", [tmp_path / "off.png"], None, "demo", "random", source=source
    )
    table = pd.read_csv(source)
    assert len(table) == 1 and table.drop(columns="notes").isna().all(axis=None)
    assert table.loc[0, "notes"].endswith(figure_attention.OFF)
