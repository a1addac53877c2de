"""A model card (Mitchell et al., FAT* 2019) per method: one Markdown page saying what the
model is, what it was trained on, how well it did with what uncertainty, and where it is
known to fail.

Why from files only: a card travels with a checkpoint (`zoommil predict`, `share_checkpoint`)
and must say nothing the results do not. Every number is read from a file the workflow wrote
(the checkpoints, their metrics.json, `results/tables/`, `results/operating_points/`, the QC
table and the sheet), formatted as the tables format it; an input that is missing gives a
line "not available (why)" instead of an error. The one exception is what the recipe's tissue
detector is known to do (`DETECTOR_LIMITATIONS`): zoommil's own benchmarks on other slides,
said to be that in the card, not a measurement of this cohort. With ``for_sharing`` every
path is cut to its file name by `share_checkpoint`'s rules, so a card sent out names no folder
of the lab.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from zoommil.features.encoders.weight_files import sha256_file
from zoommil.interop.share_checkpoint import _is_path, _name, shareable_config
from zoommil.io.atomic import write_text_atomic
from zoommil.reporting.names import display_name
from zoommil.reporting.results import load_json
from zoommil.reporting.table_format import display_frame
from zoommil.reporting.table_frames import TIMING_HEADERS, zoommil_defaults

#: Each architecture's paper: (reference, BibTeX key in docs/citations.bib); the README's
#: Models table says the same (tests/test_model_card.py checks that they agree).
REFERENCES: dict[str, tuple[str, str | None]] = {
    "zoommil": ("Thandiackal et al., ECCV 2022", "thandiackal2022zoommil"),
    "maxmil": ("none: no paper of its own (ours follows the CLAM code's `MIL_fc`)", None),
    "meanmil": ("none: no paper of its own", None),
    "sparseconvmil": (
        "Lerousseau et al., MICCAI COMPAY workshop 2021 (PMLR 156)",
        "lerousseau2021sparseconvmil",
    ),
    "abmil": ("Ilse et al., ICML 2018", "ilse2018attention"),
    "clam_sb": ("Lu et al., Nature Biomedical Engineering 2021", "lu2021clam"),
    "transmil": ("Shao et al., NeurIPS 2021", "shao2021transmil"),
    "msmil": (
        "Hashimoto et al., CVPR 2020 (MS-DA-MIL; ours adapts its head)",
        "hashimoto2020msdamil",
    ),
    "dsmil": ("Li et al., CVPR 2021", "li2021dsmil"),
}

#: Measured facts of the README about a tissue detector (benchmarks/stain_shift.py and the
#: detector's own tests), listed when the recipe uses that detector.
DETECTOR_LIMITATIONS: dict[str, tuple[str, ...]] = {
    "gaussian": (
        "Stain and scanner shift (README, 'Stain and scanner colour shifts', "
        "benchmarks/stain_shift.py on two real slides): the Gaussian detector's absolute stop "
        "test (`background_gray`) tips on a small biopsy: a scan 10% darker added a region "
        "(mask +33-42%, Dice 0.82-0.86, demo recipe), and one of 20 white-balance tint samples "
        "at s 0.2 left the CAMELYON16 recipe with no tissue, so the slide was excluded.",
        "Small fragments (README, 'Why no histolab'): a tissue fragment alone on glass under "
        "~0.5 mm across is dropped by the Gaussian detector (a 300 um square); `otsu` finds it.",
    ),
    "otsu": (
        "Stain and scanner shift (README, 'Stain and scanner colour shifts'): `otsu` changed no "
        "patch under any perturbation measured, but its mask shrank by up to 19% (Dice 0.89) at "
        "tint or HED jitter s 0.2.",
    ),
}

RANDOM_WARNING = (
    "**Demo model, not for use.** Its features come from an encoder with *random* weights "
    "(an offline demo): its numbers are not a measure of the method, and it must not be used "
    "on patients' slides."
)


#: An absolute POSIX, home (``~/``, ``~user/``), Windows drive or UNC path inside a line of
#: text (up to a space: a folder name with one is cut exactly, as a known path).
_PATH = re.compile(r"(?<![\w.\\])(?:~[\w.-]*/|/|[A-Za-z]:\\|\\\\)[^\s|`'\",;()\]]+")


def without_paths(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every absolute path cut to its file name (`share_checkpoint`'s rule):
    the ``known`` ones (the checkpoints' and the sheet's) first, exactly, so that one with a
    space in a folder name (``/mnt/Lab Share/...``) is not cut at the space and its folders
    left in; then any other by `_PATH`."""
    for path in sorted({k for k in known if "/" in k or "\\" in k}, key=len, reverse=True):
        if _name(path):  # not a bare "/"
            text = text.replace(path, _name(path))
    return _PATH.sub(lambda m: _name(m.group(0)), text)


