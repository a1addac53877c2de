"""ZoomMIL benchmark: slides to features, MIL models, and the Snakemake workflow.

The Python API for notebooks (docs/python-api.md) is the names below. They are loaded on
first use, so that ``import zoommil`` (and every CLI command) does not pay for torch.
"""

import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _check_workflow_library() -> None:
    """In a workflow job, refuse to run a zoommil other than the one the workflow tracks.

    Why: the workflow checks the zoommil its own process imports (`check_imported_library`)
    and exports that folder as ``ZOOMMIL_LIBRARY``; a job's environment can still hold
    another one. A conda env (``--sdm conda``) is named by its env file, not by the checkout,
    so an env folder shared by two checkouts runs the first one's code in the second one's
    jobs, while the second one's reruns follow its own code. One line, exit 2, in the job's
    log. Outside a workflow the variable is not set and nothing is checked.
    """
    tracked = os.environ.get("ZOOMMIL_LIBRARY")
    if not tracked:
        return
    here = Path(__file__).resolve().parent
    if here != Path(tracked).resolve():
        print(
            f"zoommil: error: this workflow job imports zoommil from {here}, but the workflow "
            f"tracks {tracked}: the job's environment has another checkout's zoommil (a conda "
            "env shared between checkouts? give each checkout its own --conda-prefix, or "
            "remove the env so that it is made again for this checkout)",
            file=sys.stderr,
        )
        raise SystemExit(2)


_check_workflow_library()

_EXPORTS = {
    "Classifier": "zoommil.inference.classifier",
    "load_classifier": "zoommil.inference.classifier",
    "Predictor": "zoommil.inference.predict",
    "make_encoder": "zoommil.inference.predict",
    "predict_slide": "zoommil.inference.predict",
    "read_feature_file": "zoommil.io.featurefile",
    "MODEL_NAMES": "zoommil.models",
    "build_model": "zoommil.models",
    "save_heatmap": "zoommil.reporting.attention",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoommil' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
