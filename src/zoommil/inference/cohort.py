"""Classify many slides: whole slides spread over single-threaded processes.

One slide with ``--threads N`` spreads its patch batches over N encoder processes, but a slide
also has serial parts (imports, tissue detection, tiling, the zoom steps between
magnifications) that leave cores idle. Slides are independent, so with several slides each
core classifies whole slides: ``min(N, slides)`` processes, each with its share of the threads
(one, once there are at least as many slides as cores) and its own reading, as `zoommil
profile --threads N` does. A slide that cannot be classified is a failure row naming the
reason (its outputs are removed, not left stale) and the others go on; a process that dies
takes only its own slide with it (`zoommil.processes.map_isolated`). What classifies a slide
is `Settings.classify_task`: a seed ensemble (`zoommil.inference.ensemble_run`) subclasses
`Settings` and is spread the same way; this module does not import it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoommil.errors import SlideCheckError, SlideError, ZoomMILError
from zoommil.features.encoder_pool import (
    AnyEncoder,
    set_encoder_threads,
)
from zoommil.features.extraction import default_workers
from zoommil.inference.predict import Predictor, local_encoder, make_encoder, predict_slide
from zoommil.inference.tiling_ahead import TilingAhead
from zoommil.io.atomic import write_text_atomic
from zoommil.io.jsonio import write_json
from zoommil.processes import ProcessDied, exit_with_parent, map_isolated, worker_logging
from zoommil.wsi.lattice import NO_TISSUE, Lattice
from zoommil.wsi.patches import ReaderPool


@dataclass(frozen=True)
class SlideTask:
    """One slide to classify and where its prediction JSON and attention map go (or None).
    ``stale``: where an earlier run's heatmap would be, for a checkpoint that makes none
    (MeanMIL, SparseConvMIL): removed with the slide's new JSON if the JSON it replaces has
    attention (`old_heatmap`), so that no attention map of another model lies beside it."""

    slide: str
    json: str | None = None
    heatmap: str | None = None
    stale: str | None = None

    @property
    def slide_id(self) -> str:
        return Path(self.slide).stem


@dataclass(frozen=True)
class Settings:
    """What every process needs to classify a slide like the others (all picklable)."""

    predictor: Predictor
    device: str = "cpu"
    precision: str | None = None
    batch_size: int | None = None
    mpp: float | None = None
    #: reader processes (``--workers``); None: the default, `default_workers` in this process
    #: and inline reading in each of several slide processes
    workers: int | None = None
    #: level-0 um/px of slides whose metadata has none (``--default-mpp``)
    default_mpp: float | None = None

    def classify_task(
        self,
        task: SlideTask,
        encoder: AnyEncoder,
        reader: ReaderPool,
        tiled: Lattice | None = None,
    ) -> dict[str, Any]:
        """One slide's row, its outputs written (`classify`). A subclass classifies otherwise
        (a seed ensemble, `zoommil.inference.ensemble_run`) and gets the same spreading over
        processes, failure rows and tiling ahead; ``predictor`` is then the one whose
        encoder and recipe the slides are encoded and tiled with."""
        return classify(self, task, encoder, reader, tiled)


def tasks_in_dir(
    slides: Sequence[str | Path], out_dir: str | Path, heatmaps: bool
) -> list[SlideTask]:
    """``OUT/<slide_id>.json`` (and ``.png`` with ``heatmaps``) for each slide; two slides with
    the same file stem would overwrite each other's outputs, so they are an error, as are
    stems differing only in case (one file on macOS and Windows file systems)."""
    seen: dict[str, str] = {}
    clashes = []
    tasks = []
    for slide in slides:
        stem = Path(slide).stem
        key = stem.casefold()
        if key in seen:
            ignoring = "" if Path(seen[key]).stem == stem else " (ignoring case)"
            clashes.append(f"{slide} and {seen[key]} share the slide_id {stem!r}{ignoring}")
            continue
        seen[key] = str(slide)
        png = str(Path(out_dir, f"{stem}.png"))
        json_path = str(Path(out_dir, f"{stem}.json"))
        tasks.append(
            SlideTask(str(slide), json_path, png, None)
            if heatmaps
            else SlideTask(str(slide), json_path, None, png)
        )
    if clashes:  # every one at once: a cohort with several would take as many tries
        raise ZoomMILError(
            f"{'; '.join(clashes)}: their outputs in {out_dir} would overwrite each other "
            "(ids are file names: run such slides into another --out-dir)"
        )
    return tasks


def read_record(task: SlideTask) -> dict[str, Any] | None:
    """The JSON object at a task's ``json`` path, or None (none there, unreadable, not an
    object)."""
    if not task.json or not Path(task.json).is_file():
        return None
    try:
        record = json.loads(Path(task.json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_not_another_slides(tasks: Sequence[SlideTask]) -> None:
    """Refuse to replace a prediction JSON that records another slide file (its quickhash,
    else its path): ``OUT/<slide_id>.json`` is named by the file stem, so a second run into
    the same folder with ``siteB/case1.tiff`` silently replaced ``siteA/case1.tiff``'s
    (review A). The same slide again (another checkpoint, or moved) is replaced as before."""
    taken = []
    for task in tasks:
        record = read_record(task)
        recorded = record.get("slide_path") if record is not None else None
        if not isinstance(recorded, str) or not isinstance(record.get("slide_quickhash"), str):
            continue  # an older version's JSON, or a failure marker: nothing says whose
        if Path(task.slide).is_file() and not describes_slide(record, task.slide):
            taken.append(f"{task.json} holds the prediction of {recorded}, not {task.slide}")
    if taken:
        raise ZoomMILError(
            f"{'; '.join(taken)}: use another --out-dir (outputs are named by file name)"
        )


def finished_rows(
    tasks: Sequence[SlideTask], checkpoint_sha256: str, tissue_version: int | None = None
) -> dict[int, dict[str, Any]]:
    """`--resume`: the tasks whose JSON (and heatmap, where one is wanted) an earlier run of
    the same checkpoint wrote with the same tissue detector version (``tissue_version``), as
    their rows, by task index.

    Why: a cohort's run stopped by Ctrl-C, a time limit or a node failure is restarted; as
    CLAM and TRIDENT skip slides already processed, the slides with a whole prediction are
    kept (outputs are written atomically, so one that exists is whole), and only the rest are
    classified. A JSON of another checkpoint, or one that cannot be read, is redone, and so
    is one of another slide: ``OUT/<slide_id>.json`` is named by the file stem, so
    ``cohB/slide_001.tiff`` would otherwise be given the prediction of ``cohA/slide_001.tiff``
    (`describes_slide`). JSONs of versions that did not record the slide's resolved path and
    quickhash are redone too: nothing says which slide they are of. So is a JSON of another
    detector version (none recorded: a zoommil from before the record): after an upgrade that
    changed the masks, the same checkpoint keeps other patches, and the table would mix
    predictions of two preprocessings (a Dec 5 zoommil's 28 patches beside this one's 27).
    """
    done = {}
    for index, task in enumerate(tasks):
        if task.heatmap and not Path(task.heatmap).is_file():
            continue
        record = read_record(task)
        if record is None or record.get("checkpoint_sha256") != checkpoint_sha256:
            continue
        if record.get("tissue_version") != tissue_version:
            continue
        if not isinstance(record.get("probabilities"), dict) or "predicted" not in record:
            continue
        if not describes_slide(record, task.slide):
            continue
        done[index] = ok_row(task, record, "kept from an earlier run (--resume)")
    return done


def describes_slide(record: dict[str, Any], slide: str | Path) -> bool:
    """Whether a prediction record is of the file ``slide``: the same OpenSlide quickhash
    where the record has one (a moved or copied slide is still the same slide), else (a
    format without quickhash) the same resolved path. A record without these keys (older
    versions) or a file that is gone or no longer opens is not: its slide is classified again.

    Cost: only slides with a JSON of this checkpoint are opened, and opening one hashes its
    header and smallest level (3-5 ms for the test SVS files; that level of a gigapixel scan
    is a few MB), so resuming 1000 slides takes seconds.
    """
    recorded_path = record.get("slide_path")
    recorded_hash = record.get("slide_quickhash")
    if not isinstance(recorded_path, str) or not isinstance(recorded_hash, str):
        return False
    if not Path(slide).is_file():
        return False
    if recorded_hash:  # a file without one (or that no longer opens) is another file
        return _quickhash(slide) == recorded_hash
    return recorded_path == str(Path(slide).resolve())


def _quickhash(slide: str | Path) -> str | None:
    """The OpenSlide quickhash of a slide file, "" where its format has none, None where it
    does not open."""
    import openslide

    from zoommil.wsi.slide import quickhash

    try:
        handle = openslide.OpenSlide(str(slide))
    except (openslide.OpenSlideError, OSError, ValueError):
        return None
    try:
        return quickhash(handle) or ""
    finally:
        handle.close()


def predict_slides(
    settings: Settings,
    tasks: Sequence[SlideTask],
    threads: int | None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Classify ``tasks``; returns the rows in input order plus how they were spread.

    ``threads`` on CPU: ``min(threads, len(tasks))`` processes when there are several slides,
    else this process with ``threads`` encoder processes (0/None: torch's default threads).
    ``on_row`` sees each row as its slide finishes (in finishing order).
    """
    device = torch.device(settings.device)
    processes = 1
    if device.type == "cpu" and threads and len(tasks) > 1:
        processes = min(int(threads), len(tasks))
    share = max(1, int(threads) // processes) if threads else 0  # torch threads per process
    start = time.perf_counter()
    rows: list[dict[str, Any]] = [{}] * len(tasks)  # each index is answered once
    bar = _bar(len(tasks), progress)
    if processes == 1:
        outcomes = _in_this_process(settings, tasks, threads)
    else:
        outcomes = map_isolated(
            _task_in_worker, tasks, processes, _init_worker, (settings, share, os.getpid())
        )
    for index, outcome in outcomes:
        row = outcome if isinstance(outcome, dict) else _failure(tasks[index], outcome.reason)
        if isinstance(outcome, ProcessDied):
            _remove_outputs(tasks[index])
        rows[index] = row
        if on_row:
            on_row(row)
        bar.update()
    bar.close()
    wall = time.perf_counter() - start
    ok = sum(r["status"] == "ok" for r in rows)
    return {
        "rows": rows,
        "processes": processes,
        "threads_per_process": share,
        "wall_seconds": wall,
        "slides_per_hour": 3600.0 * ok / wall if ok and wall > 0 else None,
        "failed": len(rows) - ok,
    }


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="slide", desc="predict", disable=not enabled)


