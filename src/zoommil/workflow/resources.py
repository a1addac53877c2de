"""Memory and runtime the rules declare, from what drives them (encoder, processes, cache, slides).

Why: flat sizes fit one setting and killed the first attempt of another. The all-cores timing
job holds one encoder per worker process, so UNI on 10 workers needs ~21-30 GB where the
profiles gave 16; `cache: auto` keeps up to `cache_max_gb` of bags in memory, above the train
rule's 8 GB; FLOPs counting takes a fixed time per test slide and method, so 300 test slides
with ablations outran 60 min. The rules call these functions from resource callables
(`workflow/rules/common.smk`), which Snakemake evaluates again just before a job is scheduled,
when its inputs (the QC tables, the feature manifest) exist. Resources are not rerun
triggers: a changed size reruns nothing.

Measured figures (2-core AMD EPYC, torch 2.14.1, fp32, one torch thread a process) come with
their source in a comment; where a figure was not measured, the comment says so.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from zoommil.cpus import MAX_GPU_READERS, gpu_readers
from zoommil.features.encoders.registry import get_spec
from zoommil.io.featurefile import FeatureFileWriter
from zoommil.training.config import TrainConfig

#: Peak RSS (MB) of one process that builds the encoder (random weights) and encodes two
#: batches of 4 patches on CPU at fp32: a features / predict / profile worker's fixed part.
#: Measured with `benchmarks/process_memory.py` (VmHWM; 707-714 and 1972-1978 MB over repeats).
ENCODER_PROCESS_MB = {
    "resnet50_layer3": 713,  # 8.5M parameters
    "uni": 1984,  # 303M
    "virchow2": 3265,  # 631M
    "h-optimus-0": 5241,  # 1.1B
}
#: For a registered encoder not measured above: ~650 MB (Python, torch, zoommil) + ~4.2 bytes
#: per parameter (fp32 weights plus their copies while loading), the line through the figures
#: above; the parameter count is the upper end of the card's published figure.
PROCESS_BASE_MB = 650
BYTES_PER_PARAMETER = 4.2

#: What a `zoommil features` process holds beyond its encoder at real size: the command's
#: process peaked at 973-992 MB with ResNet-50 (713) on 20x/40x slides (README "Measured at
#: real size"), +279 MB.
FEATURES_WORK_MB = 300
#: One reader process (no torch): 118-135 MB measured beside features (README, same table).
READER_PROCESS_MB = 150
#: What a timing (predict) process holds beyond its encoder, at least: the figure that held
#: for CAMELYON16-size bags (10^4 patches at 20x) with every head, above the sum below there.
PREDICT_WORK_MB = 1000
#: Its part that does not grow with the bag: one slide's tissue mask, lattice and reads (ABMIL
#: predict at real size peaked at 827-925 MB with ResNet-50: +212 MB with its bag and head,
#: docs/scale_runs.md).
PREDICT_SLIDE_MB = 212
#: The bag a preset implies before its feature files exist: a CAMELYON16-size slide has 10^4
#: patches of 256 px at 20x (docs/scale_runs.md); the count goes with the square of the
#: highest magnification over the patch side (4 x 10^4 at 40x).
REFERENCE_PATCHES, REFERENCE_MAG, REFERENCE_PATCH_SIZE = 10_000, 20.0, 256
#: MB a head's forward pass (inference mode, fp32, 1 thread) adds per 10^4 patches at the
#: highest magnification of [10x, 20x] bags of 1024-d features: the larger of its rates at
#: 10^4 and 4 x 10^4 patches (`benchmarks/head_memory.py`, peak RSS above the bag; TransMIL
#: 457-527 MB and 1677-1696 MB, and 534 MB at 10^4 measured by hand before). Linear in the
#: bag; an architecture not measured gets the largest rate.
HEAD_MB_PER_10K = {
    "transmil": 534, "dsmil": 118, "abmil": 92, "msmil": 90, "clam_sb": 63, "maxmil": 42,
    "meanmil": 41, "zoommil": 38, "sparseconvmil": 14,
}  # fmt: skip
#: `zoommil profile`'s own process with N worker processes: torch and the MIL heads, no
#: encoder (609 MB with two heads on the demo) + its multiprocessing manager and
#: resource tracker (32 MB).
PROFILE_MAIN_MB = 700
#: Host memory of a CUDA context and its pinned buffers: an allowance, not measured here
#: (no GPU on the machines these figures come from).
CUDA_HOST_MB = 1000

#: Peak RSS (MB) of `zoommil train` with bags read from disk (`cache: disk`: at most three in
#: memory), CAMELYON16-size bags (10^4 + 2,500 patches, 2048-d, 98 MB), 10-80 training slides,
#: 1 thread: 932-1373 for every method but TransMIL, whose step peaks at 2545
#: (docs/scale_runs.md).
TRAIN_STEP_MB = {"transmil": 2600}
TRAIN_STEP_DEFAULT_MB = 1400
#: What a feature file holds per patch beyond its D float32 features: (row, col) and (x, y) as
#: int64 (`zoommil.io.featurefile`), and at most a float32 tissue fraction.
ROW_EXTRA_BYTES = 36
#: A feature file's HDF5 metadata and provenance attributes, an upper bound: the demo's files
#: hold ~15 KB beside their rows.
FILE_OVERHEAD_BYTES = 2**20

#: Seconds `zoommil flops` takes per test slide and method at CAMELYON16 size (2,500 patches at
#: 10x + 10^4 at 20x), by architecture (`zoommil.efficiency.flops.checkpoint_flops` on two
#: feature files of that shape from `benchmarks/train_scale.write_slide`, 1 thread): ~13 s a
#: test slide for the 9 CAMELYON16 methods. Unmeasured architectures take FLOPS_DEFAULT_S,
#: above the 0.74 s a slide the other five took on average.
FLOPS_SECONDS_PER_SLIDE = {"zoommil": 1.8, "abmil": 0.6, "transmil": 6.1, "msmil": 0.8}
FLOPS_DEFAULT_S = 1.0
#: Process start, imports and checkpoint loads of the one flops job (~3.5 s + ~0.3 s a
#: method, workflow/rules/efficiency.smk), rounded up.
FLOPS_START_S = 30
#: The per-slide times are one CPU's; a cluster node may be slower.
FLOPS_MARGIN = 1.5


def encoder_process_mb(encoder: str) -> int:
    """Peak MB of one process that holds ``encoder``: measured where it was, else from the
    parameter count the registry publishes (the largest measured figure where it has none)."""
    spec = get_spec(encoder)
    if spec.name in ENCODER_PROCESS_MB:
        return ENCODER_PROCESS_MB[spec.name]
    published = spec.published_params_range()
    if published is None:
        return max(ENCODER_PROCESS_MB.values())
    return math.ceil(PROCESS_BASE_MB + BYTES_PER_PARAMETER * published[1] / 1e6)


def reader_processes(device: str, threads: int) -> int:
    """Reader processes of a features or timing job (`default_workers`): one beside a CPU
    encoder; on a GPU one per CPU of the job but one, at most 8. A one-thread job (the rule's
    own `threads: 1`) takes the CPUs it may use on its node, which the rule cannot see: 8."""
    if device != "cuda":
        return 1
    return MAX_GPU_READERS if threads <= 1 else gpu_readers(threads)


def features_mem_mb(
    encoder: str, threads: int, device: str = "cpu", workers: int | None = None
) -> int:
    """MB of a `zoommil features --threads N` job: on CPU N encoder processes (the command's
    own and N - 1 workers, `zoommil.features.encoder_pool`) and one reader process; on a GPU
    one encoder process and its readers. ``workers``: `--workers` where given
    (`features.args`), the reader processes it starts instead of the default's."""
    process = encoder_process_mb(encoder) + FEATURES_WORK_MB
    if workers is None:
        workers = reader_processes(device, threads)
    readers = max(0, workers) * READER_PROCESS_MB
    if device == "cuda":
        return process + readers + CUDA_HOST_MB
    return max(1, threads) * process + readers


