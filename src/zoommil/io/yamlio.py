"""YAML that refuses a key given twice in one mapping.

Why: PyYAML (and Snakemake's ``configfile``) keep the last of two equal keys without a word,
so a config that sets ``lr`` twice, or has two ``methods:`` blocks, runs with whichever came
last. Every YAML config the library reads goes through `load_yaml`; the workflow re-reads its
config files with `check_unique_keys`, since Snakemake parses them itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

import yaml

from zoommil.errors import ZoomMILError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that raises a `ZoomMILError` naming ``source``, the key and both
    lines where a mapping has two equal keys (``1`` and ``1.0`` or ``yes`` and ``true`` are
    equal, as in the dict they would become). Keys a ``<<`` merge brings in may be overridden:
    that is what a merge is for."""

    source = "<yaml>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                first = seen[key]
                lines = f"on line {line}" if first == line else f"(lines {first} and {line})"
                raise ZoomMILError(
                    f"{self.source}: key '{key}' is given twice {lines}; "
                    "YAML would silently keep the last, so remove one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """The data of one YAML document; ``source`` (the file) names it in a duplicate-key error.
    Syntax errors are `yaml.YAMLError`, as from `yaml.safe_load`."""
    loader = UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_unique_keys(paths: Iterable[str | Path]) -> None:
    """Raise a `ZoomMILError` for the first of ``paths`` with a key given twice in a mapping.

    For files another parser has already read (Snakemake's config files, JSON or YAML): one
    that this safe loader cannot parse (a Python tag, say) is left to that parser.
    """
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        try:
            load_yaml(text, str(path))
        except yaml.YAMLError:
            continue
