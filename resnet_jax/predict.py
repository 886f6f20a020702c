"""Label images and extract features with a trained or converted network.

    python -m resnet_jax.predict photos/ --checkpoint converted/resnet50_tv2 --top-k 5 \
        --output predictions.csv
    python -m resnet_jax.predict photos/ --features features.npz --checkpoint ...

Preprocessing follows the preset stored with the checkpoint, so converted weights predict
as they did in their own framework. Files that are not images are reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import platform
from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.images import batches, list_images


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    indices: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclasses.dataclass
class Predictor:
    """A model, its variables, its preprocessing preset and class names, batched under jit."""

    model: Any
    variables: dict
    preset: Preset
    class_names: Sequence[str] | None = None
    batch_size: int = 32

    def __post_init__(self):
        def forward(variables, x):
            feats = self.model.apply(variables, x, return_features=True)
            probs = jax.nn.softmax(feats["logits"]) if "logits" in feats else None
            return probs, feats.get("pooled")

        self._forward = platform.jit(forward)

    def _run(self, inputs: Iterable[str | Path]):
        skipped: list[tuple[str, str]] = []
        outputs = []
        for names, images in batches(list_images(inputs), self.preset, self.batch_size, skipped):
            n = len(names)
            padded = np.zeros((self.batch_size, *images.shape[1:]), np.float32)
            padded[:n] = images  # one compiled shape for every batch
            probs, pooled = self._forward(self.variables, jnp.asarray(padded))
            outputs.append((names, None if probs is None else np.asarray(probs)[:n],
                            None if pooled is None else np.asarray(pooled)[:n]))
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        return outputs, skipped

    def predict(self, inputs: Iterable[str | Path], top_k: int = 5
                ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Top-k classes of every image under ``inputs`` (files or folders)."""
        if not self.model.include_top:
            raise ValueError("This model has no classifier head (include_top=False); "
                             "use features() instead.")
        results = []
        outputs, skipped = self._run(inputs)
        for names, probs, _ in outputs:
            order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
            for name, p, idx in zip(names, probs, order, strict=True):
                labels = tuple(self.class_names[i] if self.class_names else str(i) for i in idx)
                results.append(Prediction(str(name), tuple(int(i) for i in idx), labels,
                                          tuple(float(p[i]) for i in idx)))
        return results, skipped

    def features(self, inputs: Iterable[str | Path]
                 ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """Pooled embeddings (2048-d for ResNet-50) of every image, with their file names."""
        outputs, skipped = self._run(inputs)
        if any(pooled is None for _, _, pooled in outputs):
            raise ValueError("This model has no global pooling (pooling=None); no embeddings.")
        names = [str(n) for names, _, _ in outputs for n in names]
        width = self.model.stage_widths[-1] * (4 if self.model.block == "bottleneck" else 1)
        feats = (np.concatenate([f for _, _, f in outputs]) if outputs
                 else np.zeros((0, width), np.float32))
        return names, feats, skipped


def write_predictions(predictions: list[Prediction], path: str | Path) -> None:
    """Writes predictions as JSON (a list of objects) or CSV (one row per image and rank)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps([dataclasses.asdict(p) for p in predictions], indent=1))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "rank", "index", "label", "probability"])
            for p in predictions:
                for rank, (i, label, prob) in enumerate(
                        zip(p.indices, p.labels, p.probabilities, strict=True), 1):
                    w.writerow([p.path, rank, i, label, f"{prob:.6f}"])
    else:
        raise ValueError(f"Unsupported output {path}: use a .json or .csv file name.")


def format_table(predictions: list[Prediction]) -> str:
    lines = []
    for p in predictions:
        lines.append(p.path)
        for i, label, prob in zip(p.indices, p.labels, p.probabilities, strict=True):
            lines.append(f"  {prob:7.2%}  {i:5d}  {label}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--checkpoint", help="a converted checkpoint, a training workdir, or "
                        "an exported .onnx or .tflite file")
    parser.add_argument("--model", help="with --random-init: a model name (smoke tests)")
    parser.add_argument("--random-init", action="store_true",
                        help="use seeded random weights instead of a checkpoint")
    parser.add_argument("--preset", help="override the checkpoint's preprocessing preset")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="write predictions to a .json or .csv file")
    parser.add_argument("--features", help="write pooled embeddings to this .npz file")
    return parser


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    from resnet_jax.inference import load_predictor, random_predictor

    if args.random_init:
        if not args.model:
            raise SystemExit("--random-init needs --model NAME.")
        return random_predictor(args.model, get_preset(args.preset or "torchvision_v1"),
                                batch_size=args.batch_size)
    if not args.checkpoint:
        raise SystemExit("Give --checkpoint DIR (a converted checkpoint or a training workdir), "
                         "or --random-init --model NAME.")
    if Path(args.checkpoint).suffix in (".onnx", ".tflite"):  # a file from resnet_jax.export
        from resnet_jax.export.runtime import load_exported_predictor

        return load_exported_predictor(args.checkpoint, args.preset, args.batch_size)
    return load_predictor(args.checkpoint, preset=args.preset, batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    predictor = predictor_from_args(args)
    if args.features:
        names, feats, skipped = predictor.features(args.inputs)
        np.savez(args.features, features=feats, paths=np.asarray(names))
        print(f"wrote {feats.shape[0]} embeddings of size {feats.shape[1]} to {args.features}")
    else:
        predictions, skipped = predictor.predict(args.inputs, args.top_k)
        print(format_table(predictions))
        if args.output:
            write_predictions(predictions, args.output)
            print(f"wrote {len(predictions)} predictions to {args.output}")
    if skipped:
        print(f"{len(skipped)} file(s) skipped (not readable images).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
