"""Check converted weights against their own framework, block by block.

    python -m resnet_jax.verify --source torchvision --model resnet50
    python -m resnet_jax.verify --source torchvision --model resnet50 --weights IMAGENET1K_V2
    python -m resnet_jax.verify --source timm --model resnet50d --weights model.safetensors
    python -m resnet_jax.verify --source keras --model resnet50_v1 --weights r50.weights.h5 \\
        --save checkpoints/resnet50_keras

Without --weights the reference is a seeded random init with randomised BN statistics. A
published file passed by path (resnet50-11ad3fa6.pth, resnet50d.a1_in1k.safetensors) is
recognised by its hash or name and keeps its preprocessing preset.
Exit status: 0 within tolerance, 1 over it, 2 for errors (bad file, no network, ...).
"""

from __future__ import annotations

import argparse
import sys

from resnet_jax.convert.numerics import SOURCES
from resnet_jax.data.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-jax-verify",
        description="Convert reference ResNet weights and compare them, block by block, with "
        "the framework they come from.",
        epilog="Exit status: 0 pass, 1 over tolerance, 2 error.",
    )
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument(
        "--model",
        required=True,
        help="registry name, e.g. resnet50, resnext50_32x4d, resnet50d, resnet50_v1 (Keras "
        "ResNet50), resnet50_v2 (Keras ResNet50V2)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="a weights file (.pth, .safetensors, .weights.h5, .keras, .h5) or published "
        "weights: torchvision IMAGENET1K_V1/V2/DEFAULT, timm tag (a1_in1k or "
        "resnet50.a1_in1k), keras imagenet. Default: seeded random weights.",
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's crop")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="bound on every row's max|diff|/max|reference|, logits included (default 1e-4)",
    )
    parser.add_argument("--random-inputs", type=int, default=2, help="random images (default 2)")
    parser.add_argument(
        "--image",
        action="append",
        default=None,
        help="photograph(s) to compare on (repeatable); default: scikit-learn's sample images",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        default=None,
        help="preprocessing preset, instead of the one recognised for the weights: "
        + ", ".join(sorted(PRESETS)),
    )
    parser.add_argument(
        "--save", default=None, help="write the converted weights here (orbax + card.json) on pass"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from resnet_jax.convert.numerics import verify
    from resnet_jax.data.presets import get_preset
    from resnet_jax.weights import check_target, save_converted

    try:
        if args.save:  # before minutes of conversion and comparison, not after
            check_target(args.save, args.overwrite, option="--overwrite")
        preset = get_preset(args.preset) if args.preset else None
        reference, comparison = verify(
            args.source,
            args.model,
            args.weights,
            args.image_size,
            args.tolerance,
            args.random_inputs,
            args.image,
            args.seed,
            preset,
        )
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in reference.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(reference.preset_note)
    print(comparison.format())
    if not comparison.passed:
        return 1
    if args.save:
        try:
            path = save_converted(
                args.save,
                reference.variables,
                architecture=reference.model_name,
                source=reference.source,
                weights=reference.weights,
                preset=reference.preset,
                overwrite=args.overwrite,
                preset_origin=reference.preset_note,
                verification=comparison.summary(),
            )
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"saved converted checkpoint to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
