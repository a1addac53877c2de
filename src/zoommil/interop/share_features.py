"""A copy of a features folder (and its coords) to send to another lab, without the lab's
paths.

`zoommil features` records in every feature file the slide's path (``slide``) and the coords
file's (``coords_file``), and `zoommil tile` the slide's resolved path (``slide_path``) and
any mask file's in every coords file: absolute in most runs, so they name the lab's folders
and user names. Weights from a file add its path (``weights``, ``weights_file``,
``weights_note``). The copy keeps every dataset and every other attribute as it is, and the
file names of those paths (``weights`` by name is what `zoommil predict` asks for, as in
`share_checkpoint`'s copy). Left out: ``slide_path`` (`zoommil features` compares it with
the resolved path of the slide it is given: a file name never matches, so it would refuse
the coords for the very slide they were made of), ``weights_file`` (predict's fallback for
a relative ``weights``) and, with ``--drop-quickhash``, ``slide_quickhash`` (whoever holds a
slide can match a file to it; nothing on the receiving side needs it to train or
evaluate)::

    python -m zoommil.interop.share_features results/features --out SHARED \\
        [--coords results/coords] [--drop-quickhash]

Features go to ``SHARED/*.h5`` (the receiver's ``features_dir``), coords to
``SHARED/coords/*.h5``. A file with a path left in an attribute this does not know (say,
inside a JSON value) is refused, naming the attribute, and nothing is written.

Imported by no command or rule: a change here reruns no workflow job (README, "Partial
reruns").
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from zoommil.errors import ZoomMILError
from zoommil.features.weight_keywords import WEIGHT_KEYWORDS
from zoommil.interop.share_checkpoint import _is_path, _name
from zoommil.interop.tool import add_version, run_checked
from zoommil.io.clobber import same_file
from zoommil.io.featurefile import decode_attr, write_hdf5_bytes
from zoommil.recipe import mag_key

#: Attributes that hold a path, kept as the file name (a relative one too: folder names).
NAME_ATTRS = ("slide", "coords_file", "tissue_mask", "weights")
#: Attributes left out (the module docstring says why).
DROP_ATTRS = ("slide_path", "weights_file")
QUICKHASH = "slide_quickhash"
STATE_DICT = "state dict "
#: An absolute POSIX, home, Windows or UNC path inside a text.
_PATH_INSIDE = re.compile(r"(?:^|[\s\"'(=,\[])(?:/[^\s/]|~[/\\]|[A-Za-z]:[\\/]|\\\\)")


@dataclass
class Plan:
    """What one input file becomes: ``out`` and per object (``""``: the root), the
    attributes to write as ``(name, value, dtype)``."""

    source: Path
    out: Path
    attrs: dict[str, list[tuple[str, Any, Any]]]


def shared_value(name: str, value: Any) -> Any:
    """The value of attribute ``name`` in the copy (as h5py reads it); None: left out."""
    if not isinstance(value, str | bytes):
        return value
    text = value.decode() if isinstance(value, bytes) else value
    if text == "null" or (name == "weights" and text in WEIGHT_KEYWORDS):
        return value
    if name in NAME_ATTRS or _is_path(text):
        return _name(text)
    if name == "weights_note" and text.startswith(STATE_DICT):
        return STATE_DICT + _name(text[len(STATE_DICT) :])
    return value


def _strings(value: Any) -> Iterator[str]:
    """Every string in a decoded attribute value (JSON lists and dicts included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def shared_attrs(
    path: Path, where: str, attrs: h5py.AttributeManager, drop_quickhash: bool
) -> list[tuple[str, Any, Any]]:
    """The attributes of one object of ``path`` in the copy, each with its stored dtype; a
    path left anywhere in them is a `ZoomMILError` naming the file and the attribute."""
    dropped = DROP_ATTRS + ((QUICKHASH,) if drop_quickhash else ())
    kept = []
    for name in attrs:
        if name in dropped:
            continue
        value = shared_value(name, attrs[name])
        for text in _strings(decode_attr(value)):
            if _PATH_INSIDE.search(text):
                raise ZoomMILError(
                    f"{path}: attribute {where}{name} holds a path this tool does not know how "
                    "to shorten; nothing written (remove it, or share another way)"
                )
        kept.append((name, value, attrs.get_id(name).dtype))
    return kept


def plan_file(path: Path, out: Path, part: str, drop_quickhash: bool) -> Plan:
    """Read and check one input's attributes; a file that is no HDF5, or no zoommil
    ``part`` file (``features``: ``mags`` and their ``*_patches``), is a `ZoomMILError`."""
    try:
        with h5py.File(path, "r") as h5:
            mags = h5.attrs.get("mags")
            key = "patches" if part == "features" else "coords"
            if mags is None or not all(f"{mag_key(m)}_{key}" in h5 for m in list(mags)):
                raise ZoomMILError(f"{path}: not a zoommil {part} file (no mags and their {key})")
            attrs = {"": shared_attrs(path, "", h5.attrs, drop_quickhash)}
            objects: list[str] = []
            h5.visit(objects.append)
            for name in objects:
                attrs[name] = shared_attrs(path, f"{name}/", h5[name].attrs, drop_quickhash)
    except (OSError, TypeError, ValueError) as error:
        raise ZoomMILError(f"{path}: not an HDF5 {part} file ({error})") from error
    return Plan(path, out, attrs)


def write_copy(plan: Plan) -> Path:
    """Write ``plan.out``: the datasets copied whole, the planned attributes, nothing else
    (a new file, so no freed space still holds the old values)."""
    buffer = io.BytesIO()
    with h5py.File(plan.source, "r") as src, h5py.File(buffer, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name=name, without_attrs=True)
        for where, attrs in plan.attrs.items():
            target = dst[where] if where else dst
            for name, value, dtype in attrs:
                target.attrs.create(name, value, dtype=dtype)
    return write_hdf5_bytes(plan.out, buffer)


def input_files(folder: Path, part: str) -> list[Path]:
    """The ``*.h5`` files of an input folder; none, or no folder, is a `ZoomMILError`."""
    if not folder.is_dir():
        raise ZoomMILError(f"{folder}: {part} folder not found")
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise ZoomMILError(f"{folder}: no {part} files (*.h5) in it")
    return files


def check_new(out: Path, inputs: list[tuple[Path, Path, str]]) -> None:
    """Refuse an output that is an input folder or not a new or empty folder: a copy sent
    must not carry files of an earlier copy (a slide since removed) or a folder's own."""
    for folder, dest, part in inputs:
        if same_file(dest, folder):
            raise ZoomMILError(f"output {dest} is the {part} folder; give another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZoomMILError(f"{out}: exists and is not an empty folder; give a new one")


def share(jobs: list[tuple[Path, Path, str]], drop_quickhash: bool = False) -> list[Path]:
    """Check every input of ``jobs`` (input, copy, part), then write the copies; copies
    written are removed again on a failure."""
    plans = [plan_file(path, dest, part, drop_quickhash) for path, dest, part in jobs]
    written: list[Path] = []
    try:
        for plan in plans:
            written.append(write_copy(plan))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.interop.share_features",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument("features", type=Path, help="folder of feature files (results/features)")
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder to send")
    parser.add_argument("--coords", type=Path, help="also copy this coords folder to OUT/coords")
    parser.add_argument(
        "--drop-quickhash", action="store_true", help="also leave out each slide's quickhash"
    )
    add_version(parser)
    args = parser.parse_args(argv)
    folders = [(args.features, args.out, "features")]
    if args.coords is not None:
        folders.append((args.coords, args.out / "coords", "coords"))

    def listing() -> list[tuple[list[Path], Path, str]]:
        check_new(args.out, folders)
        return [(input_files(src, part), dest, part) for src, dest, part in folders]

    listed = run_checked(parser.prog, listing, [], [])
    if listed is None:
        return 2
    jobs = [(path, dest / path.name, part) for files, dest, part in listed for path in files]
    written = run_checked(
        parser.prog,
        lambda: share(jobs, args.drop_quickhash),
        [dest / files[0].name for files, dest, _ in listed],
        [(f"{part} file", path) for path, _, part in jobs],
    )
    if written is None:
        return 2
    counts = [sum(1 for _, _, part in jobs if part == kind) for kind in ("features", "coords")]
    coords = f", {counts[1]} coords files to {args.out / 'coords'}" if args.coords else ""
    print(f"{args.features} -> {args.out}: {counts[0]} feature files{coords}")
    print(f"file names only: {', '.join(NAME_ATTRS)}, the path in weights_note")
    left = [*DROP_ATTRS, *([QUICKHASH] if args.drop_quickhash else [])]
    print(f"left out: {', '.join(left)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
