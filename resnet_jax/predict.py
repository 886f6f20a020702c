"""Label images and extract features with a trained or converted network.

    python -m resnet_jax.predict photos/ --checkpoint converted/resnet50_tv2 --top-k 5 \
        --output predictions.csv
    python -m resnet_jax.predict photos/ --features features.npz --checkpoint ...

Preprocessing follows the preset stored with the checkpoint, so converted weights predict
as they did in their own framework. Files that are not images are reported and skipped.
Options, output paths and inputs are checked before the model loads; outputs are written to
a temporary name and moved into place, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from resnet_jax import storage
from resnet_jax.data.presets import get_preset
from resnet_jax.images import IMAGE_SUFFIXES, list_images

if TYPE_CHECKING:  # the model and its checkpoint code load only once options are checked
    from resnet_jax.inference import Prediction, Predictor

OUTPUT_SUFFIXES = (".json", ".csv")
FEATURES_SUFFIX = ".npz"


def write_predictions(predictions: list[Prediction], path: str | os.PathLike) -> None:
    """Writes predictions as JSON (a list of objects) or CSV (one row per image and rank)."""
    suffix = epath.Path(path).suffix
    if suffix == ".json":
        text = json.dumps([dataclasses.asdict(p) for p in predictions], indent=1)
    elif suffix == ".csv":
        buffer = io.StringIO(newline="")
        w = csv.writer(buffer)
        w.writerow(["path", "rank", "index", "label", "probability"])
        for p in predictions:
            for rank, (i, label, prob) in enumerate(
                zip(p.indices, p.labels, p.probabilities, strict=True), 1
            ):
                w.writerow([p.path, rank, i, label, f"{prob:.6f}"])
        text = buffer.getvalue()
    else:
        raise ValueError(f"Unsupported output {path}: use a .json or .csv file name.")
    storage.write_atomically(path, text)


def write_features(names: list[str], feats: np.ndarray, path: str | os.PathLike) -> None:
    """Writes embeddings and their file names as an .npz (arrays 'features' and 'paths')."""
    buffer = io.BytesIO()
    np.savez(buffer, features=feats, paths=np.asarray(names))
    storage.write_atomically(path, buffer.getvalue())


def format_table(predictions: list[Prediction]) -> str:
    lines = []
    for p in predictions:
        lines.append(p.path)
        for i, label, prob in zip(p.indices, p.labels, p.probabilities, strict=True):
            lines.append(f"  {prob:7.2%}  {i:5d}  {label}")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument(
        "--checkpoint",
        help="a converted checkpoint, a training workdir, or an exported .onnx or .tflite file",
    )
    parser.add_argument("--model", help="with --random-init: a model name (smoke tests)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="use seeded random weights instead of a checkpoint",
    )
    parser.add_argument("--preset", help="override the checkpoint's preprocessing preset")
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=5,
        help="classes listed per image, at least 1 (default 5); a k above the number of "
        "classes lists them all",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--output", help="write predictions to a .json or .csv file")
    parser.add_argument(
        "--features",
        help="write pooled embeddings to this .npz file (with --output, both are written)",
    )
    return parser


def _check_writable(path: str, flag: str) -> None:
    """Raises ValueError unless ``path`` can be written as a file (its folder may be created)."""
    target = epath.Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name.")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder; give another path.")
    if "://" not in str(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {folder} (permission denied).")


def check_options(args: argparse.Namespace) -> None:
    """Raises ValueError naming the first option that cannot work, before any model or image
    is read: the weights' source, the preset, and the output file names and folders."""
    if args.random_init:
        if not args.model:
            raise ValueError("--random-init needs --model NAME (e.g. --model resnet50).")
    elif not args.checkpoint:
        raise ValueError(
            "Give --checkpoint DIR (a converted checkpoint or a training workdir), "
            "or --random-init --model NAME."
        )
    elif problem := storage.remote_problem(args.checkpoint, "--checkpoint"):
        raise ValueError(problem)
    elif not epath.Path(args.checkpoint).exists():
        raise ValueError(
            f"--checkpoint {args.checkpoint}: no such directory; give a converted checkpoint "
            "or a training workdir (the --workdir of train.py)."
        )
    if args.preset:
        get_preset(args.preset)
    if args.output and epath.Path(args.output).suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output {args.output}: use a .json or .csv file name.")
    if args.features and epath.Path(args.features).suffix != FEATURES_SUFFIX:
        raise ValueError(f"--features {args.features}: use a {FEATURES_SUFFIX} file name.")
    if args.output:
        _check_writable(args.output, "--output")
    if args.features:
        _check_writable(args.features, "--features")


def find_images(inputs: Sequence[str]) -> list[epath.Path]:
    """The image files under ``inputs``; FileNotFoundError or ValueError when a path is
    missing or they hold none."""
    paths = list_images(inputs)
    if not paths:
        raise ValueError(
            f"No images found under {', '.join(inputs)} (recognised extensions: "
            f"{' '.join(sorted(IMAGE_SUFFIXES))})."
        )
    return paths


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """The Predictor the options ask for (``check_options`` has accepted them)."""
    from resnet_jax.inference import load_predictor, random_predictor

    if args.random_init:
        return random_predictor(
            args.model, get_preset(args.preset or "torchvision_v1"), batch_size=args.batch_size
        )
    if epath.Path(args.checkpoint).suffix in (".onnx", ".tflite"):  # a file from resnet_jax.export
        from resnet_jax.export.runtime import load_exported_predictor

        return load_exported_predictor(args.checkpoint, args.preset, args.batch_size)
    return load_predictor(args.checkpoint, preset=args.preset, batch_size=args.batch_size)


def _predict(args: argparse.Namespace) -> int:
    check_options(args)
    paths = find_images(args.inputs)
    predictor = predictor_from_args(args)
    if args.features and args.output:
        predictions, names, feats, skipped = predictor.predict_and_features(paths, args.top_k)
    elif args.features:
        names, feats, skipped = predictor.features(paths)
        predictions = None
    else:
        predictions, skipped = predictor.predict(paths, args.top_k)
    if len(skipped) == len(paths):
        raise ValueError(
            f"None of the {len(paths)} image file(s) could be read (reasons above); "
            "nothing was written."
        )
    if predictions is not None:
        print(format_table(predictions))
    if args.output:
        write_predictions(predictions, args.output)
        print(f"wrote {len(predictions)} predictions to {args.output}")
    if args.features:
        write_features(names, feats, args.features)
        print(f"wrote {feats.shape[0]} embeddings of size {feats.shape[1]} to {args.features}")
    if skipped:
        print(f"{len(skipped)} file(s) skipped (not readable images).", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; every error is one line on stderr and exit status 2."""
    from resnet_jax.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return _predict(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
