"""The sha256 of the encoder's weight file, for the features rule's params.

Why: the params held the keyword or the path only, so another Hugging Face snapshot, or a file
replaced at the same path, left every feature file of the old weights "up to date", and
training failed on the first slide extracted with the new ones (another sha256). By content,
not by path: a copied or moved cache, or a file copied over itself, reruns nothing.

Hashing a foundation model's file takes seconds, so the answer is kept in
``.snakemake/zoommil-weights.json`` by (path, size, mtime); the Hugging Face cache names its
blobs by their sha256, which is read from the name. Where this process does not see the file
(a login node without the cache; a cluster job), the last sha256 seen for the same weights
setting is used, so that visibility alone never reruns extraction.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import zipfile
from pathlib import Path

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.weight_files import sha256_file, unseen_weights, weights_file
from zoommil.io.atomic import remove_stale_temps, temp_name

__all__ = ["check_not_torchscript", "unseen_weights", "weights_sha256"]

CACHE = Path(".snakemake/zoommil-weights.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {"files": {}, "last": {}}
    return data if isinstance(data, dict) else {"files": {}, "last": {}}


def _pid_gone(pid: int) -> bool:
    """Whether no process of this host has ``pid``."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # beyond any pid, too
        return True
    except OSError:  # another user's process (EPERM): it lives
        return False
    return False


def remove_old_temps(cache: Path) -> None:
    """Remove ``.NAME.PID`` temporary files of ``cache`` whose process is gone: the weights
    cache's name before the host-pid-token one, which `remove_stale_temps` does not match,
    so one a killed process left stayed for good. Counted as this host's, as that function
    counts its old ``.tmp-PID`` form: a live writer of another host whose temp is removed
    only fails its rename, which `write_cache` passes over."""
    old = re.compile(rf"\.{re.escape(cache.name)}\.(\d+)")
    for entry in cache.parent.glob(f".{glob.escape(cache.name)}.*"):
        match = old.fullmatch(entry.name)
        if match and int(match[1]) != os.getpid() and _pid_gone(int(match[1])):
            with contextlib.suppress(OSError):
                entry.unlink()


def write_cache(cache: Path, data: dict) -> None:
    """A cache under ``.snakemake/`` (this one, `replaced`'s), as JSON, atomically: several
    Snakemake processes (cluster jobs) may load the workflow at once; a folder that cannot be
    written is passed over (the answer is worked out again next time).

    The temporary file has the outputs' host-pid-token name (`temp_name`): named by pid
    alone, two hosts' processes of one pid shared it, and one a killed process left stayed
    for good; the stale ones are removed here as for every output, and those of the old
    name whose process is gone too (`remove_old_temps`)."""
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache)
        remove_old_temps(cache)
        tmp = temp_name(cache)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, cache)
    except OSError:  # a read-only working folder: worked out again next time
        if tmp is not None:
            # a full disk: no half-written file left; a read-only file system refuses even
            # the unlink of a file never made (EROFS), which stopped the workflow at load
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def file_sha256(path: Path, known: dict) -> str:
    """sha256 of ``path`` (resolved): the HF blob's name, the cached value, or hashed."""
    real = path.resolve()
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    stat = real.stat()
    entry = known.get(str(real))
    if isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
        return str(entry[2])
    digest = sha256_file(real)
    known[str(real)] = [stat.st_size, stat.st_mtime_ns, digest]
    return digest


def weights_sha256(encoder: str, weights: str, workdir: Path = Path(".")) -> str:
    """The sha256 of the file ``weights`` names for ``encoder``; '' for ``random`` (the seed
    is in the flags) and ``imagenet`` (torchvision's file name holds its hash)."""
    if weights in ("random", "imagenet"):
        return ""
    cache = workdir / CACHE
    data = _read(cache)
    before = json.dumps(data, sort_keys=True)
    files, last = data.setdefault("files", {}), data.setdefault("last", {})
    key = f"{encoder} {weights}"
    path = weights_file(encoder, weights)
    try:
        digest = file_sha256(path, files) if path is not None else None
    except OSError:  # unreadable here: the features job names the file and the reason
        digest = None
    if digest is None:
        return str(last.get(key, ""))
    last[key] = digest
    if json.dumps(data, sort_keys=True) != before:
        write_cache(cache, data)
    return digest


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (`torch.jit.save`): a zip with a ``code/``
    folder and ``constants.pkl``, where a state dict saved with `torch.save` has neither."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    parts = {part for name in names for part in name.split("/")[1:2]}
    return "code" in parts and "constants.pkl" in parts


def check_not_torchscript(encoder: str, weights: str) -> None:
    """Refuse, at load, a TorchScript archive as the encoder's weights, with the command that
    saves its state dict.

    Why here: torch refuses an archive under ``weights_only``, and every features job then
    failed with "not a torch file of tensors: unreadable", which misleads (the file reads).
    The features command's own loader is in every features job's code hash, so its message
    stays; the workflow says it once, before any job."""
    path = weights_file(encoder, weights)
    if path is None or not path.is_file() or not is_torchscript(path):
        return
    load = f"torch.jit.load({json.dumps(str(path))})"
    script = f'import torch; torch.save({load}.state_dict(), "weights.pth")'
    raise ZoomMILError(
        f"{path}: a TorchScript archive (a whole compiled model), not weights for encoder "
        f"{encoder}: zoommil builds the encoder itself and loads only its weights; where the "
        f"archive is that architecture, save its state dict and name that file (python -c "
        f"{shlex.quote(script)}; loading an archive runs its code: only one you trust)"
    )
