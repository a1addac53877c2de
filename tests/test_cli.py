"""The `zoommil` command line: every subcommand is registered, and building the parser stays
light, because the workflow starts one `zoommil` process per slide and per stage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zoommil.cli import COMMANDS, build_parser


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: zoommil {name}" in capsys.readouterr().out


def test_building_the_parser_does_not_import_torch():
    """Importing torch + torchvision costs seconds per call, and inspect/tissue/tile (three
    jobs per slide) would pay it for nothing: it was ~5 s of a ~6 s `zoommil inspect`."""
    probe = (
        "import sys\n"
        "from zoommil.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
