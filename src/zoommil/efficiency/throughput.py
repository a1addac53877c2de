"""End-to-end inference time per slide, from the slide file (the paper's Figure 3).

Each slide goes through the whole path a user would run: tissue detection, tiling, reading,
encoding and the MIL head (`zoommil.inference.predict.predict_slide`). One warm-up slide is
run first and not counted (``warmup``, default 0) and the encoder always sees one untimed
batch first, so one-off costs (allocators, thread pools, kernel selection) do not land on the
first slide.

The slides are candidates in order: the first ``max_slides`` that can be read are timed, and
one that cannot (a `SlideError`, e.g. a file truncated after its features were made) is listed
with its reason while the next candidate takes its place (`SlideClaims`), so one bad slide
does not fail a timing while readable ones are left.

Methods that read the same patches (the all-patch baselines at one set of magnifications) are
timed together (`measure_shared_throughput`): each slide is tiled, read and encoded once and
every method is charged that pass plus its own head, which is the time it takes alone; timing
the identical encoding once per method only multiplied the benchmark's cost.

Cores on CPU: ``threads`` N means N single-threaded worker processes, each classifying whole
slides and reading its own patches (N cores in all; 1 is one core). Slides are independent,
so N processes scale with the cores where one process with N torch threads does not (small
batches, serial reading and the MIL head leave the extra threads idle). The worker processes
are started once per `zoommil profile` and time every group in turn
(`measure_groups_throughput`). On a GPU one process drives the device with reader processes
feeding it.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from zoommil.device import resolve_device, synchronize
from zoommil.efficiency.claims import init_manager
from zoommil.environment import cpu_model
from zoommil.errors import SlideError, ZoomMILError
from zoommil.features.extraction import default_batch_size, default_workers
from zoommil.inference.predict import (
    Predictor,
    check_shared_pass,
    make_encoder,
    predict_slide_shared,
    shared_pass_groups,
)
from zoommil.io.sheet import parse_mpp, read_sheet
from zoommil.processes import exit_with_parent, starmap_in_processes
from zoommil.training.checkpoint import load_checkpoint, recorded_path
from zoommil.wsi.patches import ReaderPool

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name (stated on Figure 3)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


class SlideClaims:
    """Hands out candidate slides (their indices) in order until ``target`` are held (timed
    or being timed); a slide that cannot be read is given back (`release`), so the next
    candidate takes its place. The timed slides are thus the first ``target`` readable ones
    whichever process reads them. Across worker processes ``state`` ([next index, held]) and
    ``lock`` are a manager's proxies; in one process, a list and a thread lock."""

    def __init__(self, n: int, target: int, state: Any = None, lock: Any = None) -> None:
        self.n, self.target = n, target
        self._state = [0, 0] if state is None else state
        self._lock = threading.Lock() if lock is None else lock

    def claim(self) -> int | None:
        """The next candidate's index, or None when enough are held or none is left."""
        with self._lock:
            index, held = self._state[0], self._state[1]
            if held >= self.target or index >= self.n:
                return None
            self._state[0], self._state[1] = index + 1, held + 1
            return index

    def release(self) -> None:
        """A claimed slide could not be read: its place goes to the next candidate."""
        with self._lock:
            self._state[1] = self._state[1] - 1


def measure_throughput(
    predictor: Predictor,
    slides: Sequence[tuple[str, str | Path]],
    device: torch.device,
    threads: int,
    precision: str | None = None,
    warmup: int = 0,
    mpp: dict[str, float] | None = None,
    batch_size: int | None = None,
    max_slides: int | None = None,
) -> dict[str, Any]:
    """Seconds per slide and slides per hour over the first ``max_slides`` (default all) of
    ``slides`` ((slide_id, path) pairs, candidates in order) that can be read.

    A slide that cannot be read (`SlideError`) is left out, listed under ``excluded_slides``
    with its reason, and the next candidate is timed in its place; the measurement fails only
    if no candidate can be read.
    """
    return measure_shared_throughput(
        [predictor], slides, device, threads, precision, warmup, mpp, batch_size, max_slides
    )[0]