def _in_this_process(
    settings: Settings, tasks: Sequence[SlideTask], threads: int | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """This process, with a reader process ahead of the encoder, a process tiling the next
    slides (`TilingAhead`) and, for ``threads`` > 1 on CPU, that many encoder processes
    sharing each slide's batches."""
    device = torch.device(settings.device)
    set_encoder_threads(device, threads)
    slides = [task.slide for task in tasks]
    workers = default_workers(device, threads) if settings.workers is None else settings.workers
    with (
        ReaderPool(workers) as reader,
        TilingAhead(
            settings.predictor.recipe, slides, settings.mpp, default_mpp=settings.default_mpp
        ) as ahead,
    ):
        reader.start()  # its start-up overlaps building the encoder
        with local_encoder(settings.predictor, device, settings.precision, threads) as runner:
            for index, task in enumerate(tasks):
                try:
                    tiled = ahead.get(index)
                except ZoomMILError as error:  # its tiling ahead failed: not tiled again
                    yield index, error_row(task, error)
                    continue
                yield index, settings.classify_task(task, runner, reader, tiled)


#: A worker process's settings (`_init_worker`) and its encoder, built at its first slide so
#: that a failure to build it is that slide's failure row.
_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings, threads: int, parent: int) -> None:
    exit_with_parent(parent=parent)
    worker_logging()
    _WORKER.clear()
    _WORKER["settings"] = settings
    torch.set_num_threads(threads)


