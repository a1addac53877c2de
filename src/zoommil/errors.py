"""Errors a user can cause: the CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def first_few(items: Sequence[Any], shown: int = 5, sep: str = ", ") -> str:
    """The first ``shown`` items and how many more, so that a one-line message stays one
    line for a cohort of 1000 slides."""
    names = sep.join(str(item) for item in items[:shown])
    return names + (f" and {len(items) - shown} more" if len(items) > shown else "")


class ZoomMILError(Exception):
    """A user-facing error (bad input, bad config): reported as one line by the CLI."""


class SlideError(ZoomMILError):
    """A slide cannot be used; the message always names the slide and the reason."""

    def __init__(self, slide: str | Path, reason: str) -> None:
        self.slide = str(slide)
        self.reason = reason
        super().__init__(f"{self.slide}: {reason}")


class SlideCheckError(SlideError):
    """A `SlideError` with a machine-readable status for `inspect` (e.g. ``no_mpp``)."""

    def __init__(self, slide: str | Path, status: str, reason: str) -> None:
        self.status = status
        super().__init__(slide, reason)
