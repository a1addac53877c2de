"""Per-method train configs (docs/ARCHITECTURE.md "Train config").

One config per method, so that adding a method or a seed adds jobs and never touches the
configs (and hence the models) of the others, while changing a training parameter changes
every config that carries it. The workflow passes it to the train job as a `params:` value
(YAML text, compared by Snakemake's params rerun trigger) and the job writes it next to the
checkpoint, so no job of its own is needed to write it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


def _plain(value: Any) -> Any:
    """Plain YAML types (no numpy, tuples or snakemake containers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def build_train_config(
    method: str,
    spec: Mapping[str, Any],
    train: Mapping[str, Any],
    mags: Sequence[float],
    classes: Sequence[str] | None,
    sheet: str,
    features_dir: str,
    exclude: str,
) -> dict[str, Any]:
    """The `zoommil train --config` content for one method; seeds are not part of it."""
    config: dict[str, Any] = {
        "features_dir": features_dir,
        "sheet": sheet,
        "exclude": exclude,
        "mags": sorted(float(m) for m in mags),
        "epochs": int(train.get("epochs", 100)),
        "lr": float(train.get("lr", 1.0e-4)),
        "weight_decay": float(train.get("weight_decay", 0.0)),
        "selection": str(train.get("selection", "val_loss")),
    }
    if classes:
        config["classes"] = list(classes)
    for key, value in (train.get("extra") or {}).items():
        config.setdefault(key, value)
    config["methods"] = {method: dict(spec)}
    return _plain(config)


def dump_train_config(config: Mapping[str, Any]) -> str:
    """The YAML text of a train config (plain types, keys in the order given)."""
    return yaml.safe_dump(_plain(config), sort_keys=False)


def write_train_config(config: Mapping[str, Any], out: str | Path) -> None:
    """Write YAML atomically (tmp file + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dump_train_config(config), encoding="utf-8")
    tmp.replace(out)
