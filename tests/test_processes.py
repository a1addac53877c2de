"""Worker processes exit on their own, so what they registered is cleaned up, not leaked."""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import sys
from pathlib import Path

import pytest

from zoommil.errors import ZoomMILError
from zoommil.processes import ProcessDied, map_isolated, starmap_in_processes

_HELD: list = []


def _hold_a_named_semaphore(tag: int) -> tuple[int, str]:
    """What tqdm does in a worker: a spawn-context lock, alive until the process exits."""
    lock = multiprocessing.get_context("spawn").Lock()
    _HELD.append(lock)
    return tag, lock._semlock.name


_OFFSET: list[int] = []


def _remember_offset(offset: int) -> None:
    _OFFSET[:] = [offset]


def _square_or_die(tag: int) -> tuple[int, int]:
    """Dies (as a crash in a C library or the OOM killer would end it) on tag 3."""
    if tag == 3:
        os._exit(9)
    return tag * tag + _OFFSET[0], os.getpid()


def _fail_on_one(tag: int) -> int:
    if tag == 1:
        raise ValueError(f"job {tag} failed")
    return tag


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX named semaphores in /dev/shm")
def test_workers_exit_cleanly_and_unlink_their_semaphores():
    """A terminated worker (what `with Pool()` does on exit) leaves its semaphore in /dev/shm
    for the resource tracker to report as leaked; a worker that exits runs its finalisers.
    Killed or not is a race with a terminated pool, so several pools are checked."""
    for _ in range(6):
        results = starmap_in_processes(_hold_a_named_semaphore, [(i,) for i in range(4)], 2)
        assert [tag for tag, _ in results] == [0, 1, 2, 3]  # in order
        for _, name in results:
            assert not Path("/dev/shm", "sem." + name.lstrip("/")).exists(), name


def test_an_error_in_a_worker_reaches_the_caller():
    with pytest.raises(ValueError, match="job 1 failed"):
        starmap_in_processes(_fail_on_one, [(0,), (1,), (2,)], 2)


def test_a_dead_process_takes_only_its_own_task():
    """Tag 3's process dies; the tasks in flight with it are rerun alone and succeed, every
    other task is answered once, and tag 3 alone comes back as `ProcessDied`."""
    outcomes = list(map_isolated(_square_or_die, range(7), 2, _remember_offset, (100,)))
    indices = [i for i, _ in outcomes]
    assert sorted(indices) == list(range(7))  # each task answered exactly once
    by_index = dict(outcomes)
    assert isinstance(by_index[3], ProcessDied)
    assert "died" in by_index[3].reason
    for tag in (0, 1, 2, 4, 5, 6):
        assert by_index[tag][0] == tag * tag + 100  # the initializer ran in fresh processes too
    assert os.getpid() not in {out[1] for t, out in outcomes if t != 3}


