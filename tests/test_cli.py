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


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # one features job per slide: torchvision would pull in torch._dynamo
        ("zoommil.features.extraction", ("torchvision", "torch._dynamo", "sklearn")),
        # predict/profile read a checkpoint; the trainer's scikit-learn is not theirs to pay
        ("zoommil.inference.predict", ("torchvision", "torch._dynamo", "sklearn")),
        # a training process on CPU: deterministic-algorithm setup imported torch._inductor
        ("zoommil.training.trainer", ("torchvision", "torch._inductor")),
    ],
)
def test_per_job_imports_stay_light(module: str, absent: tuple[str, ...]):
    """What a per-slide or per-run process imports is paid once per job (hundreds of jobs in
    a cohort run): these heavy packages used to be imported without being used."""
    probe = f"import sys, torch\nimport {module}\n"
    if module == "zoommil.training.trainer":
        probe += f"with {module}.deterministic(0, 1, torch.device('cpu')):\n    pass\n"
    probe += f"print(sorted(m for m in {absent!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
