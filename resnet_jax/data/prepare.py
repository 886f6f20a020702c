"""Prepare a TFDS dataset once, e.g. ImageNet from the manually downloaded ILSVRC tars.

    python -m resnet_jax.data.prepare imagenet2012 --data_dir=/data/tfds \\
        --manual_dir=/data/tfds/downloads/manual

TFDS's own ``tfds build`` needs Apache Beam installed even for datasets that do not use it
(TFDS 4.9 imports it on start-up); this builds through the TFDS Python API instead.
Exit status: 0 prepared, 1 for errors (missing files, unknown dataset).
"""

from __future__ import annotations

import argparse
import sys

from etils import epath


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.data.prepare",
        description="Download (or read from --manual_dir) and prepare a TFDS dataset.",
    )
    parser.add_argument("dataset", help="TFDS name, e.g. imagenet2012, imagenette, tf_flowers")
    parser.add_argument("--data_dir", required=True, help="the TFDS data directory to write")
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="where the hand-downloaded files are (default: <data_dir>/downloads/manual)",
    )
    parser.add_argument(
        "--file_format",
        default="array_record",
        choices=("array_record", "tfrecord"),
        help="array_record (read by the default Grain pipeline) or tfrecord (tf.data only)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ml_collections

    from resnet_jax.data.sources import NoTensorFlowError, tfds_builder

    config = ml_collections.ConfigDict(
        dict(
            dataset=args.dataset,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            download=True,
            file_format=args.file_format,
        )
    )
    data_dir = epath.Path(args.data_dir)
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)  # A new data_dir is what this is for.
        builder = tfds_builder(config)
    except (ValueError, OSError, NoTensorFlowError) as e:
        if created and data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()  # Nothing half-made is left behind.
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    print(f"Prepared {builder.name} in {builder.data_dir} ({splits}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
