"""`zoommil predict`: classify one slide from its file, reading only what ZoomMIL zooms into."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from zoommil.commands.options import (
    add_device,
    add_encoder_threads,
    add_no_progress,
    add_precision,
    show_progress,
    weights_file,
)
from zoommil.errors import ZoomMILError, first_few
from zoommil.inference import operating_point
from zoommil.recipe import RANDOM_WEIGHTS_TAG, weights_note
from zoommil.wsi.mpp import MPP_RANGE_TEXT, plausible_mpp

if TYPE_CHECKING:  # torch and the predictor load only when a command runs
    import torch

    from zoommil.inference.predict import Predictor


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify slides by zooming (reads only the selected regions)",
        description=(
            "Classify slides with a trained checkpoint. ZoomMIL encodes the tissue patches of"
            " the lowest magnification, selects K, and reads and encodes only the descendants"
            " of the selected patches at each higher magnification (N_low + K*4^d1 + K*4^d2 +"
            " ... patches). Other models encode every tissue patch at their magnification(s)."
            " The preprocessing (patch size, tissue detector, encoder and its weights) is the"
            " one recorded in the checkpoint. Prints the class probabilities; --json writes "
            "them with the attention weights and, for ZoomMIL, the selected regions (level-0 "
            "coordinates); --heatmap draws each magnification's attention over the slide "
            "thumbnail, with a legend (MaxMIL: its per-patch probability of a class; MeanMIL "
            "and SparseConvMIL have none). Several slides (or --out-dir): with --threads N, "
            "min(N, slides) processes classify whole slides side by side, which uses N cores "
            "better than N encoder processes on one slide's batches (a slide has serial "
            "parts); in one process, a process of its own tiles the next slides while one is "
            "encoded. Exit 1 if any slide was not classified (status failed or no_tissue), 0 "
            "with --no-fail; 2 for a usage error, before any slide is classified (bad flags, "
            "two slides with one id, an --out-dir JSON of another slide); 130 when "
            "interrupted, 143 when terminated (scancel, a time limit; the slides finished so "
            "far are kept: rerun with --resume)."
        ),
    )
    parser.add_argument(
        "slides",
        type=Path,
        nargs="*",
        metavar="SLIDE",
        help="slide file(s), any OpenSlide format; several need --out-dir or are printed only",
    )
    parser.add_argument(
        "--slides-from",
        type=Path,
        action=SlidesFromFile,
        default=[],
        metavar="LIST",
        help="also the slides listed in LIST, one path per line (relative paths: to LIST's "
        "folder; blank lines and # comments skipped): a cohort too long for the command line "
        "in one run, so that predictions.tsv lists all of it",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        required=True,
        help="checkpoint.pt of zoommil train; repeat it for a seed ensemble (one method's "
        "seeds, same classes and preprocessing): the mean of their probabilities, with each "
        "one's and their spread (--heatmap, --operating-point: one checkpoint only)",
    )
    parser.add_argument("--json", type=Path, help="write the prediction JSON here (one slide)")
    parser.add_argument(
        "--heatmap",
        type=Path,
        help="write the attention map here (one slide; .png, .jpg, .jpeg, .tif, .tiff, .bmp or "
        ".webp)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help=(
            "any number of slides: write OUT/<slide_id>.json, OUT/<slide_id>.png (the "
            "attention map; every model but MeanMIL and SparseConvMIL) and "
            "OUT/predictions.tsv (one row per slide, status ok, failed or no_tissue, those "
            "not classified with the reason); a slide that is not classified does not stop "
            "the others. The table lists this run's slides: give a cohort in "
            "one run (--slides-from for a long list), not in batches into one folder"
        ),
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=(
            "with --out-dir: keep the slides whose OUT/<slide_id>.json (and .png) an earlier "
            "run of this checkpoint (or this set of them) wrote for the same slide file (its "
            "quickhash, else its path) with this zoommil's tissue detector version, and "
            "classify only the rest (after Ctrl-C, a time limit or a crash); predictions.tsv "
            "lists every slide. Rerun without it after "
            "changing --weights, --mpp, --default-mpp or --precision"
        ),
    )
    parser.add_argument("--mpp", type=float, help="level-0 um/px, overriding the slide metadata")
    parser.add_argument(
        "--default-mpp",
        type=float,
        help="level-0 um/px of the slides whose metadata has none (no plausible mpp, no "
        "objective power); the others keep theirs: a mixed cohort in one run (--mpp wins)",
    )
    parser.add_argument(
        "--slide-id",
        help="one slide: its id in the JSON and the output (default: the file name without "
        "its extension; the workflow passes the sheet's slide_id)",
    )
    parser.add_argument(
        "--weights",
        help=(
            "encoder weights (imagenet|hf|random|PATH); default: those recorded in the "
            "checkpoint. The encoder itself is the checkpoint's (its features' encoder), and "
            "weights whose sha256 differs from the one its training features record are refused"
        ),
    )
    parser.add_argument(
        "--operating-point",
        type=Path,
        metavar="FILE",
        help="a threshold fixed on the validation split for this checkpoint (binary models; "
        "results/operating_points/<method>/seed~<seed>/val_spec90.json): print and write the "
        "decision beside the probabilities; one --checkpoint only",
    )
    add_device(parser)
    add_precision(parser, None)
    add_encoder_threads(parser, default=1)  # several slides: see the description
    add_no_progress(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        help="patches per encoder batch (default: 4 on CPU, 64 on GPU: measured fastest)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="reader processes that read ahead of the encoder (0: read inline; default 1 on "
        "CPU; on GPU one per CPU but one, at most 8, the CPUs of --threads when above 1; with "
        "several slide processes, per process, default 0)",
    )
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help=(
            "for workflows: a slide that is not classified (unreadable: status failed; no "
            "tissue: no_tissue) gets a marker as --json and --heatmap (status, stage, reason; "
            "figures skip it with a note) and exit 0; with several slides, exit 0 although "
            "some were not classified (predictions.tsv lists them)"
        ),
    )
    parser.set_defaults(func=run, outputs=_outputs, inputs=_inputs, stage="predict")
    parser.set_defaults(slide_error_exit=1)  # one slide not classified: 1, as for several
    # Ctrl-C: what to do next (outputs are written atomically, so the finished ones are whole)
    parser.set_defaults(
        interrupted_hint="the same command with --resume keeps the slides already classified"
    )


def _outputs(args: argparse.Namespace) -> list[Path | None]:
    """What the CLI checks for writability first (and, for one slide with --no-fail, where
    the failure markers go)."""
    if args.out_dir is not None:
        return [args.out_dir / "predictions.tsv"]
    return [args.json, args.heatmap]


class SlidesFromFile(argparse.Action):
    """``--slides-from LIST``: the listed paths, read when the command line is parsed (so a
    missing or unreadable list is a usage error before any work)."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:  # noqa: ANN001
        try:
            lines = Path(value).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"--slides-from {value}: {getattr(error, 'strerror', None) or error}")
        from zoommil.workflow.slide_urls import url_scheme

        listed = [line.strip() for line in lines]
        paths = [
            Path(p) if url_scheme(p, Path(value).parent) else Path(value).parent / p
            for p in listed
            if p and not p.startswith("#")
        ]  # a URL stays one, for `_check_no_urls` to name
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *paths])


