"""End a finished Snakemake run without waiting for its job rate limiter.

Why: Snakemake's job rate limiter (``max-jobs-per-timespan``, 1000/10s in profiles/default)
re-runs the scheduling loop from `threading.Timer` threads, which are not daemons. The
interpreter joins them at exit, so a run ended up to one timespan after its last job: measured
on the demo, "Complete log" printed, then 10.8 s before the process exited. The workflow's
``onsuccess`` and ``onerror`` handlers call `cancel_pending_timers` when no job is left to
schedule; a cancelled timer only skips one release of the scheduler's (then idle) semaphore.
"""

from __future__ import annotations

import threading


def cancel_pending_timers() -> int:
    """Cancel every `threading.Timer` that has not fired yet; returns how many were pending."""
    pending = [
        thread
        for thread in threading.enumerate()
        if isinstance(thread, threading.Timer) and not thread.finished.is_set()
    ]
    for timer in pending:
        timer.cancel()
    return len(pending)
