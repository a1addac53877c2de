"""`zoommil tissue`: placeholder until implemented."""

from __future__ import annotations

import argparse

from zoommil.errors import ZoomMILError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tissue", help="(not implemented yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise ZoomMILError("'tissue' is not implemented yet")
