"""Per-slide failure markers: how one bad slide leaves a cohort run without stopping it.

With ``--no-fail`` a per-slide command (tissue, tile, features, predict) that hits a
`SlideError` writes its declared output as a small, valid *marker* carrying
``status``, ``stage`` and ``reason`` and exits 0, so Snakemake's DAG goes on; the next
stage sees the marker in its input and passes it on, and the QC checkpoint lists the slide
in results/qc/slides.tsv with its stage and reason. Anything else (a crash, a kill, a full
disk) still exits non-zero and leaves no output, so Snakemake's incomplete-output handling
works as before.

Markers: HDF5 (coords, features) with attributes only; PNG (tissue mask, heatmap) with
``zoommil.*`` text chunks; JSON (predictions) with the three keys. Each also names the slide
(absolute path), so a marker given with another slide is refused as such (`check_input`)
instead of failing that slide with the first one's reason.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.atomic import atomic_path, write_bytes_atomic
from zoommil.io.clobber import same_file

FAILED = "failed"

#: Outputs whose marker is an image (heatmaps may be any of these; PIL picks the format).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Failure:
    """Why a slide left the run: ``status`` (e.g. ``failed``, ``not_brightfield``), the stage
    that found it and the reason; ``slide``: its absolute path ("" in older markers)."""

    status: str
    stage: str
    reason: str
    slide: str = ""

    @classmethod
    def from_error(cls, error: SlideError, stage: str) -> Failure:
        status = getattr(error, "status", None) or FAILED
        stage = getattr(error, "stage", None) or stage
        return cls(str(status), stage, error.reason, os.path.abspath(error.slide))


class UpstreamFailure(SlideError):
    """An input of this stage is a failure marker: the slide failed at an earlier stage."""

    def __init__(self, slide: str | Path, failure: Failure) -> None:
        self.status = failure.status
        self.stage = failure.stage
        super().__init__(slide, f"failed at stage '{failure.stage}': {failure.reason}")
        self.reason = failure.reason


def write_marker(path: str | Path, failure: Failure) -> Path:
    """Write the failure marker in the format ``path``'s suffix calls for."""
    path = Path(path)
    suffix = path.suffix.lower()
    fields = {"status": failure.status, "stage": failure.stage, "reason": failure.reason}
    if failure.slide:
        fields["slide"] = failure.slide
    if suffix in (".h5", ".hdf5"):
        import h5py

        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as h5:
            for key, value in fields.items():
                h5.attrs[key] = value
        return write_bytes_atomic(path, buffer.getvalue())
    if suffix in IMAGE_SUFFIXES:
        return _write_image_marker(path, failure)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(fields, indent=2) + "\n")
    return path


def _write_image_marker(path: Path, failure: Failure) -> Path:
    """A small grey image saying why (readable by eye), with the fields as PNG text chunks."""
    from PIL import Image, ImageDraw, PngImagePlugin

    image = Image.new("RGB", (480, 60), (235, 235, 235))
    ImageDraw.Draw(image).text(
        (6, 6), f"slide excluded at {failure.stage}:\n{failure.reason[:70]}", fill=(0, 0, 0)
    )
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".png":
            info = PngImagePlugin.PngInfo()
            for key in ("status", "stage", "reason"):
                info.add_text(f"zoommil.{key}", getattr(failure, key))
            if failure.slide:
                info.add_text("zoommil.slide", failure.slide)
            image.save(tmp, format="PNG", pnginfo=info)
        else:
            image.save(tmp)  # the format of the suffix, which the temporary name keeps
    return path


def read_marker(path: str | Path) -> Failure | None:
    """The failure a marker records, or None for a regular output (or a missing file)."""
    path = Path(path)
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as h5:
                attrs = {
                    k: h5.attrs[k] for k in ("status", "stage", "reason", "slide") if k in h5.attrs
                }
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                text = getattr(image, "text", {}) or {}
            attrs = {k: text[f"zoommil.{k}"] for k in ("status", "stage") if f"zoommil.{k}" in text}
            if attrs:
                attrs["reason"] = text.get("zoommil.reason", "")
                attrs["slide"] = text.get("zoommil.slide", "")
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            attrs = data if isinstance(data, dict) and data.get("stage") else {}
        else:
            return None
    except (OSError, ValueError):
        return None
    status = attrs.get("status")
    if isinstance(status, bytes):
        status = status.decode()
    if not status or status == "ok" or "stage" not in attrs:
        return None
    decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    fields = (decode(attrs["stage"]), decode(attrs.get("reason", "")))
    return Failure(decode(status), *fields, decode(attrs.get("slide", "")))


def _same_slide(recorded: str, slide: str | Path) -> bool:
    """Whether a marker's recorded slide is ``slide``; where the recorded path is gone (the
    project was moved), its file name is all there is to compare."""
    if same_file(recorded, slide):
        return True
    return not Path(recorded).exists() and Path(recorded).name == Path(slide).name


def check_input(path: str | Path | None, slide: str | Path) -> None:
    """Raise `UpstreamFailure` when ``path`` is a failure marker of ``slide``; a marker of
    another slide is a usage error (it blamed ``slide`` for the other one's failure)."""
    if path is None:
        return
    failure = read_marker(path)
    if failure is None:
        return
    if failure.slide and not _same_slide(failure.slide, slide):
        raise ZoomMILError(
            f"{path} is the failure marker of another slide, {failure.slide} (failed at stage "
            f"'{failure.stage}': {failure.reason}), not a file made for {slide}"
        )
    raise UpstreamFailure(slide, failure)
