"""Files written under a temporary name and renamed, so a crash never leaves a partial file.

Output faults are user-facing: a full disk, a read-only folder or an unwritable path is a
`ZoomMILError` naming the path (one line, exit 2), found before the work by
`check_writable` and, if the disk fills during the work, when the temporary file is written.
Temporary files are named ``.NAME.tmp-HOST-PID-TOKEN``: the host and a random token keep two
writers of one output apart also where process ids repeat (cluster nodes, containers on a
shared folder). One of this host whose process is gone (a killed write) is removed by the next
write of the same output; one of another host only when it has not changed for
`FOREIGN_STALE_SECONDS` (this host cannot tell whether that process lives).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError

#: Free space below which `check_writable` refuses to start (bytes).
MIN_FREE_BYTES = 1 << 20


#: Age (seconds since the last change) after which another host's temporary file counts as
#: left by a dead writer: two days, longer than any one write of a slide's outputs.
FOREIGN_STALE_SECONDS = 2 * 24 * 3600


def this_host() -> str:
    """This machine's host name as it goes into temporary file names (``[A-Za-z0-9_]``).

    A name that had to change (``-``, a domain, over 32 characters) gets a digest of the full
    name: ``node-1`` and ``node_1``, or ``gpu1.site-a`` and ``gpu1.site-b``, were one host."""
    full = socket.gethostname()
    tag = re.sub(r"[^A-Za-z0-9_]", "_", full.split(".")[0])[:32] or "host"
    if tag != full:
        tag += "_" + hashlib.sha1(full.encode()).hexdigest()[:6]
    return tag


def _own_name(path: Path, kind: str) -> Path:
    """``.NAME.KIND-HOST-PID-TOKEN`` beside ``path``: unique to this write."""
    return path.with_name(f".{path.name}.{kind}-{this_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def temp_name(path: Path) -> Path:
    """A temporary file of ``path`` for one write: ``.NAME.tmp-HOST-PID-TOKEN.EXT`` in its
    folder, a new name at every call."""
    # the suffix is repeated: writers that pick a format by extension (matplotlib, PIL) still can
    named = _own_name(path, "tmp")
    return named.with_name(named.name + path.suffix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` that no writer will finish: this host's whose
    process is gone, another host's unchanged for `FOREIGN_STALE_SECONDS`. (``.NAME.tmp-PID``
    files of older versions count as this host's.)"""
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(?:tmp|probe)-(?:([A-Za-z0-9_]+)-)?(\d+)(?:-[0-9a-f]+)?"
        r"(?:\..*)?$"
    )
    host, now = this_host(), time.time()
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match:
            continue
        if match[1] in (None, host):
            stale = int(match[2]) != os.getpid() and not _pid_alive(int(match[2]))
        else:
            try:
                stale = now - entry.stat().st_mtime > FOREIGN_STALE_SECONDS
            except OSError:
                stale = False
        if stale:
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def output_error(path: str | Path, error: OSError) -> ZoomMILError:
    """One line for an output fault: the path and what the system said."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device"
    elif error.errno == errno.EFBIG:
        reason = "file too large for this device or the process's file-size limit"
    elif error.errno == errno.EROFS:
        reason = "read-only file system"
    elif error.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    return ZoomMILError(f"cannot write {path}: {reason}")


def _hdf5_errno(error: Exception, tmp: Path) -> int | None:
    """The errno of a failed HDF5 write to ``tmp`` (h5py reports it only in the message)."""
    text = str(error)
    match = re.search(r"errno = (\d+)", text)
    if match is None or tmp.name not in text:
        return None
    return int(match[1])


def check_free_space(path: str | Path, needed: int) -> None:
    """Refuse to start work whose output (about ``needed`` bytes) cannot fit on the disk."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < needed:
        raise ZoomMILError(
            f"cannot write {path}: no space left on the device ({free} bytes free, the output "
            f"needs about {needed})"
        )


def check_writable(path: str | Path, min_free: int = MIN_FREE_BYTES) -> Path:
    """Fail now, not after the work, if ``path`` cannot be written.

    Creates the parent folder, removes stale temporary files of ``path``, writes and removes
    a probe file next to it, and checks that at least ``min_free`` bytes are free there.
    """
    path = Path(path)
    if path.is_dir():
        raise ZoomMILError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ZoomMILError(f"cannot write {path}: {path.parent} is not a folder") from None
    except OSError as error:
        raise output_error(path, error) from None
    remove_stale_temps(path)
    probe = _own_name(path, "probe")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as error:
        raise output_error(path, error) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < min_free:
        raise ZoomMILError(
            f"cannot write {path}: no space left on the device (only {free} bytes free, "
            f"need at least {min_free})"
        )
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The parent folder is created. The temporary file sits in the same folder (so the rename
    is atomic) and is removed whatever happens. An `OSError` while writing or renaming (full
    disk, read-only folder) becomes a one-line `ZoomMILError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path, error) from None
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            if getattr(error, "filename", None) not in (None, str(tmp), str(path), tmp, path):
                raise  # an input file, not this output
            raise output_error(path, error) from None
        code = _hdf5_errno(error, tmp)
        if code is None:
            raise
        raise output_error(path, OSError(code, os.strerror(code))) from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass


class GuardedFile:
    """A binary file for h5py's file-object driver that never reports a failed write to HDF5.

    HDF5 crashes (segfault) on some failed writes, e.g. when the disk fills while a chunked
    dataset is flushed. Here a failed write is recorded and reported to HDF5 as done, and
    `close` raises the recorded `OSError` (with the file name), which `atomic_path` turns into
    one line. The half-written file is then removed by `atomic_path`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "w+b", buffering=0)  # closed in close()
        self.error: OSError | None = None

    def _record(self, error: OSError) -> None:
        if self.error is None:
            error.filename = str(self.path)
            self.error = error

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._fh.write(view[done:])
            except OSError as error:
                self._record(error)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def readinto(self, buffer: Any) -> int:
        return self._fh.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._fh.truncate(size)
        except OSError as error:
            self._record(error)
            return self._fh.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        """Close the file; raise the first write error, if any (after closing)."""
        try:
            if self.error is None:
                os.fsync(self._fh.fileno())
        except OSError as error:
            self._record(error)
        finally:
            self._fh.close()
        if self.error is not None:
            raise self.error


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with plain OS writes (a full disk is an OSError)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 text through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