def known_paths(configs: Sequence[Mapping[str, Any]], sheet: str | Path | None) -> list[str]:
    """The paths a card for sharing may quote: the checkpoints' recorded ones (their config's
    and recipe's) and the slide sheet's, with its slides' (a QC reason in the tables' notes
    names the slide's file)."""
    found = [str(sheet)] if sheet is not None else []
    for config in configs:
        for value in [*config.values(), *(config.get("preprocessing") or {}).values()]:
            found += [value] if _is_path(value) else []
    if _exists(sheet) is not None:
        frame = _read_sheet(sheet)
        found += list(frame["path"]) if "path" in frame.columns else []
    return found


#: The timing devices as the card names them: the table's own header for `cpu` depends on
#: the processes x threads of the timing job, which its notes (in the card) give.
DEVICE_LABELS = {
    "cpu1": "CPU, 1 thread",
    "cpu": "CPU, the timing job's cores (processes x threads: the table's notes)",
    "gpu": "GPU",
}


def not_available(why: str) -> str:
    """The line a card prints for an input it does not have."""
    return f"not available ({why})"


@dataclass
class CardInputs:
    """The files one card is made from; any of them may be missing (None or absent)."""

    method: str
    checkpoints: Sequence[str | Path]
    metrics: Sequence[str | Path] = ()
    main_table: str | Path | None = None
    ablation_table: str | Path | None = None
    operating_points: str | Path | None = None
    qc_table: str | Path | None = None
    sheet: str | Path | None = None
    dataset: str | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)


