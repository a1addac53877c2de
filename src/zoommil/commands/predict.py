"""`zoommil predict`: placeholder until implemented."""

from __future__ import annotations

import argparse

from zoommil.errors import ZoomMILError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="(not implemented yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise ZoomMILError("'predict' is not implemented yet")
