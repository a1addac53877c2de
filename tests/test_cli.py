"""The `zoommil` command line: every subcommand is registered, and building the parser stays
light, because the workflow starts one `zoommil` process per slide and per stage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zoommil as zoommil_package
from zoommil.cli import COMMANDS, build_parser, main
from zoommil.wsi import resolution as zresolution


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: zoommil {name}" in capsys.readouterr().out


def imported_after(code: str, candidates: tuple[str, ...]) -> str:
    """What a fresh interpreter prints for the sorted ``candidates`` it has imported after
    running ``code``: "[]" when none."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {candidates!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_building_the_parser_does_not_import_torch():
    """Importing torch + torchvision costs seconds per call, and inspect/tissue/tile (three
    jobs per slide) would pay it for nothing: it was ~5 s of a ~6 s `zoommil inspect`."""
    code = "from zoommil.cli import build_parser\nbuild_parser()"
    assert imported_after(code, ("torch", "torchvision")) == "[]"


def test_the_python_api_loads_on_first_use():
    """`import zoommil` (every CLI command does it) must not import torch; each name of the
    notebook API (docs/python-api.md) resolves, and only then loads its module."""
    assert imported_after("import zoommil\nzoommil.__version__", ("torch",)) == "[]"
    zoommil = zoommil_package
    assert dir(zoommil) == zoommil.__all__
    for name in zoommil.__all__:
        assert getattr(zoommil, name) is not None, name
    assert zoommil.build_model("MS-MIL", n_classes=2).__class__.__name__ == "MSMIL"
    with pytest.raises(AttributeError, match="has no attribute 'train'"):
        zoommil.train  # noqa: B018


def test_a_workflow_job_refuses_another_checkouts_zoommil(tmp_path):
    """The workflow exports the zoommil it tracks as ZOOMMIL_LIBRARY; a job importing another
    one (a conda env built for another checkout) stops with one line, exit 2."""
    env = {**os.environ, "ZOOMMIL_LIBRARY": str(tmp_path / "other" / "src" / "zoommil")}
    run = [sys.executable, "-c", "import zoommil"]
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "this workflow job imports zoommil from" in result.stderr
    assert f"but the workflow tracks {tmp_path / 'other'}" in result.stderr
    env["ZOOMMIL_LIBRARY"] = str(Path(zoommil_package.__file__).parent)
    assert subprocess.run(run, env=env, timeout=60).returncode == 0


def test_the_workflow_finds_the_weight_file_without_torch():
    """The weight file's sha256 (the features rule's params) is found when the workflow
    loads: without torch."""
    code = "from zoommil.workflow.weights import weights_sha256\nweights_sha256('uni', 'hf')"
    assert imported_after(code, ("torch",)) == "[]"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # one features job per slide: torchvision would pull in torch._dynamo
        ("zoommil.features.extraction", ("torchvision", "torch._dynamo", "sklearn")),
        # predict/profile read a checkpoint; the trainer's scikit-learn is not theirs to pay
        ("zoommil.inference.predict", ("torchvision", "torch._dynamo", "sklearn")),
        # a training process on CPU: deterministic-algorithm setup imported torch._inductor;
        # scikit-learn's metrics cost ~2 s per training job (zoommil.training.metrics)
        ("zoommil.training.trainer", ("torchvision", "torch._inductor", "sklearn")),
        # tissue and tile, two jobs per slide: SciPy's ndimage alone cost ~0.45 s each
        ("zoommil.wsi.tiling", ("scipy", "torchvision")),
    ],
)
def test_per_job_imports_stay_light(module: str, absent: tuple[str, ...]):
    """What a per-slide or per-run process imports is paid once per job (hundreds of jobs in
    a cohort run): these heavy packages used to be imported without being used."""
    code = f"import torch\nimport {module}"
    if module == "zoommil.training.trainer":
        code += f"\nwith {module}.deterministic(0, 1, torch.device('cpu')):\n    pass"
    assert imported_after(code, absent) == "[]"


