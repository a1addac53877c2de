"""Read and write the per-slide feature HDF5 (the contract of DESIGN.md).

Keys per magnification m (formatted by `mag_key`, e.g. ``2.5x``, ``10.0x``):
``{m}_patches`` float32 [N_m, D], ``{m}_coords`` int [N_m, 2] grid (row, col) and
``{m}_xy`` int64 [N_m, 2] level-0 (x, y). Rows are depth-first: the descendants of row i at
the next listed magnification are rows ``i * r .. (i + 1) * r - 1`` with ``r = N_next / N_prev``.
Files are written to a temporary name and renamed, so a crash never leaves a partial file.
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.atomic import GuardedFile, write_bytes_atomic
from zoommil.recipe import mag_key
from zoommil.wsi.lattice import depth_first_problem

__all__ = ["FEATURE_LIMIT", "PARTS", "FeatureBag", "check_finite", "dataset_problem",
           "decode_attr", "encode_attr", "layout_problem", "listed_mags", "mag_key",
           "patch_mags", "read_attrs", "read_feature_file", "row_peaks",
           "write_feature_file"]  # fmt: skip

#: The datasets of one magnification ``{m}_{part}``, each with one row per patch.
PARTS = ("patches", "coords", "xy")


@dataclass
class FeatureBag:
    """All magnifications of one slide, lowest first."""

    mags: list[float]
    feats: list[np.ndarray]
    coords: list[np.ndarray]
    xy: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def num_patches(self) -> list[int]:
        return [len(f) for f in self.feats]


def encode_attr(value: Any) -> Any:
    """An HDF5 attribute value: scalars, strings and numeric arrays as they are, else JSON.

    Shared with the coords file (`zoommil.io.coords`); `decode_attr` reverses it.
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return json.dumps(value.tolist())
    if isinstance(value, bool | int | float | str | np.generic | np.ndarray):
        return value
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return json.dumps(value)