def measure_shared_throughput(
    predictors: Sequence[Predictor],
    slides: Sequence[tuple[str, str | Path]],
    device: torch.device,
    threads: int,
    precision: str | None = None,
    warmup: int = 0,
    mpp: dict[str, float] | None = None,
    batch_size: int | None = None,
    max_slides: int | None = None,
) -> list[dict[str, Any]]:
    """`measure_throughput` of models that read the same patches, one record each: every
    slide is tiled, read and encoded once, and each model is charged that pass plus its own
    head (``shared_pass`` in the records names the models that shared it)."""
    return measure_groups_throughput(
        [predictors], slides, device, threads, precision, warmup, mpp, batch_size, max_slides
    )[0]


def cpu_processes(threads: int, slides: int) -> int:
    """Worker processes for ``threads`` cores and ``slides`` to time: no more processes than
    slides (a spare would only read a slide if one failed). Fewer slides than threads leave
    cores idle, so the timing is of fewer cores than asked: a warning says so (the records'
    ``processes`` and the tables and figures state the number used)."""
    processes = max(1, min(threads, slides))
    if processes < threads:
        log.warning(
            "%d slide(s) to time on %d threads: %d process(es) used, so %d core(s) stay idle "
            "and the timing is of %d core(s), not %d",
            slides,
            threads,
            processes,
            threads - processes,
            processes,
            threads,
        )
    return processes


#: A Unix socket's path holds 107 bytes, and multiprocessing puts the timing processes'
#: sockets at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX: 32 of them after TMPDIR.
SOCKET_FOLDER_MAX = 75


@contextmanager
def socket_folder(fallback: str = "/tmp") -> Iterator[None]:
    """Inside, multiprocessing's sockets go in a folder whose path fits a socket's.

    Why: the all-cores timing shares its slide claims through a manager and hands the models'
    tensors to its processes by file descriptor, each over a Unix socket in ``TMPDIR``; a
    ``TMPDIR`` of 76+ characters (a cluster job's scratch) stopped it with a traceback
    (``AF_UNIX path too long``). Such a ``TMPDIR`` is passed over for ``fallback`` (sockets
    only: no data goes there, and where it cannot be written the ``TMPDIR`` is kept); the
    processes started inside inherit the folder.
    """
    short = len(tempfile.gettempdir()) <= SOCKET_FOLDER_MAX
    if short or not os.access(fallback, os.W_OK | os.X_OK):
        yield
        return
    saved = tempfile.tempdir
    tempfile.tempdir = fallback
    try:
        multiprocessing.util.get_temp_dir()  # made now, in fallback; spawned processes take it
        yield
    finally:
        tempfile.tempdir = saved


