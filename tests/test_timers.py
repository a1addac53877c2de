"""Ending a finished Snakemake run without waiting for its rate limiter's timer threads."""

from __future__ import annotations

import threading

from zoommil.workflow.timers import cancel_pending_timers


def test_pending_timers_are_cancelled_and_their_actions_never_run():
    fired = threading.Event()
    pending = threading.Timer(60.0, fired.set)
    pending.start()
    done = threading.Timer(0.0, lambda: None)
    done.start()
    done.join(5.0)
    assert cancel_pending_timers() == 1  # the one that already fired is not counted
    pending.join(5.0)
    assert not pending.is_alive()
    assert not fired.is_set()
    assert cancel_pending_timers() == 0