def _slides(args: argparse.Namespace) -> list[Path]:
    """The positional slides, then those of ``--slides-from``."""
    return [*args.slides, *args.slides_from]


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path | str | None]]:
    return [
        *(("slide", s) for s in _slides(args)),
        *(("checkpoint", c) for c in args.checkpoint),
        ("operating point", args.operating_point),
        ("weights file", weights_file(args.weights)),
    ]


def run(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise ZoomMILError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ZoomMILError(f"--workers must be >= 0, got {args.workers}")
    for flag, value in (("--mpp", args.mpp), ("--default-mpp", args.default_mpp)):
        if value is not None and not plausible_mpp(value):  # a usage error, before any slide
            raise ZoomMILError(f"{flag} {value:g} is outside the plausible range {MPP_RANGE_TEXT}")
    if args.heatmap is not None:
        from zoommil.reporting.attention import check_heatmap_path

        check_heatmap_path(args.heatmap)
    if args.resume and args.out_dir is None:
        raise ZoomMILError("--resume keeps the predictions of an --out-dir; give --out-dir")
    args.slides = _slides(args)
    if not args.slides:
        raise ZoomMILError("no slide given: name slide files, or a list with --slides-from")
    _check_no_urls(args.slides)
    folders = [str(s) for s in args.slides if s.is_dir()]
    if folders:
        from zoommil.workflow.slide_folders import dicom_advice

        advice = dicom_advice(folders[0]) or (
            f"pass its slides (e.g. {Path(folders[0]) / '*.svs'}) or list them with --slides-from"
        )
        raise ZoomMILError(f"{', '.join(folders)}: a folder, not a slide file; {advice}")
    if len(args.checkpoint) > 1:  # a seed ensemble: its own module
        from zoommil.inference.ensemble_run import run_ensemble

        return run_ensemble(args)
    args.checkpoint = args.checkpoint[0]
    if len(args.slides) > 1 or args.out_dir is not None:
        if args.slide_id is not None:
            raise ZoomMILError("--slide-id names one slide; with several or --out-dir each "
                               "slide's id is its file name")  # fmt: skip
        return _run_many(args)
    args.slide = args.slides[0]
    return _run_one(args)


def _check_no_urls(slides: list[Path]) -> None:
    """Refuse slides given as URLs (``s3://``, ``https://``) before the checkpoint is loaded:
    each was "slide file not found: <cwd>/s3:/bucket/x.svs", after loading it."""
    from zoommil.workflow.slide_urls import as_written, url_advice, url_scheme

    urls = [as_written(s) for s in slides if url_scheme(s)]
    if urls:
        more = f" (also {first_few(urls[1:])})" if len(urls) > 1 else ""
        raise ZoomMILError(f"{urls[0]}{more} is {url_advice(urls[0])}")


def load_predictor(args: argparse.Namespace, device: torch.device) -> Predictor:
    """`Predictor.from_checkpoint` of ``args.checkpoint``. Where it fails, a checkpoint
    trained on another tool's tissue masks is named as such (`check_detects_like_training`),
    in place of the recipe's "unknown tissue method 'unknown'"; the checkpoint is read for
    that only then, not a second time on every run."""
    from zoommil.inference.checkpoint_recipe import check_detects_like_training
    from zoommil.inference.predict import Predictor

    try:
        return Predictor.from_checkpoint(args.checkpoint, weights=args.weights, device=device)
    except ZoomMILError:
        check_detects_like_training(args.checkpoint)
        raise


def _run_one(args: argparse.Namespace) -> int:
    """One slide, errors raised (the CLI turns a `SlideError` into markers with --no-fail)."""
    from zoommil.device import resolve_device
    from zoommil.features.encoder_pool import set_encoder_threads
    from zoommil.features.extraction import default_workers
    from zoommil.inference.predict import local_encoder, predict_slide
    from zoommil.io.jsonio import write_json
    from zoommil.reporting.attention import save_heatmap
    from zoommil.wsi.patches import ReaderPool

    device = resolve_device(args.device)
    set_encoder_threads(device, args.threads)
    workers = default_workers(device, args.threads) if args.workers is None else args.workers
    with ReaderPool(workers) as reader:
        reader.start()  # its start-up overlaps loading the checkpoint and building the encoder
        predictor = load_predictor(args, device)
        point = operating_point.for_predictor(args.operating_point, predictor)
        if args.heatmap and not predictor.has_attention:  # before any slide is read
            raise ZoomMILError(
                f"--heatmap draws a model's attention over the patches: {args.checkpoint} "
                f"(arch {predictor.arch}) has none; use --json alone"
            )
        with local_encoder(predictor, device, args.precision, args.threads) as runner:
            result = predict_slide(
                predictor,
                args.slide,
                runner,
                mpp=args.mpp,
                batch_size=args.batch_size,
                progress=show_progress(args),
                reader=reader,
                default_mpp=args.default_mpp,
            )
    if args.slide_id is not None:
        result["slide_id"] = args.slide_id
    if args.heatmap and not result["attention"]:  # checked before the JSON is written
        raise ZoomMILError(f"{args.slide}: no attention to draw for --heatmap")
    decision = operating_point.describe(point, result["probabilities"]) if point else ""
    if point:
        operating_point.annotate(point, result)
    if args.json:
        write_json(args.json, result)
    if args.heatmap:
        save_heatmap(args.heatmap, args.slide, result)
    counts = json.dumps(result["patches_per_mag"])
    note = note_tail(result.get("tissue_note"))
    print(f"{summary_line(result)}{decision} {counts}{note}{random_tag(result['weights'])}")
    return 0


def summary_line(result: dict) -> str:
    probs = ", ".join(f"{c}={p:.3f}" for c, p in result["probabilities"].items())
    return (
        f"{result['slide_id']}: {result['predicted']} ({probs}); "
        f"{result['patches_encoded']} patches encoded"
    )


def note_tail(note: str | None) -> str:
    """A prediction's ``tissue_note`` after "; ", else nothing: the printed line of a slide
    classified from every patch (no tissue found on a crop too small for the detector) says
    so, not only a warning among the log lines and its JSON."""
    return f"; {note}" if note else ""


def random_tag(weights: str) -> str:
    """`RANDOM_WEIGHTS_TAG` after a space for random weights, else nothing: a printed
    prediction of random-weight features says so, as its JSON and heatmap do."""
    return f" {RANDOM_WEIGHTS_TAG}" if weights_note(weights) else ""


def _run_many(args: argparse.Namespace) -> int:
    """Several slides: each one's failure is a row, the others go on (see cohort.py)."""
    from zoommil.device import resolve_device
    from zoommil.inference.cohort import (
        Settings,
        SlideTask,
        check_not_another_slides,
        finished_rows,
        predict_slides,
        tasks_in_dir,
        write_table,
    )

    if args.json or args.heatmap:
        raise ZoomMILError(
            "--json and --heatmap name one slide's files; with several slides or --out-dir, "
            "use --out-dir alone"
        )
    device = resolve_device(args.device)
    predictor = load_predictor(args, device)
    point = operating_point.for_predictor(args.operating_point, predictor)
    if args.out_dir is not None:
        tasks = tasks_in_dir(args.slides, args.out_dir, heatmaps=predictor.has_attention)
        check_not_another_slides(tasks)
    else:
        tasks = [SlideTask(str(s)) for s in args.slides]
    settings = Settings(predictor, **settings_fields(args, device))

    def report(row: dict) -> None:
        if row["status"] == "ok":
            tag = note_tail(row["reason"]) + random_tag(predictor.recipe.weights)  # ok: the note
            if point:
                tag = operating_point.describe(point, row["probabilities"]) + tag
            print(summary_line(row) + tag, flush=True)
        else:
            print(f"zoommil predict: {row['slide']}: {row['reason']}", file=sys.stderr)

    kept = (
        finished_rows(tasks, predictor.checkpoint_sha256, predictor.tissue_version)
        if args.resume
        else {}
    )
    if kept:
        print(f"--resume: {len(kept)} of {len(tasks)} slides already classified, kept")
    todo = [i for i in range(len(tasks)) if i not in kept]
    summary = (
        predict_slides(settings, [tasks[i] for i in todo], args.threads,
                       progress=show_progress(args), on_row=report)
        if todo
        else {"rows": [], "failed": 0}
    )  # fmt: skip
    rows = [kept.get(i) for i in range(len(tasks))]
    for i, row in zip(todo, summary["rows"], strict=True):
        rows[i] = row
    if args.out_dir is not None:
        table = write_table(args.out_dir / "predictions.tsv", rows, predictor.classes)
        if point:
            operating_point.add_to_table(point, table, rows)
        print(f"wrote {table}")
    if not todo:
        print(f"--resume: all {len(rows)} slides were already classified; nothing to do")
        return 0
    print(run_summary(summary, len(todo), len(kept)))
    return exit_code(summary["rows"], len(rows), args.no_fail, summary["failed"])


def settings_fields(args: argparse.Namespace, device: torch.device) -> dict:
    """`cohort.Settings`' fields from the command line, but the predictor (one checkpoint's
    or a seed ensemble's, which adds its own)."""
    return {
        "device": str(device),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "mpp": args.mpp,
        "workers": args.workers,
        "default_mpp": args.default_mpp,
    }


def run_summary(summary: dict, todo: int, kept: int, models: str = "") -> str:
    """The last line of a several-slide run (`cohort.predict_slides`'s ``summary``): this
    run's ``todo`` slides only (a rate over the kept ones too was many times too high), how
    they were spread, and how many --resume kept. ``models``: e.g. "3 checkpoints" for a
    seed ensemble."""
    rate = summary["slides_per_hour"]
    by = f" by {models}," if models else " by"
    return (
        f"{todo - summary['failed']} of {todo} slides classified in "
        f"{summary['wall_seconds']:.1f} s"
        + (f" ({rate:.0f} slides/h)" if rate else "")
        + f"{by} {summary['processes']} process(es) x {summary['threads_per_process']} "
        f"thread(s)" + (f"; {kept} kept from an earlier run" if kept else "")
    )


def exit_code(done: list[dict], total: int, no_fail: bool, failed: int) -> int:
    """A several-slide run's exit status: 1 when some of this run's slides (``done``) were not
    classified, said on stderr; 0 with --no-fail (said too) or when every slide was."""
    if not failed:
        return 0
    print(
        f"zoommil predict: {not_classified(done, total)}"
        + (" (--no-fail: exit 0)" if no_fail else ""),
        file=sys.stderr,
    )
    return 0 if no_fail else 1


def not_classified(rows: list[dict], total: int) -> str:
    """'1 of 3 slides failed', or with other statuses than failed (a slide without tissue is
    not a failure to read it) '2 of 3 slides not classified (1 failed, 1 no_tissue)'."""
    counts = Counter(row["status"] for row in rows if row["status"] != "ok")
    n = sum(counts.values())
    if set(counts) == {"failed"}:
        return f"{n} of {total} slides failed"
    listed = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"{n} of {total} slides not classified ({listed})"