def measure_groups_throughput(
    groups: Sequence[Sequence[Predictor]],
    slides: Sequence[tuple[str, str | Path]],
    device: torch.device,
    threads: int,
    precision: str | None = None,
    warmup: int = 0,
    mpp: dict[str, float] | None = None,
    batch_size: int | None = None,
    max_slides: int | None = None,
    progress: bool = False,
) -> list[list[dict[str, Any]]]:
    """`measure_shared_throughput` of each group of ``groups`` (models that share a pass, or
    one model), group after group, one list of records per group; ``progress``: a line on
    stderr per slide timed (from each process, so no bar).

    Why in one call: with N worker processes, the workers are started once and time every
    group in turn. Starting them per group (spawn, import torch, receive the models) cost ~5 s
    a group in the demo's all-cores timing job, outside any timed slide but inside the job.
    ``wall_seconds`` of a group is the longest any process spent on it (encoder set-up,
    warm-up and its slides); the start of the processes is outside every group's.

    ``slides`` are candidates: every group times the first ``max_slides`` (default all) that
    it can read (`SlideClaims`), each process taking the next candidate as it finishes one.
    """
    check_warmup(warmup)
    for predictors in groups:
        if len(predictors) > 1:
            check_shared_pass(predictors)
    mpp = mpp or {}
    slides = list(slides)
    target = len(slides) if max_slides is None else min(max_slides, len(slides))
    if device.type == "cuda":
        processes, workers = 1, default_workers(device, threads)
    else:
        processes, workers = cpu_processes(threads, target), 0
    jobs = [(slide_id, str(path), mpp.get(slide_id)) for slide_id, path in slides]
    if processes == 1:
        claims = [SlideClaims(len(jobs), target) for _ in groups]
        # the caller's settings survive the timing
        saved_threads, saved_cv2 = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(threads if device.type == "cuda" else 1)
        try:
            parts = [
                _measure_groups(
                    groups, jobs, claims, device, precision, warmup, workers, batch_size, progress
                )
            ]
        finally:
            torch.set_num_threads(saved_threads)
            cv2.setNumThreads(saved_cv2)
    else:
        with socket_folder(), _claims_manager() as manager:
            claims = [
                SlideClaims(len(jobs), target, manager.list([0, 0]), manager.Lock()) for _ in groups
            ]
            args = [(groups, jobs, claims, device, precision, warmup, 0, batch_size, progress)]
            args = [(os.getpid(), *args[0])] * processes
            parts = starmap_in_processes(_measure_groups_in_worker, args, processes)
    records = []
    for g, predictors in enumerate(groups):
        # per process: (rows, info, precision used, excluded, warm-ups, seconds) of this group
        timed = [part[g] for part in parts]
        rows = [r for t in timed for r in t[0]]
        info, used = timed[0][1], timed[0][2]
        excluded = {s: r for t in timed for s, r in t[3].items()}
        if not rows:
            raise ZoomMILError(
                "no slide could be profiled: " + "; ".join(f"{s}: {r}" for s, r in excluded.items())
            )
        wall = max(t[5] for t in timed)
        shared = [p.method for p in predictors] if len(predictors) > 1 else None
        records.append(
            [
                _summary(predictor, [r[i] for r in rows], device, threads, processes, workers, info)
                | {
                    "precision": used,
                    "warmup_slides": min(t[4] for t in timed),
                    "wall_seconds": wall,
                    "shared_pass": shared,
                    "excluded_slides": [{"slide_id": s, "reason": r} for s, r in excluded.items()],
                }
                for i, predictor in enumerate(predictors)
            ]
        )
    return records


def _claims_manager() -> SyncManager:
    """The started manager that shares the slide claims between the timing processes.

    Why its own start: a manager's server process has no watch on its parent, so when
    `zoommil profile` was killed outright (SIGKILL, the out-of-memory killer) it stayed, an
    orphan, forever; and a SIGTERM to the whole process group (``scancel``, ``kill -- -PGID``)
    killed it before the command shut it down, leaving its ``pymp-*`` socket folder in
    TMPDIR. It exits with its parent (`exit_with_parent`) and leaves SIGINT and SIGTERM to the
    command, which shuts it down on its way out.
    """
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(init_manager, (os.getpid(),))  # its own module: no torch in the manager
    return manager


def _measure_groups_in_worker(parent: int, *args: Any) -> list[tuple[Any, ...]]:
    """`_measure_groups` in a timing process, which exits once ``parent`` (the command, its
    pid passed down) is gone. Why: killed outright, the command left its timing processes
    timing the rest of the slides for nobody and then waiting on their task queue forever
    (~0.8 GB each, measured)."""
    exit_with_parent(parent=parent)
    return _measure_groups(*args)


