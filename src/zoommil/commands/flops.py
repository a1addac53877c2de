"""`zoommil flops`: FLOPs per slide of a trained method (encoder x patches + MIL head)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoommil.errors import ZoomMILError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="count FLOPs per slide with fvcore (encoder x patches encoded + MIL head)",
        description=(
            "Count the FLOPs of classifying each slide of a split: the FLOPs per patch of the "
            "encoder the checkpoint's features were made with (at its input size) times the "
            "patches the method encodes (ZoomMIL: only the zoomed-in ones), plus the MIL head "
            "on that bag. fvcore counts one multiply-add as one flop; "
            "TFLOPs are 2^40 flops, as in the paper's tables. The head is cross-checked with "
            "torch.utils.flop_counter."
        ),
    )
    parser.add_argument("--model", help="method name to record (default: the checkpoint's)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt")
    parser.add_argument("--features-dir", type=Path, required=True, help="folder of {slide_id}.h5")
    parser.add_argument("--sheet", type=Path, help="slide sheet (default: the checkpoint's)")
    parser.add_argument("--split", default="test", help="split to count (default test)")
    parser.add_argument("--max-slides", type=int, help="count only the first N slides")
    parser.add_argument("--out", type=Path, required=True, help="output JSON")
    parser.set_defaults(func=run, outputs=lambda a: [a.out])


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from zoommil.efficiency.flops import TFLOP, encoder_flops_per_patch, slide_flops
    from zoommil.features.encoders.registry import DEFAULT_ENCODER, canonical_name
    from zoommil.io.featurefile import read_feature_file
    from zoommil.io.jsonio import write_json
    from zoommil.training.checkpoint import model_from_checkpoint
    from zoommil.training.data import read_sheet

    model, config = model_from_checkpoint(args.checkpoint)
    sheet = read_sheet(args.sheet or config["sheet"])
    ids = [str(s) for s in sheet.loc[sheet["split"] == args.split, "slide_id"]]
    ids = [i for i in ids if (args.features_dir / f"{i}.h5").exists()]
    if args.max_slides:
        ids = ids[: args.max_slides]
    if not ids:
        raise ZoomMILError(f"{args.features_dir}: no feature files for the '{args.split}' split")
    pre = config.get("preprocessing") or {}
    patch_size = int(pre.get("patch_size", 256))
    encoder = canonical_name(pre.get("encoder", DEFAULT_ENCODER))
    rows = []
    for slide_id in tqdm(ids, desc="flops", unit="slide"):
        bag = read_feature_file(args.features_dir / f"{slide_id}.h5", config["mags"])
        if min(len(f) for f in bag.feats) == 0:
            continue
        dim = int(bag.feats[0].shape[1])
        if dim != int(config["in_dim"]):
            raise ZoomMILError(
                f"{args.features_dir / f'{slide_id}.h5'}: features have dimension {dim}, the "
                f"checkpoint {args.checkpoint} expects {config['in_dim']}"
            )
        feats = [torch.from_numpy(f).unsqueeze(0) for f in bag.feats]
        flops = slide_flops(model, config["arch"], feats, patch_size, encoder)
        rows.append({"slide_id": slide_id, **flops})
    if not rows:
        raise ZoomMILError(f"{args.features_dir}: every '{args.split}' slide has zero patches")
    per_patch = encoder_flops_per_patch(encoder, patch_size)
    mean_total = float(np.mean([r["total_flops"] for r in rows]))
    write_json(
        args.out,
        {
            "method": args.model or config.get("method", config["arch"]),
            "arch": config["arch"],
            "mags": config["mags"],
            "kwargs": config.get("kwargs") or {},
            "encoder": encoder,
            "encoder_input_size": int(per_patch["input_size"]),
            "encoder_flops_per_patch": per_patch["fvcore"],
            "encoder_flops_per_patch_torch_counter": per_patch["torch"],
            "per_slide": rows,
            "mean_patches_encoded": float(np.mean([r["patches_encoded"] for r in rows])),
            "mean_head_flops": float(np.mean([r["head_flops"] for r in rows])),
            "mean_total_flops": mean_total,
            "mean_tflops": mean_total / TFLOP,
            "tflops_unit": "2^40 flops (fvcore: one multiply-add = one flop)",
        },
    )
    print(f"{args.out}: {mean_total / TFLOP:.4f} TFLOPs per slide over {len(rows)} slides")
    return 0
