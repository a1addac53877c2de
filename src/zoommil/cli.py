"""The `zoommil` command line: one subcommand per module in `zoommil.commands`.

Each command module defines `add_parser(subparsers)` (registers its arguments and sets
`func`) so the commands stay independent of each other. A command may also set `outputs`
(args -> the files it writes: checked for writability before any work) and `stage` (with a
`--no-fail` flag: a `SlideError` writes failure markers as those outputs and exits 0; see
`zoommil.workflow.failure`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoommil import __version__
from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.atomic import check_writable

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


def build_parser() -> argparse.ArgumentParser:
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
    for name in COMMANDS:
        importlib.import_module(f"zoommil.commands.{name}").add_parser(subparsers)
    return parser


def _outputs(args: argparse.Namespace) -> list[Path]:
    """The files a command will write (commands declare them with ``set_defaults(outputs=)``)."""
    outputs = getattr(args, "outputs", None)
    return [Path(p) for p in (outputs(args) if outputs else []) if p is not None]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    with _torch_threads_kept():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors are one line and exit 2, a slide error may exclude."""
    try:
        for path in _outputs(args):  # an unwritable output fails now, not after the work
            check_writable(path)
        try:
            result = _run(args)
        except SlideError as error:
            code = _exclude(args, error)
            if code is None:
                raise
            return code
    except ZoomMILError as error:
        print(f"zoommil {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # An output or input fault the command did not anticipate: still one line.
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        reason = error.strerror or str(error) or type(error).__name__
        print(f"zoommil {args.command}: error: {where}{reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zoommil {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