def _task_in_worker(task: SlideTask) -> dict[str, Any]:
    settings: Settings = _WORKER["settings"]
    if "encoder" not in _WORKER:
        try:
            _WORKER["encoder"], _ = make_encoder(
                settings.predictor, device=settings.device, precision=settings.precision
            )
        except Exception as error:  # that slide's failure row
            return _failure(task, f"cannot build the encoder: {_one_line(error)}")
    if "reader" not in _WORKER:  # kept for the process's next slides (a start costs ~0.5 s);
        # its reader processes exit with this one. Default: each process reads inline
        _WORKER["reader"] = ReaderPool(settings.workers or 0).start()
    return settings.classify_task(task, _WORKER["encoder"], _WORKER["reader"])


def classify(
    settings: Settings,
    task: SlideTask,
    encoder: AnyEncoder,
    reader: ReaderPool,
    tiled: Lattice | None = None,
) -> dict[str, Any]:
    """Classify one slide and write its outputs; any error is the slide's failure row.
    ``tiled``: its lattice, if made ahead."""
    try:
        result = predict_slide(
            settings.predictor,
            task.slide,
            encoder,
            mpp=settings.mpp,
            batch_size=settings.batch_size,
            reader=reader,
            tiled=tiled,
            default_mpp=settings.default_mpp,
        )
        write_outputs(task, result)
    except Exception as error:  # one slide's failure never stops the others
        return error_row(task, error)
    return ok_row(task, result, result.get("tissue_note") or "")