def _exists(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None and Path(path).exists() else None


def _checkpoint(path: Path, for_sharing: bool) -> dict[str, Any]:
    from zoommil.training.checkpoint import load_checkpoint  # torch: only where a card is made

    config = load_checkpoint(path)[1]
    return shareable_config(config) if for_sharing else config


def _table_row(inputs: CardInputs) -> tuple[pd.DataFrame | None, str, str]:
    """(the method's row of main.csv or ablations.csv, its kind, why not found)."""
    why = "no results/tables/main.csv"
    for path, kind in ((inputs.main_table, "main"), (inputs.ablation_table, "ablations")):
        found = _exists(path)
        if found is None:
            continue
        table = pd.read_csv(found)
        row = table[table["method"].astype(str) == inputs.method].reset_index(drop=True)
        if len(row):
            return row, kind, ""
        why = f"{inputs.method} has no row in {found.name}"
    return None, "", why


def _fmt_mags(mags: Sequence[Any]) -> str:
    return " -> ".join(f"{float(m):g}x" for m in mags)


def _model_section(name: str, config: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    arch = str(config.get("arch", spec.get("arch", "?")))
    reference, key = REFERENCES.get(arch, ("none recorded for this architecture", None))
    lines = [
        "## Model",
        "",
        f"- Method: {name} (`{config.get('method', '?')}`), architecture `{arch}`",
    ]
    lines.append(
        f"- Reference: {reference}" + (f" (BibTeX `{key}`, docs/citations.bib)" if key else "")
    )
    lines.append(f"- Options: {dict(config.get('kwargs') or {}) or 'the defaults'}")
    lines.append(f"- Classes (in output order): {', '.join(map(str, config.get('classes', [])))}")
    untrained = config.get("untrained_classes") or []
    if untrained:
        lines.append(f"- Classes with no training slide: {', '.join(map(str, untrained))}")
    lines.append(f"- Magnifications the model reads: {_fmt_mags(config.get('mags') or [])}")
    lines.append(
        f"- Training: model selection by {_rec(config, 'selection')}, lr {_rec(config, 'lr')}, "
        f"weight decay {_rec(config, 'weight_decay')}, at most {_rec(config, 'epochs')} epochs "
        f"({_early_stopping(config)})"
    )
    return lines


def _early_stopping(config: Mapping[str, Any]) -> str:
    if "early_stopping" not in config:
        return "early stopping not recorded"
    patience = config["early_stopping"]
    return (
        f"early stopping after {patience} epochs without a better {_rec(config, 'selection')}"
        if patience
        else "no early stopping"
    )


def _rec(config: Mapping[str, Any], key: str) -> str:
    """A recorded value of the checkpoint, or says it is not recorded."""
    value = config.get(key)
    return "(not recorded)" if value is None else str(value)


def _preprocessing_section(config: Mapping[str, Any]) -> list[str]:
    recipe = config.get("preprocessing") or {}
    if not recipe:
        return [
            "## Encoder and preprocessing",
            "",
            not_available("the checkpoint records no preprocessing recipe"),
        ]
    weights = recipe.get("weights")
    text = f"`{weights}`" + (f" (seed {recipe.get('weights_seed')})" if weights == "random" else "")
    sha = recipe.get("weights_sha256") or not_available("no weights sha256 in the checkpoint")
    params = recipe.get("tissue_params") or {}
    version = recipe.get("tissue_version")
    lines = ["## Encoder and preprocessing", ""]
    arch = ", ".join(
        str(v) for v in (recipe.get("encoder_arch"), recipe.get("feature_dim")) if v is not None
    )
    lines.append(
        f"- Encoder: `{recipe.get('encoder', '?')}`"
        + (f" ({arch}-d)" if arch else "")
        + f", weights {text}, sha256 {sha}"
    )
    lines.append(f"- Feature precision: {recipe.get('precision', not_available('not recorded'))}")
    lines.append(
        f"- Feature magnifications: {_fmt_mags(recipe.get('mags') or [])}, patch "
        f"size {recipe.get('patch_size', '?')} px at each"
    )
    kwargs = config.get("kwargs") or {}
    if config.get("arch") == "zoommil":
        k = kwargs.get("k", zoommil_defaults().get("k"))
        lines.append(f"- K (patches zoomed into per zoom step): {k}")
    lines.append(
        f"- Tissue detector: `{recipe.get('tissue_method', '?')}`"
        + (f" version {version}" if version is not None else " (version not recorded)")
        + f", parameters {dict(params) or 'the defaults'}, tissue threshold "
        f"{recipe.get('tissue_threshold', '?')} (a parent patch's tissue fraction to keep it)"
    )
    return lines


def _count_table(frame: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    splits = [s for s in ("train", "val", "test") if s in set(frame["split"])]
    labels = [c for c in classes if c in set(frame["label"])] or sorted(set(frame["label"]))
    lines = ["| split | " + " | ".join(labels) + " | total |", "|---|" + "---|" * (len(labels) + 1)]
    for split in splits:
        part = frame[frame["split"] == split]
        counts = [int((part["label"] == c).sum()) for c in labels]
        lines.append(f"| {split} | " + " | ".join(map(str, counts)) + f" | {len(part)} |")
    return lines


def _data_section(inputs: CardInputs, classes: Sequence[str], metrics: list[dict]) -> list[str]:
    from zoommil.workflow.qc import exclusion_summary, read_tsv

    lines = ["## Training data", ""]
    sheet = _exists(inputs.sheet)
    lines.append(f"- Dataset: {inputs.dataset or not_available('no dataset name given')}")
    lines.append(f"- Slide sheet: {Path(inputs.sheet).name if inputs.sheet else 'not given'}")
    qc = _exists(inputs.qc_table)
    usable = None
    if qc is None:
        lines.append(f"- Slides per split and class: {not_available('no QC table')}")
    else:
        table = read_tsv(qc)
        usable = table[table["status"] == "ok"]
        lines += ["- Slides per split and class, after QC:", ""]
        lines += _count_table(usable, classes) + [""]
        lines.append(f"- Excluded by QC: {exclusion_summary(table)}")
    if sheet is None:
        lines.append(f"- Patients: {not_available('no slide sheet')}")
    else:
        lines += _patient_lines(sheet, usable)
    for record in metrics:
        n = record.get("n_slides") or {}
        lines.append(
            f"- Seed {record.get('seed')}: trained on {n.get('train', '?')} slides, validated "
            f"on {n.get('val', '?')}, tested on {n.get('test', '?')} "
            f"({record.get('n_excluded', 0)} left out by training)"
        )
    return lines


def _read_sheet(sheet: Path) -> pd.DataFrame:
    """The sheet's cells as strings, a .csv comma-separated as the workflow reads it (read as
    a TSV it was one column, and the card said it had no patient column)."""
    from zoommil.io.sheet import read_table

    return read_table(sheet).rename(columns=lambda c: str(c).strip())


def _patient_lines(sheet: Path, usable: pd.DataFrame | None) -> list[str]:
    """Patients per split of the sheet's slides (those QC kept, where known)."""
    frame = _read_sheet(sheet)
    if "patient" not in frame.columns:
        return [f"- Patients: {not_available('the sheet has no patient column')}"]
    where = "sheet"
    if usable is not None:
        frame = frame[frame["slide_id"].isin(set(usable["slide_id"].astype(str)))]
        where = "slides kept by QC"
    frame = frame.assign(pid=frame["patient"].str.strip().str.lower())
    named = frame[frame["pid"] != ""]
    counts = ", ".join(
        f"{s} {named.loc[named['split'] == s, 'pid'].nunique()}"
        for s in ("train", "val", "test")
        if (frame["split"] == s).any()
    )
    lines = [
        f"- Patients per split ({where}): {counts}; slides without a patient id: "
        f"{int((frame['pid'] == '').sum())}"
    ]
    shared = int((named.groupby("pid")["split"].nunique() > 1).sum())
    if shared:
        lines.append(f"- Patients with slides in more than one split: {shared}")
    return lines


def _performance_section(inputs: CardInputs) -> tuple[list[str], pd.DataFrame | None]:
    lines = ["## Test performance", ""]
    row, kind, why = _table_row(inputs)
    if row is None:
        return [*lines, not_available(why)], None
    devices = [d for d in TIMING_HEADERS if f"{d}_s_per_slide" in row.columns]
    shown = display_frame(row, kind, devices)
    source = "results/tables/main.csv" if kind == "main" else "results/tables/ablations.csv"
    n_seeds = row.get("n_seeds", pd.Series([math.nan]))[0]
    n_test, units = row.get("n_test", [math.nan])[0], row.get("n_test_units", [math.nan])[0]
    lines.append(
        f"From `{source}`: mean ± std over {_int(n_seeds)} seed(s), 95% CI over "
        f"{_int(n_test)} test slides ({_int(units)} resampling units) in brackets."
    )
    lines += ["", "| metric | value |", "|---|---|"]
    for column in ("Weighted F1 (%)", "Accuracy (%)", "AUC (%)"):
        lines.append(f"| {column} | {shown.loc[0, column]} |")
    notes = str(row.get("notes", pd.Series([""]))[0] or "")
    if notes and notes != "nan":
        lines += ["", "Notes of the table:", ""] + [f"- {n}" for n in notes.split(" | ")]
    return lines, row


def _int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def _efficiency_section(row: pd.DataFrame | None) -> list[str]:
    lines = ["## Efficiency", ""]
    if row is None:
        return [*lines, not_available("no table row")]
    devices = [d for d in TIMING_HEADERS if f"{d}_s_per_slide" in row.columns]
    shown = display_frame(row, "main" if "name" in row.columns else "ablations", devices)
    tflops = shown.loc[0, "TFLOPs"]
    lines.append(
        f"- TFLOPs per slide (mean ± std over the test slides): "
        f"{tflops if tflops != 'n/a' else not_available('no FLOP count')}"
    )
    for device in devices:
        value = shown.loc[0, TIMING_HEADERS[device]]
        rate = row.get(f"{device}_slides_per_hour", pd.Series([math.nan]))[0]
        label = f"{DEVICE_LABELS.get(device, device)} (s/slide, end to end from the slide file)"
        if value == "n/a":
            lines.append(f"- {label}: {not_available('not timed')}")
        else:
            # a table without the rate (an older one) gave "(nan slides/h)"
            per_hour = f" ({float(rate):.0f} slides/h)" if math.isfinite(float(rate)) else ""
            lines.append(f"- {label}: {value}{per_hour}")
    return lines


def _operating_points_section(
    inputs: CardInputs, classes: Sequence[str], seeds: Sequence[Any]
) -> list[str]:
    lines = ["## Validation operating points", ""]
    folder = _exists(inputs.operating_points)
    if len(classes) != 2:
        return [
            *lines,
            not_available(f"{len(classes)} classes: operating points are for binary tasks"),
        ]
    index = folder / "index.tsv" if folder is not None else None
    if index is None or not index.exists():
        return [*lines, not_available("no results/operating_points/index.tsv")]
    table = pd.read_csv(index, sep="\t", keep_default_na=False, na_values=[""])
    table = table[table["method"].astype(str) == inputs.method]
    if seeds:  # a card of some seeds' checkpoints (a shared copy) lists their points only
        table = table[table["seed"].astype(str).isin({str(s) for s in seeds})]
    if table.empty:
        return [*lines, not_available(f"index.tsv lists no point of {inputs.method}")]
    lines += [
        "Thresholds on P(" + str(classes[1]) + ") fixed on each seed's validation slides "
        "(`zoommil predict --operating-point`):",
        "",
        "| seed | target specificity | threshold | val sensitivity | val specificity |",
        "|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        threshold = (
            "n/a: " + str(r["reason"]) if pd.isna(r["threshold"]) else f"{r['threshold']:.4g}"
        )
        lines.append(
            f"| {r['seed']} | {r['target_specificity']:g} | {threshold} | "
            f"{_frac(r['val_sensitivity'])} | {_frac(r['val_specificity'])} |"
        )
    return lines


def _frac(value: Any) -> str:
    return "n/a" if pd.isna(value) else f"{100 * float(value):.1f}%"


def _checkpoint_section(rows: list[tuple[str, str, dict, dict]]) -> list[str]:
    lines = [
        "## Checkpoints",
        "",
        "| seed | file | sha256 | best epoch / run | zoommil version | git commit |",
        "|---|---|---|---|---|---|",
    ]
    for name, digest, config, record in rows:
        env = record.get("environment") or {}
        commit = env.get("zoommil_commit") or not_available(
            "no metrics.json" if not record else "not recorded"
        )
        lines.append(
            f"| {config.get('seed', '?')} | {name} | {digest} | {config.get('epoch', '?')} / "
            f"{config.get('epochs_run', '?')} | {config.get('zoommil_version', '?')} | {commit} |"
        )
    return lines


def _limitations(config: Mapping[str, Any], row: pd.DataFrame | None) -> list[str]:
    recipe = config.get("preprocessing") or {}
    items = []
    if recipe.get("weights") == "random":
        items.append("The encoder has random weights: a demo, not for use (see above).")
    if row is not None and "n_test" in row.columns and not pd.isna(row["n_test"][0]):
        items.append(
            f"Tested on {_int(row['n_test'][0])} slides: the 95% CIs above are the "
            "uncertainty that leaves (conditional on the trained models; the spread "
            "over seeds is the ± std)."
        )
    if config.get("untrained_classes"):
        items.append("No training slide of: " + ", ".join(config["untrained_classes"]) + ".")
    items += [
        f"{item} (Measured by zoommil's benchmarks on other slides, not on this cohort.)"
        for item in DETECTOR_LIMITATIONS.get(str(recipe.get("tissue_method")), ())
    ]
    if not items:
        return ["## Known limitations", "", "none measured"]
    return ["## Known limitations", "", *[f"- {item}" for item in items]]


def model_card(inputs: CardInputs, for_sharing: bool = False) -> str:
    """The card's Markdown text. ``for_sharing``: no path of this machine in it."""
    present = [Path(p) for p in inputs.checkpoints if Path(p).exists()]
    metrics = [load_json(p) for p in inputs.metrics if Path(p).exists()]
    by_seed = {r.get("seed"): r for r in metrics}
    recorded = [(p, _checkpoint(p, for_sharing=False)) for p in present]
    checkpoints = [(p, shareable_config(c) if for_sharing else c) for p, c in recorded]
    config = checkpoints[0][1] if checkpoints else {"method": inputs.method, **inputs.spec}
    name = display_name(inputs.method, inputs.spec)
    title = f"# Model card: {name}" + (f" ({inputs.dataset})" if inputs.dataset else "")
    lines = [title, ""]
    if (config.get("preprocessing") or {}).get("weights") == "random":
        lines += [f"> {RANDOM_WARNING}", ""]
    if not checkpoints:
        lines += [not_available("no checkpoint of " + inputs.method), ""]
    lines += _model_section(name, config, inputs.spec) + [""]
    lines += _preprocessing_section(config) + [""]
    classes = list(config.get("classes") or [])
    lines += _data_section(inputs, classes, metrics) + [""]
    performance, row = _performance_section(inputs)
    lines += performance + [""]
    seeds = [c.get("seed") for _, c in checkpoints if c.get("seed") is not None]
    lines += _operating_points_section(inputs, classes, seeds) + [""]
    lines += _efficiency_section(row) + [""]
    rows = [(p.name, sha256_file(p), c, by_seed.get(c.get("seed"), {})) for p, c in checkpoints]
    lines += _checkpoint_section(rows) + [""]
    lines += _limitations(config, row)
    text = "\n".join(lines) + "\n"
    if not for_sharing:
        return text
    return without_paths(text, known_paths([c for _, c in recorded], inputs.sheet))


def write_card(path: str | Path, inputs: CardInputs, for_sharing: bool = False) -> Path:
    """Write the card of ``inputs`` to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, model_card(inputs, for_sharing))
    return path
