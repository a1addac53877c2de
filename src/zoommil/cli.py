"""The `zoommil` command line: one subcommand per module in `zoommil.commands`.

Each command module defines `add_parser(subparsers)` (registers its arguments and sets
`func`) so the commands stay independent of each other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from zoommil import __version__
from zoommil.errors import ZoomMILError

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except ZoomMILError as error:
        print(f"zoommil {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zoommil {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