def _summary(
    predictor: Predictor,
    rows: Sequence[dict[str, Any]],
    device: torch.device,
    threads: int,
    processes: int,
    workers: int,
    info: dict[str, Any],
) -> dict[str, Any]:
    """One model's record from its per-slide rows."""
    latency = float(np.mean([r["seconds"] for r in rows]))
    # with N processes slides overlap: the cohort takes the busiest process's time (start-up
    # excluded), so seconds per slide is that makespan / slides, not the mean latency
    busy: dict[int, float] = {}
    for r in rows:
        busy[r["pid"]] = busy.get(r["pid"], 0.0) + r["seconds"]
    makespan = max(busy.values())
    seconds = makespan / len(rows)
    return {
        "method": predictor.method,
        "arch": predictor.arch,
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "processes": processes,
        "threads_per_process": 1 if device.type == "cpu" else threads,
        "reader_processes": workers,
        "cpu_count": os.cpu_count(),
        "encoder": info.get("encoder"),
        "feature_dim": info.get("feature_dim"),
        "encoder_weights": info.get("weights"),
        "per_slide": list(rows),
        "seconds_per_slide": seconds,
        "latency_seconds": latency,
        "slides_per_hour": 3600.0 / seconds if seconds > 0 else None,
        "mean_patches_encoded": float(np.mean([r["patches_encoded"] for r in rows])),
        # device busy (encoding) vs waiting for the readers: a starved GPU shows here
        "encode_seconds": float(sum(r["phases"]["encode"] for r in rows)),
        "reader_wait_seconds": float(sum(r["phases"]["read"] for r in rows)),
        "torch_version": torch.__version__,
        "skipped": None,
    }


def _measure_groups(
    groups: Sequence[Sequence[Predictor]],
    jobs: Sequence[tuple[str, str, float | None]],
    claims: Sequence[SlideClaims],
    device: torch.device,
    precision: str | None,
    warmup: int,
    workers: int,
    batch_size: int | None,
    progress: bool = False,
) -> list[tuple[Any, ...]]:
    """`_measure` of each group over ``jobs``, in this process (also the body of each worker
    process): per group, its result plus the seconds this process spent on it."""
    out = []
    for predictors, group_claims in zip(groups, claims, strict=True):
        tic = time.perf_counter()
        result = _measure(
            predictors, jobs, group_claims, device, precision, warmup, workers, batch_size,
            progress,
        )  # fmt: skip
        out.append((*result, time.perf_counter() - tic))
    return out