def features_rule_mem_mb(encoder: str, threads: int, workers: int | None = None) -> int:
    """MB the features rule declares: a rule cannot see whether its job gets a GPU (the `gpu`
    resource a profile or the command line sets), so the larger of the CPU and GPU sizes. The
    CPU size is the larger with several threads (an encoder per thread); with the rule's one
    thread the GPU's, whose readers take the CPUs the job may use (with 8 of them, H-optimus-0
    needs 7741 MB against 5691 on CPU). ``workers``: `features.args`' `--workers`."""
    return max(features_mem_mb(encoder, threads, d, workers) for d in ("cpu", "cuda"))


def planned_patches(mags: Iterable[float], patch_size: int) -> float:
    """Patches at the highest of ``mags`` of a CAMELYON16-size slide (`REFERENCE_PATCHES`)."""
    scale = max(mags) / REFERENCE_MAG * REFERENCE_PATCH_SIZE / patch_size
    return REFERENCE_PATCHES * scale**2


def listed_patches(sizes: Iterable[int], encoder: str, mags: Iterable[float]) -> float:
    """Patches at the highest of ``mags`` in the largest of feature files of ``sizes`` bytes,
    at most: each row holds ``encoder``'s float32 features and two int64 pairs."""
    mags = list(mags)
    rows = max(sizes, default=0) / (4 * get_spec(encoder).dim + 32)
    return rows * max(mags) ** 2 / sum(m * m for m in mags)


