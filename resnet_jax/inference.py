"""Predictor: a network with its preset, labelling and embedding images under jit; built from a
checkpoint on disk or from seeded random weights. ``resnet_jax.predict`` is its command line."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.build import model_from_name
from resnet_jax.data.classes import imagenet_class_names
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

        self._forward = jax.jit(forward)

    def _run(self, inputs: Iterable[str | Path]):
        skipped: list[tuple[str, str]] = []
        outputs = []
        for names, images in batches(list_images(inputs), self.preset, self.batch_size, skipped):
            n = len(names)
            padded = np.zeros((self.batch_size, *images.shape[1:]), np.float32)
            padded[:n] = images  # one compiled shape for every batch
            probs, pooled = self._forward(self.variables, jnp.asarray(padded))
            outputs.append(
                (
                    names,
                    None if probs is None else np.asarray(probs)[:n],
                    None if pooled is None else np.asarray(pooled)[:n],
                )
            )
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        return outputs, skipped

    def check_can_predict(self, top_k: int) -> None:
        """Raises ValueError, before any image is read, if top-k labels cannot be given."""
        if not self.model.include_top:
            raise ValueError(
                "This model has no classifier head (include_top=False); use features() instead."
            )
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")

    def check_can_embed(self) -> None:
        """Raises ValueError, before any image is read, if the model gives no embeddings."""
        if self.model.pooling is None:
            raise ValueError("This model has no global pooling (pooling=None); no embeddings.")

    def _labels(self, outputs, top_k: int) -> list[Prediction]:
        results = []
        for names, probs, _ in outputs:
            order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # k > classes: all
            for name, p, idx in zip(names, probs, order, strict=True):
                labels = tuple(self.class_names[i] if self.class_names else str(i) for i in idx)
                results.append(
                    Prediction(
                        str(name),
                        tuple(int(i) for i in idx),
                        labels,
                        tuple(float(p[i]) for i in idx),
                    )
                )
        return results

    def _embeddings(self, outputs) -> tuple[list[str], np.ndarray]:
        names = [str(n) for names, _, _ in outputs for n in names]
        width = self.model.stage_widths[-1] * (4 if self.model.block == "bottleneck" else 1)
        feats = (
            np.concatenate([f for _, _, f in outputs])
            if outputs
            else np.zeros((0, width), np.float32)
        )
        return names, feats

    def predict(
        self, inputs: Iterable[str | Path], top_k: int = 5
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Top-k classes (all of them when k exceeds their number) of every image under
        ``inputs`` (files or folders)."""
        self.check_can_predict(top_k)
        outputs, skipped = self._run(inputs)
        return self._labels(outputs, top_k), skipped

    def features(
        self, inputs: Iterable[str | Path]
    ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """Pooled embeddings (2048-d for ResNet-50) of every image, with their file names."""
        self.check_can_embed()
        outputs, skipped = self._run(inputs)
        return *self._embeddings(outputs), skipped

    def predict_and_features(
        self, inputs: Iterable[str | Path], top_k: int = 5
    ) -> tuple[list[Prediction], list[str], np.ndarray, list[tuple[str, str]]]:
        """Both of the above from one pass over the images."""
        self.check_can_predict(top_k)
        self.check_can_embed()
        outputs, skipped = self._run(inputs)
        return self._labels(outputs, top_k), *self._embeddings(outputs), skipped


def random_predictor(
    model_name: str, preset: Preset, batch_size: int = 32, seed: int = 0, **overrides
) -> Predictor:
    """Seeded random weights: for smoke tests and for numerics checks against a reference."""
    model = model_from_name(model_name, **overrides)
    x = jnp.zeros((1, preset.crop, preset.crop, model.in_channels))
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    names = imagenet_class_names() if model.num_classes == 1000 else None
    return Predictor(model, variables, preset, names, batch_size)


def load_predictor(path: str | Path, preset: str | None = None, batch_size: int = 32) -> Predictor:
    """Weights or a training workdir (``resnet_jax.weights.load``), with their preset unless
    ``preset`` names another."""
    from resnet_jax.weights import load

    model, variables, own_preset, classes, _ = load(path)
    return Predictor(
        model, variables, get_preset(preset) if preset else own_preset, classes, batch_size
    )
