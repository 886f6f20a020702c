"""Export a training workdir or converted checkpoint for deployment.

    python -m resnet_jax.export /tmp/quickstart --output exported/ \
        --formats stablehlo,onnx,litert,litert_int8 --calibration digits_train/

Writes model.stablehlo, model.onnx, model_float32.tflite, model_int8.tflite and export.json
(preprocessing preset and class names) into the output folder; each file is run once on a few
images and its difference to the JAX model recorded in export.json.
"""

from __future__ import annotations

import argparse
import sys

from resnet_jax.export.exporter import DEFAULT_FORMATS, FILES, ExportError, export_checkpoint
from resnet_jax.predict import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="a training workdir or a converted checkpoint")
    parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    parser.add_argument(
        "--formats",
        default=None,
        help=f"comma-separated, from {', '.join(FILES)} (default: "
        f"{','.join(DEFAULT_FORMATS)}, plus litert_int8 with --calibration)",
    )
    parser.add_argument("--calibration", help="folder of images for int8 calibration")
    parser.add_argument(
        "--calibration-samples",
        type=positive_int,
        default=200,
        help="images taken from --calibration, spread over the folder (default 200)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.formats:
        names = [f.strip() for f in args.formats.split(",") if f.strip()]
    else:
        names = [*DEFAULT_FORMATS, *(["litert_int8"] if args.calibration else [])]
    try:
        out = export_checkpoint(
            args.checkpoint,
            args.output,
            names,
            calibration=args.calibration,
            calibration_samples=args.calibration_samples,
            overwrite=args.overwrite,
        )
    except (ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import json

    checks = json.loads((out / "export.json").read_text())["checks"]
    for name, c in checks.items():
        print(
            f"{FILES[name]:22s} max relative difference to JAX "
            f"{c['max_relative_difference']:.2e}, top-1 agreement {c['top1_agreement']:.0%}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
