"""Identical, preprocessed inputs for both frameworks: random tensors and real photographs.

The photographs ship with scikit-learn (``china.jpg``, ``flower.jpg``; public domain, from
its ``load_sample_images``), so verification needs no download. Preprocessing follows the
weights' preset, through the same loader prediction uses (``resnet_jax.images``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from resnet_jax.data.presets import Preset, normalize
from resnet_jax.images import load_rgb, preprocess


def sample_photographs() -> list[Path]:
    """Photographs shipped by an installed package (scikit-learn's sample images)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "No bundled photograph: scikit-learn is not installed (pip install scikit-learn), "
            "or pass --image PATH."
        )
    folder = Path(spec.origin).parent / "datasets" / "images"
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"No sample photographs in {folder}; pass --image PATH.")
    return photos


def sized(preset: Preset, size: int | None) -> Preset:
    """The preset at another crop size, keeping its resize/crop ratio."""
    if not size or size == preset.crop:
        return preset
    return dataclasses.replace(preset, resize=round(size * preset.resize / preset.crop), crop=size)


def random_inputs(batch: int, size: int, preset: Preset, seed: int = 0) -> np.ndarray:
    """Uniform pixel noise normalised by the preset: random inputs at the model's own scale."""
    pixels = np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3))
    return np.asarray(normalize(pixels.astype(np.float32), preset), np.float32)


def photo_inputs(preset: Preset, size: int, paths: list[str | Path] | None = None) -> np.ndarray:
    """Preprocessed photographs as one NHWC batch (the bundled ones by default)."""
    paths = paths or sample_photographs()
    preset = sized(preset, size)
    return np.stack([preprocess(load_rgb(p), preset) for p in paths])