def predict_work_mb(
    encoder: str, archs: Iterable[str], mags: Iterable[float], patches: float
) -> int:
    """MB a timing process holds beyond its encoder for a bag of ``patches`` at the highest of
    ``mags``: the slide's fixed part, the bag's features at every magnification twice (the
    encoded bag and the normalised copy a head gets) and the largest head's forward pass of
    ``archs`` (they run in turn); at least `PREDICT_WORK_MB`."""
    mags = list(mags)
    rows = patches * sum(m * m for m in mags) / max(mags) ** 2
    bag = 2 * rows * 4 * get_spec(encoder).dim / 2**20
    rate = max(HEAD_MB_PER_10K.get(a, max(HEAD_MB_PER_10K.values())) for a in archs)
    return max(PREDICT_WORK_MB, math.ceil(PREDICT_SLIDE_MB + bag + rate * patches / 1e4))


def profile_mem_mb(
    encoder: str, device: str, threads: int, n_slides: int, work_mb: int = PREDICT_WORK_MB
) -> int:
    """MB of a `zoommil profile` job (`zoommil.efficiency.throughput`): on CPU with one
    process, that process holds the encoder; with more, min(threads, n_slides) worker
    processes each hold their own, beside the command's process; on a GPU one process and
    its reader processes (`reader_processes`). ``work_mb``: what each timing process holds
    beyond its encoder (`predict_work_mb`)."""
    process = encoder_process_mb(encoder) + work_mb
    if device == "cuda":
        return process + reader_processes(device, threads) * READER_PROCESS_MB + CUDA_HOST_MB
    workers = max(1, min(threads, n_slides))
    return process if workers == 1 else workers * process + PROFILE_MAIN_MB


def train_mem_mb(
    arch: str,
    cache: str,
    cache_max_gb: float,
    feature_bytes: int | None = None,
    least_loaded: float | None = None,
) -> int:
    """MB of a `zoommil train` job: its step's peak plus the bags it keeps in memory.

    ``cache``: ``disk`` keeps none; ``auto`` keeps every bag when they fit in
    ``cache_max_gb`` GiB (`zoommil.training.trainer.load_splits`), so at most that, and none
    when they do not (every bag is then read from disk at each access); ``memory`` keeps them
    all. ``feature_bytes``: the usable feature files' size (the feature manifest, once QC
    wrote it), an upper bound on the bags (a bag in memory costs its bytes: +~100 MB RSS per
    98 MB bag, docs/scale_runs.md). ``least_loaded``: a lower bound of the bytes `load_splits`
    weighs against the cap (`least_loaded_bytes`); above the cap, ``auto`` keeps nothing.
    Unknown before QC: ``auto`` and ``memory`` are then sized at the cap.
    """
    step = TRAIN_STEP_MB.get(arch, TRAIN_STEP_DEFAULT_MB)
    cap = cache_max_gb * 1024
    beyond_cap = least_loaded is not None and least_loaded > cache_max_gb * 2**30
    if cache == "disk" or (cache == "auto" and beyond_cap):
        return step
    known = None if feature_bytes is None else feature_bytes / 2**20
    if cache == "memory":
        bags = cap if known is None else known
    else:
        bags = cap if known is None else min(cap, known)
    return math.ceil(step + bags)