def test_a_finished_command_logs_its_time_cpu_and_peak_memory(slides_dir, tmp_path):
    """Each workflow job's log is its record of what it used (the rules have no Snakemake
    `benchmark:` files, whose sampling cost Snakemake's own process ~0.5 CPU-s per job)."""
    out = tmp_path / "inspect.json"
    # started by a process of ~1 GB, as a job by a cohort's Snakemake process: its peak was
    # reported as the command's own (ru_maxrss keeps the forking process's RSS)
    launcher = (
        "import subprocess, sys; ballast = b'x' * (1 << 30); "
        "subprocess.run(sys.argv[1:], check=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, sys.executable, "-m", "zoommil", "inspect",
         str(slides_dir / "CMU-1-Small-Region.svs"), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if "zoommil inspect:" in line]
    assert len(lines) == 1, result.stderr
    match = re.search(r"([\d.]+) s wall, ([\d.]+) CPU-s, peak RSS (\d+) MB", lines[0])
    assert match, lines[0]
    wall, cpu, peak_mb = float(match[1]), float(match[2]), int(match[3])
    assert 0 < wall < 600 and 0 < cpu < 600
    assert 20 < peak_mb < 800  # a Python process that read a slide: tens to hundreds of MB
    # no children's peak: Linux counts this process's RSS into a fork/vfork + exec child's
    assert "child" not in lines[0]


def test_a_failed_command_logs_no_usage_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "zoommil", "inspect", str(tmp_path / "missing.svs"),
         "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "file not found" in result.stderr
    assert "CPU-s" not in result.stderr


def test_a_user_error_removes_only_the_empty_folders_the_run_made(tmp_path):
    from zoommil.cli import main

    kept = tmp_path / "kept"
    kept.mkdir()
    out = kept / "new" / "deeper"
    assert main(["synth", "--out", str(out), "--workers", "0"]) == 2
    assert kept.is_dir() and not (kept / "new").exists()


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["tile", "slide.svs", "--out", "c.h5"], "tile"),
        (["-v", "features", "slide.svs"], "features"),
        (["--version"], None),
        (["bogus", "tile"], None),
        ([], None),
    ],
)
def test_the_command_is_found_after_the_global_options(argv, command):
    from zoommil.cli import named_command

    assert named_command(argv) == command


def test_a_command_registers_only_itself():
    """Registering every command imported every command's module (SciPy for `tissue` then,
    ~0.3 s of painting code for `synth`); `inspect`, one job per slide, must not pay that."""
    code = (
        "import contextlib, io\n"
        "from zoommil.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"  # the help text
        "    try:\n"
        "        main(['inspect', '--help'])\n"
        "    except SystemExit:\n"
        "        pass"
    )
    absent = ("scipy", "zoommil.commands.tissue", "zoommil.synth")
    assert imported_after(code, absent) == "[]"


def test_an_unknown_command_still_lists_every_command(capsys):
    from zoommil.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in COMMANDS)


def _console(tmp_path, before: str) -> subprocess.CompletedProcess:
    """`zoommil inspect` on a missing slide (exit 2) through `console`, after ``before`` ran."""
    code = (
        "import atexit, sys, threading, time\n"
        f"{before}\n"
        f"sys.argv = ['zoommil', 'inspect', {str(tmp_path / 'missing.svs')!r}, "
        f"'--out', {str(tmp_path / 'x.json')!r}]\n"
        "from zoommil.cli import console\n"
        "console()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_executable_skips_the_teardown_but_not_the_exit_handlers(tmp_path):
    """`console` ends with os._exit (Python's teardown with torch loaded took 1.2-1.5 CPU-s per
    job): main's exit code, its error line, exit handlers and buffered output all survive;
    finalizers of module objects (the teardown) do not run."""
    before = (
        "atexit.register(lambda: print('exit handler ran'))\n"  # buffered: needs the flush
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        print('teardown ran', flush=True)\n"
        "kept = Finalized()\n"
        "print('buffered before main')"
    )
    result = _console(tmp_path, before)
    assert result.returncode == 2, result.stderr
    assert "zoommil inspect: error" in result.stderr and "file not found" in result.stderr
    assert "buffered before main" in result.stdout and "exit handler ran" in result.stdout
    assert "teardown ran" not in result.stdout


def test_the_executable_waits_for_a_running_thread(tmp_path):
    """A non-daemon thread still running when main returns gets the normal exit, which
    waits for it (os._exit would kill it mid-work)."""
    before = (
        "def work():\n"
        "    time.sleep(0.5)\n"
        "    print('thread finished', flush=True)\n"
        "threading.Thread(target=work).start()"
    )
    result = _console(tmp_path, before)
    assert result.returncode == 2, result.stderr
    assert "zoommil inspect: error" in result.stderr
    assert "thread finished" in result.stdout


def test_the_installed_command_is_the_console_entry():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="zoommil")
    assert script.value == "zoommil.cli:console"


