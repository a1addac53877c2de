"""The start of the manager process that shares `zoommil profile`'s slide claims.

Its own module, importing nothing heavy: a spawned process imports the module of the function
it is given, and from `zoommil.efficiency.throughput` that was torch, OpenCV and the
predictor, ~590 MB and 2.6 s more (measured) beside the timing processes, where the profile
job's memory counts ~32 MB for the manager (`zoommil.workflow.resources.PROFILE_MAIN_MB`).
"""

from __future__ import annotations

import signal

from zoommil.processes import exit_with_parent


def init_manager(parent: int) -> None:
    """Run first in the manager: it leaves SIGINT and SIGTERM to the command ``parent``,
    which shuts it down on its way out, and exits once that is gone (`exit_with_parent`)."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    exit_with_parent(parent=parent)
