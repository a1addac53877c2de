"""The coords HDF5 of `zoommil tile`: one slide's lattice and the recipe that made it.

Per magnification ``{mag}x_coords`` (int64 [N, 2] row, col) and ``{mag}x_xy`` (int64 [N, 2]
level-0 x, y); ``tissue_fraction`` (float32 [N_parents], aligned with the lowest
magnification's rows); attributes: the recipe's tiling part (mags, patch_size, tissue
method/params/threshold, no-tissue policy), side0 (per mag), mpp, mpp_source, dimensions.
Written atomically.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from zoommil import __version__
from zoommil.errors import ZoomMILError
from zoommil.io.featurefile import decode_attr, encode_attr, write_hdf5_bytes
from zoommil.recipe import mag_key
from zoommil.wsi.lattice import Lattice, check_lattice


def write_coords(path: str | Path, lattice: Lattice) -> Path:
    """Write the coords HDF5 atomically (temporary file in the same folder, then rename)."""
    attrs = {
        **lattice.attrs,
        "mags": [float(m) for m in lattice.mags],
        "patch_size": lattice.patch_size,
        "side0": [int(s) for s in lattice.sides],
        "zoommil_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    buffer = io.BytesIO()  # built in memory, written in one checked step (full disk: one line)
    with h5py.File(buffer, "w") as h5:
        for mag, rc, xy in zip(lattice.mags, lattice.coords, lattice.xy, strict=True):
            key = mag_key(mag)
            h5.create_dataset(f"{key}_coords", data=np.asarray(rc, np.int64).reshape(-1, 2))
            h5.create_dataset(f"{key}_xy", data=np.asarray(xy, np.int64).reshape(-1, 2))
        h5.create_dataset("tissue_fraction", data=np.asarray(lattice.tissue_fraction, np.float32))
        for name, value in attrs.items():
            h5.attrs[name] = encode_attr(value)
    return write_hdf5_bytes(path, buffer)


def load_coords(path: str | Path, check: bool = False) -> Lattice:
    """Read a coords HDF5 written by `write_coords` (mags lowest first); ``check``: also
    verify the lattice invariants (`check_lattice`), as readers of the patches need."""
    path = Path(path)
    if not path.is_file():
        raise ZoomMILError(f"{path}: coords file not found (make it with `zoommil tile`)")
    try:
        with h5py.File(path, "r") as h5:
            attrs = {name: decode_attr(value) for name, value in h5.attrs.items()}
            mags = [float(m) for m in attrs["mags"]]
            coords = [h5[f"{mag_key(m)}_coords"][()] for m in mags]
            xy = [h5[f"{mag_key(m)}_xy"][()] for m in mags]
            fractions = h5["tissue_fraction"][()]
    except (OSError, KeyError) as error:
        raise ZoomMILError(f"{path}: not a valid coords file ({error})") from error
    lattice = Lattice(
        mags=mags,
        patch_size=int(attrs["patch_size"]),
        sides=[int(s) for s in attrs["side0"]],
        coords=coords,
        xy=xy,
        tissue_fraction=fractions,
        attrs=attrs,
    )
    if check:
        check_lattice(lattice, str(path))
    return lattice