def test_the_mpp_hint_names_only_flags_each_command_has():
    """A slide without mpp says how to supply one, naming only flags of the commands that take
    them: `zoommil features` has --mpp but no --default-mpp (argparse would refuse it)."""
    hint = zresolution.HOW_TO_SUPPLY_MPP
    subparsers = build_parser().get_default("command_parsers")
    for command in zresolution.MPP_FLAG_COMMANDS:
        flags = set(subparsers[command]._option_string_actions)
        assert "--mpp" in flags, command
        takes_default = command in zresolution.DEFAULT_MPP_FLAG_COMMANDS
        assert ("--default-mpp" in flags) == takes_default, command
    assert "--mpp X" in hint
    assert "--default-mpp X in inspect, tissue, tile and predict" in hint
    shown = re.findall(r"--[a-z-]+", hint)
    assert set(shown) == {"--mpp", "--default-mpp"}, shown


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"zoommil {command}: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["tile", "{slide}", "--mags", "5", "--out", "{slide}"], "slide"),
        (["inspect", "{slide}", "--out", "{slide}"], "slide"),
        (["tissue", "{slide}", "--out", "{slide}"], "slide"),
        (["tissue", "{slide}", "--out", "{slide}"], "slide"),
        (["tile", "{slide}", "--mags", "5", "--out", "{other}", "--tissue-mask", "{other}"],
         "tissue mask"),
        (["features", "{slide}", "--coords", "{other}", "--out", "{other}"], "coords file"),
        (["features", "{slide}", "--coords", "c.h5", "--weights", "{other}", "--out", "{other}"],
         "weights file"),
        (["evaluate", "--checkpoint", "{other}", "--features-dir", ".", "--out", "{other}"],
         "checkpoint"),
        (["evaluate", "--checkpoint", "c.pt", "--features-dir", ".", "--sheet", "{other}",
          "--out", "{other}"], "sheet"),
        (["predict", "{slide}", "--checkpoint", "{other}", "--json", "{other}"], "checkpoint"),
        (["predict", "{slide}", "--checkpoint", "c.pt", "--json", "{slide}"], "slide"),
        (["flops", "--checkpoint", "c.pt", "{other}", "--features-dir", ".", "--out", "a.json",
          "{other}"], "checkpoint"),
        (["profile", "--checkpoint", "{other}", "--out", "{other}"], "checkpoint"),
        (["train", "--config", "{other}", "--model", "abmil", "--out", "r",
          "--eval-out", "{other}"], "config"),
    ],
)  # fmt: skip
def test_an_output_that_names_an_input_is_refused(make_slide, tmp_path, capsys, argv, what):
    """`zoommil tile S --out S` replaced the slide with its coords file (and so did every
    command whose output named one of its inputs): one line naming both, nothing written."""
    from zoommil.cli import main

    slide = make_slide("s.tiff", width=512, height=512)
    other = tmp_path / "input.bin"
    other.write_bytes(b"an input")
    before = {p: p.read_bytes() for p in (slide, other)}
    paths = {"slide": str(slide), "other": str(other)}
    argv = [word.format(**paths) for word in argv]
    argv = [str(tmp_path / w) if w in ("m.png", "a.json", "c.h5", "c.pt", "r") else w for w in argv]
    assert main(argv) == 2
    line = _one_error_line(capsys, argv[0])
    named = slide if what == "slide" else other
    assert f"is the {what} {named}: refusing to overwrite an input" in line
    assert {p: p.read_bytes() for p in (slide, other)} == before
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["evaluate", "flops"])
def test_an_output_that_names_a_feature_file_read_is_refused(tmp_path, capsys, command):
    """`zoommil flops --features-dir F --out F/demo_003.h5` replaced the feature file it had
    just read with its JSON: only the folder was an argument, so no input named the file."""
    from zoommil.cli import main

    features = tmp_path / "features"
    features.mkdir()
    feature_file = features / "demo_003.h5"
    feature_file.write_bytes(b"features")
    argv = [command, "--checkpoint", str(tmp_path / "c.pt"), "--features-dir", str(features)]
    assert main([*argv, "--out", str(feature_file)]) == 2
    line = _one_error_line(capsys, command)
    assert f"is the feature file {feature_file}: refusing to overwrite an input" in line
    assert feature_file.read_bytes() == b"features"