def decode_attr(value: Any) -> Any:
    """A plain Python value of an attribute written by `encode_attr` (JSON decoded)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == "null":
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


#: Feature values must stay below this in magnitude: the square of a larger float32 value
#: overflows (float32 max 3.4e38), so attention scores and losses turn NaN (TransMIL's do
#: from ~1e19, measured). Encoders give values of order 1-100.
FEATURE_LIMIT = 2.0**64


def row_peaks(rows: np.ndarray) -> np.ndarray:
    """Per row (first axis): the largest |value|, NaN where the row has a NaN. A row-wise max
    and min (NaN propagates through both), no temporary the size of ``rows``."""
    flat = rows.reshape(len(rows), -1)
    return np.maximum(flat.max(axis=1), -flat.min(axis=1))


def check_finite(slide: str | Path, mag: float, start: int, rows: np.ndarray) -> None:
    """Refuse features with NaN, inf or values above `FEATURE_LIMIT` in magnitude
    (`SlideError` naming the slide and magnification).

    Why at the writer: such a file passes every shape check and then stops training of every
    method (NaN losses, NaN probabilities); refused here, the slide fails at `features` with
    its reason, and the rest of the cohort goes on.
    """
    if rows.size == 0:
        return
    peaks = row_peaks(rows)
    bad = ~np.isfinite(peaks)
    if bad.any():
        first = start + int(np.flatnonzero(bad)[0])
        raise SlideError(
            slide,
            f"features at {mag_key(mag)} contain NaN or inf ({int(np.sum(bad))} of rows "
            f"{start}..{start + len(rows) - 1}, first row {first}): refused, not written",
        )
    row = int(np.argmax(peaks))
    if peaks[row] > FEATURE_LIMIT:
        raise SlideError(
            slide,
            f"features at {mag_key(mag)} are too large to be features (max |x| = "
            f"{float(peaks[row]):.3g} at row {start + row}, above {FEATURE_LIMIT:.2g}, where "
            "their squares overflow float32): refused, not written; check the encoder weights",
        )


def write_feature_file(
    path: str | Path,
    mags: Sequence[float],
    feats: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    xy: Sequence[np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    datasets: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write one slide's features atomically (built in memory, written to a temporary file
    in the same folder, then renamed).

    ``datasets``: extra arrays (e.g. ``tissue_fraction`` per parent) stored as datasets, since
    HDF5 attributes are limited to 64 KiB. Non-finite features are refused (`check_finite`,
    the slide named by ``path``).
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for mag, f, c, p in zip(mags, feats, coords, xy, strict=True):
            key = mag_key(mag)
            f = np.asarray(f, dtype=np.float32)
            check_finite(path, mag, 0, f)
            f = f.reshape(len(f), -1 if f.size else (f.shape[-1] if f.ndim > 1 else 0))
            chunks = (min(len(f), 1024), f.shape[1]) if f.size else None
            h5.create_dataset(f"{key}_patches", data=f, chunks=chunks)
            h5.create_dataset(f"{key}_coords", data=np.asarray(c, dtype=np.int64).reshape(-1, 2))
            h5.create_dataset(f"{key}_xy", data=np.asarray(p, dtype=np.int64).reshape(-1, 2))
        for name, value in (datasets or {}).items():
            h5.create_dataset(name, data=np.asarray(value))
        h5.attrs["mags"] = np.asarray([float(m) for m in mags])
        for name, value in (attrs or {}).items():
            h5.attrs[name] = encode_attr(value)
    return write_hdf5_bytes(path, buffer)


def write_hdf5_bytes(path: str | Path, buffer: io.BytesIO) -> Path:
    """Write an HDF5 image built in memory atomically.

    HDF5 never writes to the disk itself: a full disk during its writes crashed the process
    (segfault) instead of raising; plain OS writes raise `OSError`, which becomes one line.
    """
    return write_bytes_atomic(path, buffer.getvalue())


class FeatureFileWriter:
    """Write a feature file while the features are computed: rows arrive in order, per
    magnification, and go to chunked datasets of the final size, so memory holds one chunk
    per magnification however large the slide. Same file as `write_feature_file`.

    Use inside ``atomic_path`` (the caller renames on success)::

        with atomic_path(out) as tmp, FeatureFileWriter(tmp, mags, sizes, dim) as w:
            w.write(k, start_row, rows)
            ...
            w.finish(coords, xy, attrs, datasets)

    Rows with NaN, inf or values too large for float32 arithmetic are refused
    (`check_finite`): a `SlideError` naming ``slide``
    (default: ``path``) and the magnification.
    """

    CHUNK_ROWS = 1024

    def __init__(
        self,
        path: str | Path,
        mags: Sequence[float],
        sizes: Sequence[int],
        dim: int,
        slide: str | Path | None = None,
    ) -> None:
        self.slide = path if slide is None else slide
        # through a GuardedFile: a full disk is an OSError at close, not an HDF5 segfault
        self._file = GuardedFile(path)
        self.h5 = h5py.File(self._file, "w")
        self.mags = [float(m) for m in mags]
        self.dim = int(dim)
        self.datasets = []
        self.buffers: list[list[np.ndarray]] = [[] for _ in self.mags]
        self.next_row = [0 for _ in self.mags]  # first row not yet written to the file
        for mag, n in zip(self.mags, sizes, strict=True):
            chunks = (min(int(n), self.CHUNK_ROWS), self.dim) if n else None
            self.datasets.append(
                self.h5.create_dataset(
                    f"{mag_key(mag)}_patches", shape=(int(n), self.dim), dtype="f4", chunks=chunks
                )
            )

    def write(self, k: int, start: int, rows: np.ndarray) -> None:
        """Rows ``start .. start + len(rows) - 1`` of magnification ``k`` (in order)."""
        buffered = sum(len(b) for b in self.buffers[k])
        if start != self.next_row[k] + buffered:
            raise ValueError(f"rows of {mag_key(self.mags[k])} out of order at {start}")
        rows = np.asarray(rows, dtype=np.float32)
        check_finite(self.slide, self.mags[k], start, rows)
        self.buffers[k].append(rows)
        if buffered + len(rows) >= self.CHUNK_ROWS:
            self._flush(k)

    def _flush(self, k: int) -> None:
        if not self.buffers[k]:
            return
        block = np.concatenate(self.buffers[k])
        a = self.next_row[k]
        self.datasets[k][a : a + len(block)] = block
        self.next_row[k] = a + len(block)
        self.buffers[k].clear()

    def finish(
        self,
        coords: Sequence[np.ndarray],
        xy: Sequence[np.ndarray],
        attrs: Mapping[str, Any] | None = None,
        datasets: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Flush, check every row was written, add coords, xy, extra datasets and attributes."""
        for k, (mag, c, p) in enumerate(zip(self.mags, coords, xy, strict=True)):
            self._flush(k)
            if self.next_row[k] != len(self.datasets[k]):
                raise ValueError(
                    f"{mag_key(mag)}: {self.next_row[k]} of {len(self.datasets[k])} rows written"
                )
            key = mag_key(mag)
            self.h5.create_dataset(f"{key}_coords", data=np.asarray(c, np.int64).reshape(-1, 2))
            self.h5.create_dataset(f"{key}_xy", data=np.asarray(p, np.int64).reshape(-1, 2))
        for name, value in (datasets or {}).items():
            self.h5.create_dataset(name, data=np.asarray(value))
        self.h5.attrs["mags"] = np.asarray(self.mags)
        for name, value in (attrs or {}).items():
            self.h5.attrs[name] = encode_attr(value)

    def close(self) -> None:
        try:
            self.h5.close()
        finally:
            self._file.close()

    def __enter__(self) -> FeatureFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Attributes of a feature file, with JSON-encoded values decoded (a copy the caller owns).

    Cached per version of the file (inode, size, modification time; files are replaced by
    rename, never rewritten in place): decoding ~40 attributes costs ~6 ms a file, and a
    training job needs them three times per file (the shared recipe, the one-encoder check,
    loading the bags), ~1 s per job on the demo's 60 files.
    """
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return copy.deepcopy(_decoded_attrs(*key))


@lru_cache(maxsize=4096)
def _decoded_attrs(path: str, inode: int, size: int, mtime_ns: int) -> dict[str, Any]:
    with h5py.File(path, "r") as h5:
        return {name: decode_attr(value) for name, value in h5.attrs.items()}


def patch_mags(h5: h5py.File) -> list[str]:
    """The magnifications whose ``*x_patches`` dataset the open file really has, lowest first
    (its ``mags`` attribute may list more, e.g. after a dataset was removed). Names that are
    not a number before the ``x`` are left out: this lists what a file has in error messages."""
    keys = [k[: -len("_patches")] for k in h5.keys() if k.endswith("x_patches")]
    return sorted((k for k in keys if _number(k[:-1]) is not None), key=lambda m: float(m[:-1]))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def listed_mags(value: Any, path: str | Path) -> list[float]:
    """The magnifications of a feature file's ``mags`` attribute (as `decode_attr` returns it;
    [] when there is none); a value that is not numbers is a `ZoomMILError` naming the file.

    Why: a hand-made or foreign file with e.g. the string ``"2.5,5,10"`` there was read one
    character at a time, and training stopped on a ValueError traceback."""
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    ):
        return [float(v) for v in values]
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ZoomMILError(
        f"{path}: the feature file's 'mags' attribute is {shown}, not a list of magnifications "
        "(positive numbers, e.g. [2.5, 5.0, 10.0])"
    )


def dataset_problem(h5: h5py.File, mags: Sequence[float]) -> str | None:
    """Why the datasets of ``mags`` in an open feature file cannot be read as bags, else None.

    Each magnification needs ``_patches`` [N, D], ``_coords`` [N, 2] and ``_xy`` [N, 2] with
    one N. Shapes only, nothing is read. Why: a missing ``_coords`` ended in h5py's KeyError
    traceback, and row counts that differ gave bags whose features and positions disagree.
    """
    for mag in mags:
        key = mag_key(mag)
        items = {part: h5.get(f"{key}_{part}") for part in PARTS}
        missing = [
            f"{key}_{part}"
            for part, item in items.items()
            if not isinstance(item, h5py.Dataset) or not item.shape
        ]
        if len(missing) == len(PARTS):
            return (
                f"lacks dataset(s) {', '.join(missing)} "
                f"(it has magnifications {', '.join(patch_mags(h5)) or 'none'})"
            )
        if missing:
            present = [f"{key}_{part}" for part in PARTS if f"{key}_{part}" not in missing]
            return f"lacks dataset(s) {', '.join(missing)} (of {key} it has {', '.join(present)})"
        rows = {part: int(item.shape[0]) for part, item in items.items()}
        if len(set(rows.values())) > 1:
            found = ", ".join(f"{part} {n}" for part, n in rows.items())
            return f"rows at {key} differ between datasets ({found})"
        for part, width in (("patches", None), ("coords", 2), ("xy", 2)):
            shape = items[part].shape
            if len(shape) != 2 or (width is not None and shape[1] != width):
                wanted = f"[N, {width}]" if width else "[N, D]"
                return f"dataset {key}_{part} has shape {list(shape)}, not {wanted}"
    return None


def layout_problem(h5: h5py.File, mags: Sequence[float]) -> str | None:
    """Why ``mags`` (lowest first) of an open feature file break the contract bags rely on,
    else None: their datasets (`dataset_problem`), then ``N_next = 4^d N_prev`` and the
    depth-first row order (`zoommil.wsi.lattice.depth_first_problem`). Reads the coords
    (16 bytes a row), never the features."""
    problem = dataset_problem(h5, mags)
    if problem is not None:
        return problem
    return depth_first_problem(mags, [h5[f"{mag_key(m)}_coords"][()] for m in mags])


def read_feature_file(path: str | Path, mags: Sequence[float] | None = None) -> FeatureBag:
    """Read the requested magnifications (default: all its ``mags`` attribute lists), lowest
    first. A file without their datasets, with datasets of other shapes (`dataset_problem`),
    with rows out of depth-first order (`depth_first_problem`) or whose ``mags`` attribute is
    not numbers is a `ZoomMILError` naming it."""
    path = Path(path)
    if not path.exists():
        raise ZoomMILError(f"{path}: feature file not found")
    try:
        attrs = read_attrs(path)
        available = sorted(listed_mags(attrs.get("mags"), path))
        with h5py.File(path, "r") as h5:
            wanted = sorted(float(m) for m in mags) if mags is not None else available
            missing = [m for m in wanted if f"{mag_key(m)}_patches" not in h5]
            if missing:
                raise ZoomMILError(
                    f"{path}: magnification(s) {', '.join(mag_key(m) for m in missing)} not in "
                    f"the feature file (it has {', '.join(patch_mags(h5)) or 'none'})"
                )
            problem = dataset_problem(h5, wanted)
            if problem is not None:
                raise ZoomMILError(f"{path}: {problem}")
            feats = [h5[f"{mag_key(m)}_patches"][()] for m in wanted]
            coords = [h5[f"{mag_key(m)}_coords"][()] for m in wanted]
            xy = [h5[f"{mag_key(m)}_xy"][()] for m in wanted]
    except OSError as error:
        raise ZoomMILError(f"{path}: cannot read feature file ({error})") from error
    problem = depth_first_problem(wanted, coords)
    if problem is not None:
        raise ZoomMILError(f"{path}: {problem}")
    return FeatureBag(mags=wanted, feats=feats, coords=coords, xy=xy, attrs=attrs)