def least_loaded_bytes(
    sizes: Iterable[int], encoder: str, read_mags: Iterable[float], mags: Iterable[float]
) -> float:
    """The least bytes of features `load_splits` can count for feature files of ``sizes``
    bytes with ``encoder``'s features at ``mags`` when a model reads ``read_mags`` of them: a
    file holds at most `file_slack_bytes` and `ROW_EXTRA_BYTES` a row beside its features, and
    magnification m has (m / m_lowest)^2 times the lowest one's rows (the quadtree contract)."""
    dim, mags = get_spec(encoder).dim, list(mags)
    share = sum(m * m for m in read_mags) / sum(m * m for m in mags)
    slack = file_slack_bytes(dim, len(mags))
    rows = sum(max(0, b - slack) for b in sizes) / (4 * dim + ROW_EXTRA_BYTES)
    return share * rows * 4 * dim


def file_slack_bytes(dim: int, n_mags: int) -> int:
    """What a feature file may hold beyond its rows: its metadata, and per magnification a
    last chunk of features stored whole however few of its rows are used (HDF5 allocates
    chunks of `FeatureFileWriter.CHUNK_ROWS` rows)."""
    return FILE_OVERHEAD_BYTES + n_mags * (FeatureFileWriter.CHUNK_ROWS - 1) * 4 * dim


def cache_settings(extra: Mapping[str, Any] | None) -> tuple[str, float]:
    """``cache`` and ``cache_max_gb`` of a train config whose further keys are ``extra``
    (`train.extra` in the workflow's config), `zoommil train`'s defaults where left out."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    extra = extra or {}
    cache = str(extra.get("cache", defaults["cache"]))
    return cache, float(extra.get("cache_max_gb", defaults["cache_max_gb"]))


def flops_runtime_min(n_test_slides: int, archs: Iterable[str]) -> int:
    """Minutes of the one flops job: every method counts every test slide."""
    per_slide = sum(FLOPS_SECONDS_PER_SLIDE.get(a, FLOPS_DEFAULT_S) for a in archs)
    return math.ceil(FLOPS_MARGIN * (FLOPS_START_S + n_test_slides * per_slide) / 60)


def rows_in_split(path: str | Path, split: str) -> int | None:
    """Rows of a slide table (a sheet, `results/qc/usable.tsv`) in ``split``; None where the
    file does not exist yet."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            return sum(row.get("split") == split for row in csv.DictReader(handle, delimiter="\t"))
    except FileNotFoundError:
        return None


def slides_in_split(path: str | Path, split: str) -> list[str]:
    """Slide ids of a slide table (`results/qc/usable.tsv`) in ``split``; none where the file
    does not exist yet."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            rows = csv.DictReader(handle, delimiter="\t")
            return [row["slide_id"] for row in rows if row.get("split") == split]
    except FileNotFoundError:
        return []


def listed_bytes(manifest: str | Path) -> int | None:
    """Total size of the feature files a feature manifest lists; None before QC wrote it."""
    sizes = listed_sizes(manifest)
    return None if sizes is None else sum(sizes.values())


def listed_sizes(manifest: str | Path) -> dict[str, int] | None:
    """Size of each feature file a feature manifest lists, by slide; None before QC wrote it."""
    try:
        with Path(manifest).open(newline="", encoding="utf-8") as handle:
            rows = csv.DictReader(handle, delimiter="\t")
            return {row["slide_id"]: int(row["bytes"] or 0) for row in rows}
    except FileNotFoundError:
        return None