def test_a_link_to_an_input_is_the_input(make_slide, tmp_path, capsys):
    """os.path.samefile: a symbolic or hard link names the same file as its target."""
    from zoommil.cli import main

    slide = make_slide("s.tiff", width=512, height=512)
    (tmp_path / "soft.tiff").symlink_to(slide)
    os.link(slide, tmp_path / "hard.tiff")
    before = slide.read_bytes()
    for link in ("soft.tiff", "hard.tiff"):
        assert main(["tile", str(slide), "--mags", "5", "--out", str(tmp_path / link)]) == 2
        assert f"{link} is the slide {slide}" in _one_error_line(capsys, "tile")
    # the slide given by a relative path with '..' and the output by the absolute one
    relative = os.path.relpath(slide, Path.cwd())
    assert main(["inspect", relative, "--out", str(slide)]) == 2
    assert "refusing to overwrite an input" in _one_error_line(capsys, "inspect")
    assert slide.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["tissue", "s.tiff", "--out", "m.png", "--overlay", "m.png"],
        ["tissue", "s.tiff", "--out", "m.png", "--overlay", "./x/../m.png"],
        ["train", "--config", "c.yaml", "--model", "abmil", "--seed", "0", "1", "--out", "r", "r"],
        ["train", "--config", "c.yaml", "--model", "abmil", "--out", "r",
         "--eval-out", "r/metrics.json"],
        ["flops", "--checkpoint", "a.pt", "b.pt", "--features-dir", ".", "--out", "f.json",
         "f.json"],
        ["profile", "--checkpoint", "a.pt", "b.pt", "--out", "f.json", "f.json"],
    ],
)  # fmt: skip
def test_two_outputs_naming_one_file_are_refused(tmp_path, capsys, monkeypatch, argv):
    """`train --seed 0 1 --out r r`: seed 1 silently overwrote seed 0 (likewise two --out of
    flops, or tissue's --out and --overlay)."""
    from zoommil.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "is named twice" in _one_error_line(capsys, argv[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_outputs_are_compared_as_files(tmp_path):
    from zoommil.io.clobber import same_file

    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    assert same_file(tmp_path / "a", tmp_path / "x" / ".." / "a")
    assert not same_file(tmp_path / "a", tmp_path / "b")
    assert same_file(tmp_path / "new", tmp_path / "." / "new")  # neither exists yet
    assert not same_file(tmp_path / "new", tmp_path / "a")


@pytest.mark.parametrize(("tty", "flag", "shown"), [(True, [], True), (True, ["--no-progress"],
                         False), (False, [], False)])  # fmt: skip
def test_progress_bars_only_on_a_terminal(monkeypatch, tty, flag, shown):
    """In a log file (every workflow job's) tqdm's carriage-return redraws are noise."""
    from zoommil.commands.options import show_progress

    class Stream:
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(sys, "stderr", Stream())
    parser = build_parser()
    for command in ("synth", "features", "train", "flops", "predict"):
        args = parser.parse_args([command, *REQUIRED[command], *flag])
        assert show_progress(args) is shown, command


#: The required arguments of the commands that draw progress bars.
REQUIRED = {
    "synth": ["--out", "x"],
    "features": ["s.svs", "--coords", "c.h5", "--out", "f.h5"],
    "train": ["--config", "c.yaml", "--model", "abmil", "--out", "r"],
    "flops": ["--checkpoint", "c.pt", "--features-dir", "f", "--out", "f.json"],
    "predict": ["s.svs", "--checkpoint", "c.pt"],
}


def test_a_worker_process_logs_like_the_command(tmp_path):
    """A spawned worker's warning went to logging's last resort as the bare message."""
    code = (
        "import logging, multiprocessing\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from zoommil.processes import worker_logging\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    with ProcessPoolExecutor(1, ctx, initializer=worker_logging) as pool:\n"
        "        pool.submit(logging.getLogger('zoommil.x').warning, 'in a worker').result()\n"
    )
    script = tmp_path / "worker.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["WARNING zoommil.x: in a worker"]


def test_a_flag_the_command_does_not_take_is_the_command_s_error(capsys) -> None:
    """A mistyped flag showed the top-level usage (`zoommil [-h] [--version] [-v] COMMAND`),
    none of the command's own flags; `-v` after the command did the same."""
    for argv, shown in (
        (
            ["tile", "s.svs", "--mags", "2.5", "--out", "c.h5", "--pach-size", "128"],
            "--pach-size 128",
        ),
        (["inspect", "s.svs", "-v"], "-v (-v and --version go before the command)"),
    ):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: zoommil {argv[0]} ") and "--no-fail" in err, err
        assert f"zoommil {argv[0]}: error: unrecognized arguments: {shown}" in err


@pytest.mark.parametrize("parse", ["threads_value", "timing_threads_value"])
def test_threads_all_counts_the_cpus_the_job_may_use(monkeypatch, parse):
    """`--threads all` in a SLURM cpuset (or under `taskset`) of 1 CPU on an 8-CPU node is 1:
    the machine's count started an encoder or profile process per node CPU beside it."""
    from zoommil.commands import options

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert getattr(options, parse)("all") == 1