def _measure(
    predictors: Sequence[Predictor],
    jobs: Sequence[tuple[str, str, float | None]],
    claims: SlideClaims,
    device: torch.device,
    precision: str | None,
    warmup: int,
    workers: int,
    batch_size: int | None,
    progress: bool = False,
) -> tuple[list[list[dict[str, Any]]], dict[str, Any], str, dict[str, str], int]:
    """Time the ``jobs`` this process claims (also the body of each worker process): per
    slide, one row per model; also the slides left out and the warm-ups run.

    Warm-up: the first ``warmup`` candidates that can be read, untimed (one that cannot is
    left out, and the next warms up instead)."""
    if device.type == "cpu":
        torch.set_num_threads(1)
        # OpenCV's blurs (tissue detection) and resizes took every core in the "CPU 1 thread"
        # timing, and N of them in each of the all-cores timing's N processes (review W)
        cv2.setNumThreads(1)
    for predictor in predictors:
        predictor.model.to(device)
    # timing only: the cost does not depend on the weights' values, so `--weights random`
    # may time a checkpoint of other (e.g. gated) weights; no prediction is kept
    encoder, info = make_encoder(
        predictors[0], device=device, precision=precision, check_weights=False
    )

    p = predictors[0].patch_size
    rows = []
    excluded: dict[str, str] = {}
    with ReaderPool(workers) as reader:
        reader.start()  # started during the encoder's warm-up, not in the first slide's time
        # at the batch size the slides use: a GPU's first batch of a new shape picks kernels
        batch = batch_size or default_batch_size(device)
        encoder.encode(np.full((batch, p, p, 3), 255, dtype=np.uint8))
        warmed, unreadable = 0, {}  # the warm-up's failures: excluded once a claim meets one
        for slide_id, path, slide_mpp in jobs:
            if warmed >= warmup:
                break
            try:
                predict_slide_shared(predictors, path, encoder, slide_mpp, batch_size, reader)
                warmed += 1
            except SlideError as error:
                unreadable[slide_id] = error.reason
        while (index := claims.claim()) is not None:
            slide_id, path, slide_mpp = jobs[index]
            if slide_id in unreadable:  # failed in the warm-up: its place goes to the next
                excluded[slide_id] = unreadable[slide_id]
                claims.release()
                continue
            synchronize(device)
            tic = time.perf_counter()
            try:
                results = predict_slide_shared(
                    predictors, path, encoder, slide_mpp, batch_size, reader
                )
            except SlideError as error:  # left out, listed; the next candidate takes its place
                excluded[slide_id] = error.reason
                claims.release()
                continue
            synchronize(device)
            elapsed = time.perf_counter() - tic
            if progress:
                names = "+".join(p.method for p in predictors)
                print(f"profile {names}: {slide_id} {elapsed:.1f} s", file=sys.stderr, flush=True)
            # the pass is everything but the heads; each model is charged it plus its head
            heads = [r["seconds"]["head"] for r in results]
            rows.append(
                [
                    {
                        "slide_id": slide_id,
                        "seconds": elapsed - sum(heads) + head,
                        "patches_encoded": result["patches_encoded"],
                        "phases": result["seconds"],
                        "pid": os.getpid(),
                    }
                    for result, head in zip(results, heads, strict=True)
                ]
            )
    return rows, info, encoder.precision, excluded, warmed


def check_warmup(warmup: int) -> None:
    """``--warmup``: a count of slides, 0 or more (a negative one sliced the slide list)."""
    if warmup < 0:
        raise ZoomMILError(f"--warmup must be at least 0, got {warmup}")


