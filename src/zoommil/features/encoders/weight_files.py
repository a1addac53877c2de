"""Where an encoder's weight file is, found without torch: the offline Hugging Face cache
(``hf``) or a path the user gave (a file, or a folder holding the card's file).

Without torch because the workflow asks it too, when it loads (`zoommil.workflow.weights`):
the features rule's params carry the file's sha256, so other weights behind the same keyword
or path (another snapshot, a file replaced in place) rerun feature extraction.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.registry import EncoderSpec, get_spec

#: torchvision's IMAGENET1K_V1 ResNet-50 file (`--weights imagenet`) and where it comes from.
IMAGENET_FILE = "resnet50-0676ba61.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"
#: The end of a missing-weights message that offers random weights: `zoommil predict` drops it
#: for a checkpoint's own weights, whose sha256 check then refuses random ones.
DEMO_ALTERNATIVE = ", or --weights random (demo only)"


def imagenet_cache_path() -> Path:
    """Where torchvision keeps that file, by `torch.hub.get_dir`'s rule ($TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch; then hub/checkpoints), without torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints" / IMAGENET_FILE


def unseen_weights(encoder: str, weights: str) -> str | None:
    """Why the file of cached weights (``imagenet``, ``hf``) is not on this machine, else
    None: the workflow says it when it loads, as a warning (the nodes that extract the
    features may have a cache this machine lacks), instead of after every slide's tiling."""
    if weights == "imagenet":
        path = imagenet_cache_path()
        return None if path.is_file() else f"ImageNet weights not found at {path}"
    if weights == "hf":
        try:
            resolve_hf_weights(get_spec(encoder))
        except ZoomMILError as error:
            return str(error)
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expanded(path: str) -> Path:
    """``~`` and ``$VARS`` expanded, in huggingface_hub's order (``constants.py``)."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def hf_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time, resolved as
    huggingface_hub resolves it (which also fills it): ``HF_HUB_CACHE``, else the legacy
    ``HUGGINGFACE_HUB_CACHE`` (still honoured there), else ``$HF_HOME/hub``, else
    ``($XDG_CACHE_HOME or ~/.cache)/huggingface/hub``; each with ``~`` and ``$VARS``
    expanded. An empty variable counts as unset."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return _expanded(os.environ[name])
    if os.environ.get("HF_HOME"):
        return _expanded(os.environ["HF_HOME"]) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return _expanded(base) / "huggingface" / "hub"


def _snapshot_file(cache: Path, repo_id: str, filename: str) -> Path | None:
    """The cached file of ``repo_id``: the ``main`` ref's snapshot first, else any snapshot."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the layout is simple enough to read without the library
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    snapshots = cache / _repo_folder(repo_id) / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [p / filename for p in snapshots.iterdir() if (p / filename).is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _repo_folder(repo_id: str) -> str:
    return f"models--{repo_id.replace('/', '--')}"


def _broken_links(cache: Path, repo_id: str, filenames: Sequence[str]) -> Path | None:
    """A snapshot link to one of ``filenames`` whose blob is missing: said as such, where
    "not in the cache" sent the user to download a file the cache seems to hold."""
    snapshots = cache / _repo_folder(repo_id) / "snapshots"
    if not snapshots.is_dir():
        return None
    for snapshot in sorted(snapshots.iterdir()):
        for name in filenames:
            link = snapshot / name
            if link.is_symlink() and not link.exists():
                return link
    return None


def _terms(spec: EncoderSpec) -> str:
    """The licence and gating of a spec's weights, said where the user goes to fetch them:
    several are non-commercial, which a user should know before fetching and using them."""
    terms = [f"licence {spec.licence}"] if spec.licence else []
    if spec.gated:
        terms.append("gated: accept the licence on huggingface.co first")
    return f" ({'; '.join(terms)})" if terms else ""


def resolve_hf_weights(spec: EncoderSpec) -> Path:
    """The spec's weight file in the offline HF cache; never downloads."""
    if not spec.hf_repo or not spec.hf_files:
        raise ZoomMILError(
            f"encoder {spec.name} has no Hugging Face weights: use --weights "
            + ("imagenet, random or PATH" if spec.name == "resnet50_layer3" else "random or PATH")
        )
    cache = hf_cache_dir()
    for filename in spec.hf_files:
        found = _snapshot_file(cache, spec.hf_repo, filename)
        if found is not None:
            return found
    broken = _broken_links(cache, spec.hf_repo, spec.hf_files)
    if broken:
        raise ZoomMILError(
            f"{broken}: the Hugging Face cache links {spec.name}'s weights to a missing file "
            f"{os.path.normpath(broken.parent / os.readlink(broken))} (a cache copied without "
            "its blobs/ folder, or a download "
            f"cut short): copy {cache / _repo_folder(spec.hf_repo)} whole, or pass --weights PATH"
        )
    raise ZoomMILError(
        f"{spec.name}: weights not in the offline Hugging Face cache {cache}: place "
        f"{spec.hf_repo}/{spec.hf_files[0]}{_terms(spec)} there (e.g. `hf download {spec.hf_repo} "
        f"{spec.hf_files[0]}` on a machine with internet), or pass --weights PATH (in the "
        "workflow: features.weights)"
    )


def local_weights_path(weights: str, spec: EncoderSpec) -> Path:
    """A weights path given by the user: a file, or a folder holding one of the spec's files."""
    path = Path(weights).expanduser()
    if path.is_dir():
        names = list(dict.fromkeys((*spec.hf_files, "model.safetensors", "pytorch_model.bin")))
        for name in names:
            if (path / name).is_file():
                return path / name
        raise ZoomMILError(
            f"{path}: folder holds none of {', '.join(names)}, the file names the weights of "
            f"encoder {spec.name} are looked for under; pass the weights file itself"
        )
    if not path.is_file():
        choices = "imagenet, random" if spec.name == "resnet50_layer3" else "random, hf"
        raise ZoomMILError(
            f"{path}: weights file not found for encoder {spec.name} (use --weights {choices} "
            "or a path to a .safetensors / state-dict file)"
        )
    return path


def weights_file(encoder: str, weights: str) -> Path | None:
    """The file ``weights`` of ``encoder`` reads, where this machine sees it; None for
    ``random`` and ``imagenet`` (torchvision's file name holds its hash), and where the cache
    or the path is not visible here (the features job then says what is missing)."""
    spec = get_spec(encoder)
    try:
        if weights == "hf":
            return resolve_hf_weights(spec)
        if weights not in ("random", "imagenet"):
            return local_weights_path(weights, spec)
    except ZoomMILError:
        return None
    return None
