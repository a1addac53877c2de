"""A copy of a `zoommil train` checkpoint to send to another site, without the training
machine's paths.

A checkpoint records the absolute paths of its training sheet, features folder and QC table
(`zoommil evaluate`, `flops` and `profile` default to them on the training machine) and of
the encoder weights file its features were made with: sent out as it is, it names the lab's
folders and user names. The copy keeps what `zoommil predict`, `evaluate` and `flops` need
(the model, its classes, the preprocessing recipe, the weights' sha256); the receiver passes
``--sheet``, ``--exclude`` ('' for none) and, for weights from a file, ``--weights``::

    python -m zoommil.interop.share_checkpoint CKPT --out SHARED.pt [--card SHARED.md]

``--card`` writes the copy's model card beside it (`zoommil.reporting.model_card`, with
every path cut to its file name), from the results folder ``--results`` (default
``results``) where the checkpoint's method and seed have their tables and metrics.

Imported by no command; the `model_cards` rule imports its path rules (through
`zoommil.reporting.model_card`), so a change here reruns the model cards only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.features.encoders.weight_files import sha256_file
from zoommil.features.weight_keywords import WEIGHT_KEYWORDS
from zoommil.interop.tool import add_version, run_checked

#: The training machine's files, recorded only as defaults for that machine.
PATH_KEYS = ("features_dir", "sheet", "exclude")


def _is_path(value: Any) -> bool:
    """Whether ``value`` is an absolute (POSIX, home or Windows) path."""
    text = str(value) if isinstance(value, str) else ""
    return text.startswith(("/", "~")) or PureWindowsPath(text).is_absolute()


def _name(value: str) -> str:
    """The file name of a path, also of a Windows one read on POSIX."""
    return PureWindowsPath(value).name if "\\" in value else Path(value).name


def shareable_recipe(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``preprocessing`` with the weights file named by its file name.

    Why the name is kept: predict then says which file to pass (`--weights`) and still
    checks its sha256; the absolute ``weights_file`` is left out."""
    recipe = {k: v for k, v in recorded.items() if k != "weights_file"}
    weights = recipe.get("weights")
    if weights is not None and str(weights) not in WEIGHT_KEYWORDS:
        name = _name(str(weights))
        recipe["weights"] = name
        recipe["weights_note"] = f"state dict {name}"
    return {k: _name(v) if _is_path(v) else v for k, v in recipe.items()}


def shareable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint config without the training machine's paths."""
    shared = {k: v for k, v in config.items() if k not in PATH_KEYS}
    shared["preprocessing"] = shareable_recipe(config.get("preprocessing") or {})
    return {k: _name(v) if _is_path(v) else v for k, v in shared.items()}


def what_else(recipe: Mapping[str, Any]) -> str:
    """What the receiver needs besides the checkpoint to predict from slide files."""
    weights, sha = recipe.get("weights"), str(recipe.get("weights_sha256") or "?")
    encoder = recipe.get("encoder", "resnet50_layer3")
    if weights == "random":
        seed = recipe.get("weights_seed")
        return f"nothing: the encoder {encoder} has random weights (seed {seed})"
    if weights == "imagenet":
        return f"torchvision's ImageNet weights of {encoder} in its torch cache (sha256 {sha})"
    if weights == "hf":
        return f"the weights of {encoder} in its offline Hugging Face cache (sha256 {sha})"
    return f"the encoder weights file {weights} of {encoder} (sha256 {sha}), for --weights"


def share(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out``, a copy of ``checkpoint`` without the training machine's paths."""
    from zoommil.training.checkpoint import load_checkpoint, save_checkpoint

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise ZoomMILError(f"{out}: is the checkpoint itself; write the copy to another file")
    state_dict, config = load_checkpoint(checkpoint)
    return save_checkpoint(out, state_dict, shareable_config(config))


def card_inputs(checkpoint: Path, copy: Path, results: Path) -> Any:
    """The model card's files for the copy of ``checkpoint``: its method's and seed's
    metrics.json, tables, operating points and QC table under ``results``, and the training
    sheet the original records."""
    from zoommil.reporting.model_card import CardInputs
    from zoommil.training.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint)[1]
    method, seed = str(config.get("method") or config["arch"]), config.get("seed")
    return CardInputs(
        method=method,
        checkpoints=[copy],
        # no seed recorded: no run folder to look in (the card says "not available")
        metrics=[]
        if seed is None
        else [results / "models" / method / f"seed~{seed}" / "metrics.json"],
        main_table=results / "tables" / "main.csv",
        ablation_table=results / "tables" / "ablations.csv",
        operating_points=results / "operating_points",
        qc_table=results / "qc" / "slides.tsv",
        sheet=config.get("sheet"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoommil.interop.share_checkpoint",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt of `zoommil train`")
    parser.add_argument("--out", type=Path, required=True, help="the copy to send")
    parser.add_argument(
        "--card",
        type=Path,
        help="also write the copy's model card (Markdown, no path of this machine) here",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="the workflow's results folder the card reads (default: results)",
    )
    add_version(parser)
    args = parser.parse_args(argv)

    def work() -> Path:
        copy = share(args.checkpoint, args.out)
        if args.card is not None:
            from zoommil.reporting.model_card import write_card

            inputs = card_inputs(args.checkpoint, copy, args.results)
            write_card(args.card, inputs, for_sharing=True)
        return copy

    outputs = [args.out] + ([args.card] if args.card is not None else [])
    out = run_checked(parser.prog, work, outputs, [("checkpoint", args.checkpoint)])
    if out is None:
        return 2
    from zoommil.training.checkpoint import load_checkpoint

    recipe = load_checkpoint(out)[1].get("preprocessing") or {}
    print(f"{args.checkpoint} -> {out} (sha256 {sha256_file(out)})")
    print(f"left out: {', '.join(PATH_KEYS)} and the weights file's folder")
    print(f"the receiver also needs {what_else(recipe)}")
    if args.card is not None:
        print(f"model card: {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
