"""Options several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

import argparse
import sys

from zoommil.cpus import usable_cpus
from zoommil.features.precision import PRECISION_CHOICES
from zoommil.features.weight_keywords import WEIGHT_KEYWORDS

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: CUDA when available, else CPU)"


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device``, auto by default everywhere."""
    parser.add_argument("--device", default=default, metavar="DEVICE", help=DEVICE_HELP)


def threads_value(value: str) -> int:
    """``--threads``: a number >= 0 (0: torch's default) or ``all`` (every core this process
    may use)."""
    if str(value).strip().lower() == "all":
        return usable_cpus()
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if threads < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'all', got {value!r}")
    return threads


def timing_threads_value(value: str) -> int:
    """``--threads`` of a timing: a number >= 1 or ``all`` (0, torch's default, would time
    a thread count the record could not state)."""
    threads = threads_value(value)
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be a number >= 1 or 'all', got {value!r}")
    return threads


def add_threads(parser: argparse.ArgumentParser, default: int = 0, why: str = "") -> None:
    """``--threads T`` (0: torch's default; ``all``: every core). Commands pass
    ``args.threads or None`` on."""
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=default,
        metavar="T",
        help=f"torch CPU threads: a number, 0 for torch's default or 'all' (default {default}"
        + (f": {why}" if why else "")
        + ")",
    )


def add_encoder_threads(parser: argparse.ArgumentParser, default: int = 1) -> None:
    """``--threads`` of the commands that encode patches (features, predict): on CPU more than
    one means this process plus single-threaded encoder processes
    (`zoommil.features.encoder_pool`)."""
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=default,
        metavar="T",
        help=(
            f"CPU cores for the encoder (default {default}): 1 encodes in this process with one "
            "torch thread; N > 1 or 'all' (every core it may use) adds N - 1 single-threaded "
            "encoder processes that encode batches side by side with this one, same features in "
            "the same order (0: one process with torch's default threads). On CUDA: torch threads "
            "of the one process"
        ),
    )


def add_precision(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--precision`` of the encoder; ``None``: the one recorded with the features."""
    what = f"default {default}" if default else "default: the one the features were made with"
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=default,
        help=f"encoder precision: fp32 (paper parity), bf16 autocast, or auto (bf16 where the "
        f"hardware has it natively, else fp32); {what}",
    )


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``; a bar is shown only on a terminal anyway (`show_progress`)."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (shown only when stderr is a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command draws progress bars: stderr is a terminal and no --no-progress.

    Why: redirected into a log file (every workflow job's), tqdm's carriage-return redraws
    are one long line of noise per job."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def add_no_fail(parser: argparse.ArgumentParser) -> None:
    """`--no-fail` of the per-slide stages (the CLI writes the failure markers; see cli.py)."""
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help=(
            "for workflows: a slide that cannot be used (or failed at an earlier stage) gets a "
            "failure marker as output (status, stage, reason) and exit 0, so one bad slide "
            "never stops a batch; other errors still exit non-zero"
        ),
    )


#: Seeds run from 0 to 2**32 - 1: NumPy's legacy seeding takes no more, `SeedSequence` no
#: negative value, and a seed above 2**64 was a ValueError traceback from `torch.manual_seed`.
SEED_LIMIT = 2**32


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Refuse a seed outside 0 .. 2**32 - 1 as one line (synth, features and train agree)."""
    from zoommil.errors import ZoomMILError

    if seed < 0:
        raise ZoomMILError(f"{flag} must be at least 0, got {seed}")
    if seed >= SEED_LIMIT:
        raise ZoomMILError(f"{flag} must be below 2**32 = {SEED_LIMIT}, got {seed}")


def weights_file(value: str | None) -> str | None:
    """The file a ``--weights`` value names, None for a keyword (an input of `zoommil.cli`)."""
    return None if value is None or value in WEIGHT_KEYWORDS else value


def check_one_per(
    count: int, item: str, flags: dict[str, list | None], noun: str = "value(s)"
) -> None:
    """Commands that take several checkpoints (or seeds) take one --out etc. per item, in the
    same order; a flag that is absent (None) is not checked."""
    from zoommil.errors import ZoomMILError

    for flag, values in flags.items():
        if values is not None and len(values) != count:
            raise ZoomMILError(
                f"{count} {item}(s) but {len(values)} {flag} {noun}: give one per {item}, in "
                "the same order"
            )
