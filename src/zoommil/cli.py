"""The `zoommil` command line: one subcommand per module in `zoommil.commands`.

Each command module defines `add_parser(subparsers)` (registers its arguments and sets
`func`) so the commands stay independent of each other. A command may also set `outputs`
(args -> the files it writes: checked for writability before any work), `inputs` (args ->
``(what, path)`` pairs of the files it reads: no output may name one, nor two outputs one
file; see `zoommil.io.clobber`) and `stage` (with a `--no-fail` flag: a `SlideError` writes
failure markers as those outputs and exits 0; see `zoommil.workflow.failure`).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from zoommil import __version__
from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.atomic import check_writable
from zoommil.io.clobber import check_distinct

#: How log records look, in the command's process and its worker processes.
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

COMMANDS = (
    "synth",
    "inspect",
    "tissue",
    "tile",
    "features",
    "train",
    "evaluate",
    "predict",
    "flops",
    "profile",
)


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The parser with ``commands`` registered (each one imports its module)."""
    parser = argparse.ArgumentParser(
        prog="zoommil",
        description=(
            "ZoomMIL benchmark tools: demo slides, slide inspection, tissue detection, "
            "aligned multi-magnification tiling, ResNet-50 features, MIL training, "
            "zoom inference and efficiency measurement."
        ),
    )
    parser.add_argument("--version", action="version", version=f"zoommil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        importlib.import_module(f"zoommil.commands.{name}").add_parser(subparsers)
    parser.set_defaults(command_parsers=subparsers.choices)  # for `parse_command_line`
    return parser


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    """``parser.parse_args``, but a flag the command does not take is the command's error,
    with the command's usage line (the top-level parser's showed `zoommil [-h] ... COMMAND`,
    none of the flags the user had mistyped one of); exit 2 either way."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = args.command_parsers[args.command]
        hint = (
            " (-v and --version go before the command)"
            if {"-v", "--verbose"} & set(unknown)
            else ""
        )
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def _outputs(args: argparse.Namespace) -> list[Path]:
    """The files a command will write (commands declare them with ``set_defaults(outputs=)``)."""
    outputs = getattr(args, "outputs", None)
    return [Path(p) for p in (outputs(args) if outputs else []) if p is not None]


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files a command reads, as ``(what, path)`` (``set_defaults(inputs=)``)."""
    inputs = getattr(args, "inputs", None)
    pairs = inputs(args) if inputs else []
    return [(what, Path(p)) for what, p in pairs if p is not None]


def _run(args: argparse.Namespace) -> int | None:
    """Run the command; a raw OpenSlide read error is retried once, then is a `SlideError`."""
    for attempt in range(2):
        try:
            return args.func(args)
        except Exception as error:
            if not type(error).__module__.startswith("openslide") or not hasattr(args, "slide"):
                raise
            if attempt:
                raise SlideError(args.slide, f"cannot read the slide ({error})") from None
            logging.getLogger("zoommil").warning(
                "%s: read error (%s); retrying once with a fresh handle", args.slide, error
            )
    return None


def _exclude(args: argparse.Namespace, error: SlideError) -> int | None:
    """With --no-fail: write failure markers as the command's outputs and exit 0."""
    if not getattr(args, "no_fail", False) or not getattr(args, "stage", None):
        return None
    from zoommil.workflow.failure import Failure, write_marker

    failure = Failure.from_error(error, args.stage)
    for path in _outputs(args):
        write_marker(path, failure)
    print(
        f"zoommil {args.command}: slide excluded ({failure.status} at {failure.stage}): {error}",
        file=sys.stderr,
    )
    return 0


def usage_line(command: str, started: tuple[float, float]) -> str:
    """Wall time since ``started`` (``perf_counter``, ``process_time``), the CPU time of this
    process and of the processes it waited for, and this process's peak memory.

    Why: it is each workflow job's record of what it used (for sizing `mem_mb`/`runtime` on a
    cluster), written into the job's log. Snakemake's ``benchmark:`` files recorded the same
    by sampling the job with psutil from Snakemake's own process: 23-33 ms per sample of a
    ~1 GB torch job, about 0.5 CPU-s per features or train job. The children's peak memory is
    not reported: Linux's ``RUSAGE_CHILDREN`` ``ru_maxrss`` of a child started by fork or
    vfork + exec includes this process's RSS at that moment (a training job's one
    ``ldconfig -p``, run by ``import torch``, showed as a 588 MB child). The encoder and
    reader processes of ``--threads``/``--workers`` are measured by sampling in
    ``benchmarks/scale.py``.
    """
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - started[1] + kids.ru_utime + kids.ru_stime
    return (
        f"zoommil {command}: {time.perf_counter() - started[0]:.1f} s wall, {cpu:.1f} CPU-s, "
        f"peak RSS {own_peak_rss_mb():.0f} MB"
    )


def own_peak_rss_mb() -> float:
    """This process's own peak RSS in MB: Linux's ``VmHWM``, the high-water mark of the memory
    this program mapped since its exec. ``RUSAGE_SELF``'s ``ru_maxrss`` (the fallback where
    there is no /proc) also keeps the RSS of the process that forked it: a job started by a
    1000-slide Snakemake process, or by a large pytest, reported that process's size as its
    own (4.1 GB for a `zoommil inspect` of ~100 MB), and cluster memory was sized by it."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log_usage(command: str, started: tuple[float, float]) -> None:
    try:
        logging.getLogger("zoommil.cli").info(usage_line(command, started))
    except ImportError:  # no `resource` module (not a Unix): nothing to record
        pass


@contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Commands set torch's thread count; an in-process caller (a test) keeps its own."""
    torch = sys.modules.get("torch")
    saved = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if saved is not None and torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


def named_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line, or None (no command, or an unknown one).

    Why: registering a command imports its module, ~0.3 s for `synth`'s painting code (and
    was ~0.5 s for `tissue` while it used SciPy); the workflow starts one `zoommil` process
    per slide and stage, so each registers only the command it runs. The global options
    take no value, so the first word that is not an option is the command.
    """
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    command = named_command(sys.argv[1:] if argv is None else argv)
    parser = build_parser((command,) if command else COMMANDS)
    args = parse_command_line(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
    )
    with _torch_threads_kept(), _sigterm_as_interrupt():
        return _main(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM: `scancel`, a SLURM time limit, a stopped workflow."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a command as Ctrl-C does (exit 143 instead of 130): its processes are
    stopped and its temporary files removed by the same clean-up, and it says what to rerun
    (predict: `--resume`). Before, it died at once with a bare "Terminated", leaving the
    reader processes' semaphores behind. Only in the main thread, the one that can set a
    handler; the previous handler is back afterwards (`main` called from Python)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _missing_folders(paths: Sequence[Path]) -> list[Path]:
    """The folders above ``paths`` that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for path in paths:
        folder = path.absolute().parent
        while folder != folder.parent and not folder.exists():
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda f: len(f.parts), reverse=True)


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _main(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors are one line and exit 2, a slide error may exclude
    (``--no-fail``) or exit with the command's ``slide_error_exit`` (predict: 1, as for a
    slide of several that is not classified)."""
    created: list[Path] = []  # output folders made by this run: removed again on a user error
    try:
        outputs = _outputs(args)
        check_distinct(outputs, _inputs(args))  # before anything is made or written
        created = _missing_folders(outputs)
        for path in outputs:  # an unwritable output fails now, not after the work
            check_writable(path)
        started = (time.perf_counter(), time.process_time())
        try:
            result = _run(args)
            log_usage(args.command, started)
        except SlideError as error:
            code = _exclude(args, error)
            if code is None:
                raise
            return code
    except ZoomMILError as error:
        _remove_empty(created)
        print(f"zoommil {args.command}: error: {error}", file=sys.stderr)
        # a slide that could not be processed: the command's own documented code, if any
        slide_code = getattr(args, "slide_error_exit", None)
        return int(slide_code) if isinstance(error, SlideError) and slide_code else 2
    except OSError as error:
        # An output or input fault the command did not anticipate: still one line.
        _remove_empty(created)
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        reason = error.strerror or str(error) or type(error).__name__
        print(f"zoommil {args.command}: error: {where}{reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        stopped = isinstance(interrupt, Terminated)
        hint = getattr(args, "interrupted_hint", None)
        what = "terminated (SIGTERM)" if stopped else "interrupted"
        print(f"zoommil {args.command}: {what}" + (f"; {hint}" if hint else ""),
              file=sys.stderr)  # fmt: skip
        return 143 if stopped else 130
    return int(result or 0)


def console() -> None:
    """The `zoommil` executable: `main`, then exit without the interpreter's teardown.

    Why: with torch loaded, Python's finalization after the last statement (clearing ~2300
    modules, collecting their objects) took 1.2-1.5 s of CPU on the 2-core development
    machine, and the workflow runs ~80 torch processes (features per slide, training, timing,
    FLOPs, predictions), each one holding a core that long after its work is done.
    Everything a command writes is closed by then (context managers; outputs are renamed into
    place on success), the exit handlers still run (logging's flush, multiprocessing's
    clean-up) and the streams are flushed. With a non-daemon thread still running, or when
    `main` raises, the exit is the normal one.
    """
    code = main()
    if any(not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
