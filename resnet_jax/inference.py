"""Builds a Predictor from a checkpoint on disk or from seeded random weights."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from resnet_jax.data.classes import imagenet_class_names
from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.models import create_model
from resnet_jax.predict import Predictor


def random_predictor(model_name: str, preset: Preset, batch_size: int = 32, seed: int = 0,
                     **overrides) -> Predictor:
    """Seeded random weights: for smoke tests and for numerics checks against a reference."""
    model = create_model(model_name, **overrides)
    x = jnp.zeros((1, preset.crop, preset.crop, model.in_channels))
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    names = imagenet_class_names() if model.num_classes == 1000 else None
    return Predictor(model, variables, preset, names, batch_size)


def load_predictor(path: str | Path, preset: str | None = None, batch_size: int = 32
                   ) -> Predictor:
    """A converted checkpoint (with its preset) or a training workdir (latest checkpoint)."""
    from resnet_jax.convert.checkpoint import is_converted, load_converted

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory.")
    if is_converted(path):
        name, variables, metadata = load_converted(path)
        model = create_model(name, **metadata.get("model_overrides", {}))
        chosen = get_preset(preset) if preset else Preset.from_dict(metadata["preset"])
        names = metadata.get("class_names")
        if names is None and model.num_classes == 1000:
            names = imagenet_class_names()
        return Predictor(model, variables, chosen, names, batch_size)
    from resnet_jax.training.restore import load_trained

    model, variables, train_preset, names = load_trained(path)
    chosen = get_preset(preset) if preset else train_preset
    return Predictor(model, variables, chosen, names, batch_size)
