"""`zoommil features`: encoder features (ResNet-50 layer3 by default, or a registered
foundation model) of every patch of a coords file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zoommil.commands.options import (
    add_device,
    add_encoder_threads,
    add_no_fail,
    add_no_progress,
    add_precision,
    check_seed,
    show_progress,
    weights_file,
)
from zoommil.features.encoders.registry import encoder_names
from zoommil.recipe import default, default_weights, mag_key

log = logging.getLogger("zoommil.features.extraction")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="encoder features of every patch of a coords file (HDF5)",
        description=(
            "Encode every patch listed in a coords file from 'zoommil tile' with --encoder: by "
            "default torchvision's ResNet-50 truncated after layer3 + global average pooling "
            "(1024-d, 256 px input, no resize, ImageNet mean/std), as in ZoomMIL; or a registered "
            "pathology foundation model (UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath, "
            "Phikon-v2), whose own transform resizes the 256 px patches and normalises them as "
            "its model card says (docs/encoders.md). Each lowest-magnification parent is "
            "read whole at its magnification, and each finer magnification one patch of the "
            "previous one at a time, from the coarsest pyramid level fine enough: the reads "
            "'zoommil predict' makes when it zooms, so a patch has the same pixels in both. "
            "Writes '{mag}x_patches' (float32 [N, D], D the encoder's dimension), "
            "'{mag}x_coords' (row, col) and '{mag}x_xy' (level-0 x, y) per magnification, "
            "depth-first rows, plus provenance attributes (encoder, dimension, input size, "
            "weights and their sha256, mpp, tissue parameters, device, precision)."
        ),
    )
    parser.add_argument(
        "slide", type=Path, help="slide file (the one the coords file was made for)"
    )
    parser.add_argument(
        "--coords", type=Path, required=True, help="coords HDF5 from 'zoommil tile'"
    )
    parser.add_argument("--out", type=Path, required=True, help="feature HDF5 to write")
    parser.add_argument(
        "--slide-id",
        help="the slide's id in the file's attributes (default: the file name without its "
        "extension; the workflow passes the sheet's slide_id)",
    )
    parser.add_argument(
        "--encoder",
        default=default("encoder"),
        choices=encoder_names(),
        help=f"registered patch encoder (default {default('encoder')}, the paper's)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help=(
            "'imagenet' (resnet50_layer3: torchvision IMAGENET1K_V1 from the torch hub cache, "
            "never downloaded; its default), 'hf' (the "
            "encoder's file from the offline Hugging Face cache, never "
            "downloaded; the default of the other encoders), 'random' (seeded random init: "
            "demos/tests only, recorded in the file) or a path to a .safetensors / state-dict "
            "file (or a folder holding the model's file)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=default("weights_seed"),
        help=f"seed of --weights random (default {default('weights_seed')}); other weights "
        "ignore it, with a warning when it is not the default",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="level-0 um/px override; must agree with the coords file (as given to tile)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="patches per encoder call (default: 4 on CPU, where small batches are fastest; "
        "64 on CUDA)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="reader processes that prefetch regions (default: 1 on CPU; on CUDA one per CPU "
        "but one, at most 8: the CPUs of --threads when above 1, else those this process may "
        "use; 0: read in the main process)",
    )
    add_device(parser)
    add_precision(parser, default("precision"))
    add_encoder_threads(parser, default=1)
    add_no_progress(parser)
    add_no_fail(parser)
    parser.set_defaults(func=run, outputs=lambda a: [a.out], inputs=_inputs, stage="features")


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path | str | None]]:
    return [
        ("slide", args.slide),
        ("coords file", args.coords),
        ("weights file", weights_file(args.weights)),
    ]


def run(args: argparse.Namespace) -> int:
    from zoommil.features.extraction import extract_features
    from zoommil.workflow.failure import check_input

    check_seed(args.seed)
    check_input(args.coords, args.slide)
    weights = args.weights or default_weights(args.encoder)
    if weights != "random" and args.seed != default("weights_seed"):
        log.warning(
            "%s: --seed %d is ignored: it seeds --weights random only, and the weights are %s",
            args.slide,
            args.seed,
            weights,
        )

    result = extract_features(
        args.slide,
        args.coords,
        args.out,
        weights=weights,
        seed=args.seed,
        encoder_name=args.encoder,
        mpp=args.mpp,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        threads=args.threads or None,
        progress=show_progress(args),
        slide_id=args.slide_id,
    )
    counts = ", ".join(
        f"{mag_key(m)}: {n}" for m, n in zip(result.attrs["mags"], result.num_patches, strict=True)
    )
    log.info(
        "%s: %s patches (%s) in %.1f s (%.1f patches/s, %s, %s, %s, %s weights) -> %s",
        args.slide,
        sum(result.num_patches),
        counts,
        result.seconds,
        result.patches_per_second,
        result.attrs["device"],
        result.attrs["encoder"],
        result.attrs["precision"],
        result.attrs["weights"],
        result.path,
    )
    return 0