def _break_the_nth_submit(monkeypatch: pytest.MonkeyPatch, n: int) -> dict[str, int]:
    """Make `zoommil.processes`' pools raise `BrokenProcessPool` from their ``n``-th `submit`
    (counted over every pool), as a pool does once a worker died; returns the call counter."""
    import concurrent.futures.process as cf_process

    import zoommil.processes as processes

    calls = {"n": 0}

    class BreaksOnNthSubmit(cf_process.ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise cf_process.BrokenProcessPool("a child process terminated abruptly")
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(processes, "ProcessPoolExecutor", BreaksOnNthSubmit)
    return calls


def test_a_pool_that_breaks_between_wait_and_submit_loses_no_task(monkeypatch):
    """A process can die after `wait` returned the other tasks' results and before its own
    future is marked broken; the next `submit` then raises `BrokenProcessPool` (seen in CI on
    a loaded machine, where it escaped `map_isolated`). The item not submitted is run later in
    a fresh pool, and every task is still answered exactly once."""
    calls = _break_the_nth_submit(monkeypatch, 3)
    outcomes = dict(map_isolated(_square_or_die, [0, 1, 2, 4, 5], 2, _remember_offset, (7,)))
    assert calls["n"] > 5  # the refused submit was made again
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert [outcomes[i][0] for i in range(5)] == [7, 8, 11, 23, 32]


def test_map_isolated_with_one_process_blames_the_task_at_once():
    outcomes = dict(map_isolated(_square_or_die, [2, 3, 4], 1, _remember_offset, (0,)))
    assert isinstance(outcomes[1], ProcessDied)
    assert [outcomes[0][0], outcomes[2][0]] == [4, 16]


def test_an_error_raised_in_map_isolated_reaches_the_caller():
    with pytest.raises(ValueError, match="job 1 failed"):
        list(map_isolated(_fail_on_one, [0, 1, 2], 2))


def _die_on_one(tag: int) -> int:
    if tag == 1:
        os._exit(9)
    return tag


def test_a_dead_worker_in_starmap_is_an_error_not_a_hang():
    with pytest.raises(ZoomMILError, match="worker process died"):
        starmap_in_processes(_die_on_one, [(0,), (1,), (2,)], 2)


def test_a_worker_dying_while_starmap_still_submits_is_the_same_error(monkeypatch):
    """A fast task can kill its worker before the last tasks are submitted; `submit` then
    raises `BrokenProcessPool`, which must become the same one-line error, not a traceback."""
    _break_the_nth_submit(monkeypatch, 2)
    with pytest.raises(ZoomMILError, match="worker process died"):
        starmap_in_processes(_die_on_one, [(0,), (2,), (4,)], 2)


def _die_mid_reply(tag: int) -> tuple[int, int]:
    """Tag 3 dies the way a worker killed while writing its result back does: the result pipe
    holds the start of a message (a 1 MiB header, 64 bytes of it) that never ends."""
    if tag == 3:
        frame = sys._getframe()
        while frame.f_code.co_name != "_process_worker":  # CPython's worker loop holds the pipe
            frame = frame.f_back
        writer = frame.f_locals["result_queue"]._writer
        os.write(writer.fileno(), struct.pack("!i", 1 << 20) + bytes(64))
        os._exit(9)
    return tag * tag + (_OFFSET[0] if _OFFSET else 0), os.getpid()


@pytest.fixture
def hang_alarm():
    """Fail, not hang, if the executor waits for the rest of the message (as CPython's does)."""

    def hung(*_):
        raise TimeoutError("waited forever for a dead worker's half-written result")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_worker_dead_mid_reply_breaks_the_executor_instead_of_hanging_it(hang_alarm):
    """CPython's manager thread reads the partial message forever (the other workers and the
    parent hold the pipe's write end) and never notices the death; `wait_watched` does."""
    outcomes = dict(map_isolated(_die_mid_reply, range(5), 2, _remember_offset, (0,)))
    assert sorted(outcomes) == list(range(5))
    assert isinstance(outcomes[3], ProcessDied)
    assert [outcomes[i][0] for i in (0, 1, 2, 4)] == [0, 1, 4, 16]
    with pytest.raises(ZoomMILError, match="worker process died"):
        starmap_in_processes(_die_mid_reply, [(3,), (4,)], 2)


_PARENT_WITH_A_READER = """
import multiprocessing, sys, time
from zoommil.wsi.patches import ReaderPool

if __name__ == "__main__":
    pool = ReaderPool(1).start()
    pool._pool.submit(int).result()  # the reader is up and initialised
    print(*[c.pid for c in multiprocessing.active_children()], flush=True)
    time.sleep(120)
"""


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (PID 1 of a container may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_reader_processes_exit_when_their_parent_is_killed(tmp_path):
    """A parent killed outright runs no clean-up; its idle readers used to wait on their task
    queue forever (an orphan holding its memory)."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(_PARENT_WITH_A_READER)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        readers = [int(p) for p in parent.stdout.readline().split()]
        assert len(readers) == 1
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while not all(_exited(pid) for pid in readers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in readers if not _exited(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "a reader outlived its killed parent"