def write_outputs(task: SlideTask, result: dict[str, Any]) -> None:
    """A classified slide's heatmap (where wanted and it has attention), then its JSON, with
    the heatmap of the earlier prediction the JSON replaces removed (`old_heatmap`)."""
    from zoommil.reporting.attention import save_heatmap

    # the heatmap first: the JSON is what --resume takes as "this slide is done", so a run
    # killed between the two must not leave a new JSON beside an older heatmap
    if task.heatmap and result["attention"]:
        save_heatmap(task.heatmap, task.slide, result)
    if heatmap := old_heatmap(task):
        heatmap.unlink(missing_ok=True)
    if task.json:
        write_json(task.json, result)


def error_row(task: SlideTask, error: Exception) -> dict[str, Any]:
    """The row of a slide that ``error`` stopped (its outputs removed): `NO_TISSUE` for a
    slide without tissue (not a failure to read it), else failed."""
    _remove_outputs(task)
    reason = error.reason if isinstance(error, SlideError) else _one_line(error)
    if isinstance(error, SlideCheckError) and error.status == NO_TISSUE:
        return _failure(task, reason, NO_TISSUE)
    return _failure(task, reason)


def ok_row(task: SlideTask, prediction: dict[str, Any], reason: str = "") -> dict[str, Any]:
    """A classified slide's row, from its prediction record (made now or read back)."""
    return {
        "slide_id": task.slide_id,
        "slide": task.slide,
        "status": "ok",
        "predicted": prediction["predicted"],
        "probabilities": prediction["probabilities"],
        "patches_encoded": int(prediction.get("patches_encoded") or 0),
        "seconds": prediction_seconds(prediction),
        "reason": reason,
        "pid": os.getpid(),
    }


def prediction_seconds(prediction: dict[str, Any]) -> float:
    """A prediction's ``seconds.total`` (from the slide file to the MIL head), the table's
    ``seconds``; 0 for a record without it. Why one quantity: the table's column also timed
    drawing the heatmap and writing the JSON, and differed from the JSON's total without a
    word; a kept slide (--resume) shows its earlier run's time, as if run once."""
    seconds = prediction.get("seconds")
    total = seconds.get("total") if isinstance(seconds, dict) else None
    return float(total) if isinstance(total, int | float) else 0.0


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(error, ZoomMILError):
        return detail or type(error).__name__
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _failure(task: SlideTask, reason: str, status: str = "failed") -> dict[str, Any]:
    """The row of a slide not classified: ``status`` ``failed``, or `NO_TISSUE`."""
    return {
        "slide_id": task.slide_id,
        "slide": task.slide,
        "status": status,
        "predicted": "",
        "probabilities": {},
        "patches_encoded": 0,
        "seconds": 0.0,
        "reason": reason,
        "pid": os.getpid(),
    }


def _remove_outputs(task: SlideTask) -> None:
    """A failed slide keeps no output of an earlier run: the folder says what this run found."""
    stale = old_heatmap(task)  # read before the JSON that says what it is goes
    for path in (task.json, task.heatmap, stale):
        if path:
            Path(path).unlink(missing_ok=True)


def old_heatmap(task: SlideTask) -> Path | None:
    """The heatmap of the earlier prediction this task's JSON replaces, if there is one:
    ``stale`` exists and the JSON beside it is a prediction of this slide with attention (a
    heatmap was drawn from it). Any other file of that name (a user's picture beside the
    slides) is not ours to remove."""
    if not task.stale or not task.json or not Path(task.stale).is_file():
        return None
    try:
        record = json.loads(Path(task.json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("attention"):
        if describes_slide(record, task.slide):
            return Path(task.stale)
    return None


def write_table(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    classes: Sequence[str],
    extra_columns: Sequence[str] = (),
    extra: Callable[[dict[str, Any]], list[str]] | None = None,
) -> Path:
    """``predictions.tsv``: one row per slide (status ok, failed or no_tissue), with the class
    probabilities of those classified and their JSON's ``seconds.total`` (`prediction_seconds`;
    0 for a slide not classified); ``extra_columns`` after those, each row's from ``extra``
    (a seed ensemble's spread)."""
    columns = ["slide_id", "status", "predicted", *(f"p_{c}" for c in classes)]
    columns += ["patches_encoded", "seconds", "reason", "slide", *extra_columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        probs = [f"{row['probabilities'][c]:.6f}" if row["probabilities"] else "" for c in classes]
        writer.writerow(
            [
                row["slide_id"],
                row["status"],
                row["predicted"],
                *probs,
                row["patches_encoded"],
                f"{row['seconds']:.2f}",
                row["reason"],
                row["slide"],
                *(extra(row) if extra is not None else ()),
            ]
        )
    return write_text_atomic(path, buffer.getvalue())