def profile_slides(
    sheet_path: str | Path, slides: Sequence[str] | None, split: str
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(slide_id, path) pairs that may be timed (``slides``, else the split's), in sheet
    order, and their sheet mpp. All of them, not the first ``--max-slides``: a slide found
    unreadable while timing is replaced by the next (`SlideClaims`)."""
    sheet = read_sheet(sheet_path)
    if slides:
        unknown = sorted(set(slides) - set(sheet["slide_id"]))
        if unknown:
            hint = _files_hint(sheet, unknown)
            raise ZoomMILError(f"{sheet_path}: unknown slide_id(s) {', '.join(unknown)}{hint}")
        sheet = sheet[sheet["slide_id"].isin(slides)]
    else:
        sheet = sheet[sheet["split"] == split]
    if sheet.empty:
        raise ZoomMILError(f"{sheet_path}: no slides to profile")
    if "path" not in sheet.columns:
        raise ZoomMILError(f"{sheet_path}: profiling reads the slides: the sheet needs a path")
    pairs = [(str(r.slide_id), str(r.path)) for r in sheet.itertuples()]
    mpp = {}
    if "mpp" in sheet.columns:  # empty, NA, NaN or none: the slide's own metadata
        for r in sheet.itertuples():
            value = parse_mpp(r.mpp, f"slide {r.slide_id}", sheet_path)
            if value is not None:
                mpp[str(r.slide_id)] = value
    return pairs, mpp


#: Extensions of the slide formats OpenSlide reads: a --slides value ending so is a file.
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm"}  # fmt: skip


def _files_hint(sheet: Any, unknown: Sequence[str]) -> str:
    """What to do where an unknown ``--slides`` value looks like a slide file (as `zoommil
    predict` takes them): --slides takes the sheet's ids, the sheet lists the files; the id of
    a file the sheet lists is named. "" where none looks like a file.

    Why: ``--slides ../path/slide.svs`` failed with only "unknown slide_id(s)"."""
    files = [value for value in unknown if _looks_like_file(value)]
    if not files:
        return ""
    paths = sheet.itertuples() if "path" in sheet.columns else []
    listed = {Path(r.path).resolve(): str(r.slide_id) for r in paths}
    ids = [f"{f} is {listed[Path(f).resolve()]!r}" for f in files if Path(f).resolve() in listed]
    named = f"; {', '.join(ids)}" if ids else ""
    return (
        f" (--slides takes the sheet's slide_id values, not slide files{named}; to time other "
        "files, list them in a sheet with columns slide_id, path, label, split and pass --sheet)"
    )


def _looks_like_file(value: str) -> bool:
    """A path (a folder separator), a slide format's extension, or a file that is there."""
    suffix = Path(value).suffix.lower()
    return "/" in value or os.sep in value or suffix in SLIDE_SUFFIXES or Path(value).is_file()


def profile_checkpoints(
    checkpoints: Sequence[str | Path],
    device: str = "auto",
    threads: int = 1,
    sheet: str | Path | None = None,
    slides: Sequence[str] | None = None,
    split: str = "test",
    max_slides: int = 3,
    warmup: int = 0,
    precision: str | None = None,
    weights: str | None = None,
    methods: Sequence[str | None] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`zoommil profile`: throughput of each checkpoint's method on the first ``max_slides``
    of a sheet's slides that can be read (an unreadable one is listed under
    ``excluded_slides`` and the next takes its place), one record per checkpoint, in order.
    ZoomMIL models are timed one by one; the other models are timed in groups that read the
    same patches (`shared_pass_groups`), one read-and-encode pass per slide per group, each
    model charged that pass plus its own head. The sheet is the first checkpoint's by default.

    Without a CUDA device, ``device="cuda"`` returns records with a ``skipped`` reason, so a
    workflow can ask for GPU timings on any machine.
    """
    if threads < 1:
        raise ZoomMILError(
            f"--threads must be a positive number or 'all' for timing, got {threads}"
        )
    if max_slides < 1:  # head(-1) dropped the last slide, head(0) said "no slides"
        raise ZoomMILError(f"--max-slides must be at least 1, got {max_slides}")
    check_warmup(warmup)
    methods = list(methods or [None] * len(checkpoints))
    if len(methods) != len(checkpoints):
        raise ZoomMILError(
            f"{len(checkpoints)} checkpoint(s) but {len(methods)} method name(s): give one "
            "name per checkpoint, in the same order"
        )
    configs = [load_checkpoint(c)[1] for c in checkpoints]
    names = [m or c.get("method", c["arch"]) for m, c in zip(methods, configs, strict=True)]
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return [{"method": name, "device": "cuda", "skipped": "no CUDA device"} for name in names]
    torch_device = resolve_device(device)
    sheet_path = sheet or recorded_path(
        configs[0], "sheet", "slide sheet", "--sheet", checkpoints[0], required=True
    )
    pairs, mpp = profile_slides(sheet_path, slides, split)
    predictors = []
    for checkpoint, name in zip(checkpoints, names, strict=True):
        predictor = Predictor.from_checkpoint(checkpoint, weights=weights, device=torch_device)
        predictor.method = name
        predictors.append(predictor)
    groups = shared_pass_groups(predictors)
    timed = measure_groups_throughput(
        [[predictors[i] for i in group] for group in groups],
        pairs,
        torch_device,
        threads,
        precision,
        warmup,
        mpp,
        max_slides=max_slides,
        progress=progress,
    )
    records: list[dict[str, Any]] = [{} for _ in predictors]
    for group, group_records in zip(groups, timed, strict=True):
        for i, record in zip(group, group_records, strict=True):
            records[i] = record
    return records
