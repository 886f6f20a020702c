"""Builds a Predictor from a checkpoint on disk or from seeded random weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax.checkpoint import CheckpointError, architecture_fingerprint
from resnet_jax.data.classes import imagenet_class_names
from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.models import ResNet, create_model
from resnet_jax.predict import Predictor


def random_predictor(
    model_name: str, preset: Preset, batch_size: int = 32, seed: int = 0, **overrides
) -> Predictor:
    """Seeded random weights: for smoke tests and for numerics checks against a reference."""
    model = create_model(model_name, **overrides)
    x = jnp.zeros((1, preset.crop, preset.crop, model.in_channels))
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    names = imagenet_class_names() if model.num_classes == 1000 else None
    return Predictor(model, variables, preset, names, batch_size)


def load_predictor(path: str | Path, preset: str | None = None, batch_size: int = 32) -> Predictor:
    """A converted checkpoint (with its preset) or a training workdir (latest checkpoint)."""
    from resnet_jax.convert.checkpoint import is_converted, load_converted
    from resnet_jax.training.restore import is_workdir

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such checkpoint directory; give a converted checkpoint or a training "
            "workdir (the --workdir of train.py)."
        )
    if is_converted(path):
        name, variables, metadata = load_converted(path)
        model = create_model(name, **metadata.get("model_overrides", {}))
        chosen = get_preset(preset) if preset else Preset.from_dict(metadata["preset"])
        names = metadata.get("class_names")
        if names is None and model.num_classes == 1000:
            names = imagenet_class_names()
        return Predictor(model, variables, chosen, names, batch_size)
    if not is_workdir(path):
        raise FileNotFoundError(
            f"{path} is neither a converted checkpoint nor a training workdir (no config.json "
            "or checkpoints/ in it); give the folder that resnet_jax.convert or train.py wrote."
        )
    model, variables, train_preset, names = load_workdir(path)
    chosen = get_preset(preset) if preset else train_preset
    return Predictor(model, variables, chosen, names, batch_size)


def load_workdir(workdir: str | Path) -> tuple[ResNet, dict[str, Any], Preset, Any]:
    """(model, variables, eval preset, class names or None) of a workdir's latest checkpoint.

    The model is built from the config stored with the checkpoint, not from config.json, which
    a later run (or a person) may have rewritten; its parameter layout must match the saved one.
    """
    from resnet_jax.training.restore import (
        load_variables,
        model_from_config,
        preset_from_config,
        read_config,
    )

    variables, meta = load_variables(workdir)
    config_json = Path(workdir) / "config.json"
    saved = read_config(workdir) if config_json.is_file() else None
    recorded = meta.get("config")
    config = ml_collections.ConfigDict(recorded) if recorded else saved
    source = "the config stored with it" if recorded else str(config_json)
    if config is None:
        raise FileNotFoundError(
            f"{workdir} has no config.json and its checkpoint records no config: restore the "
            "config.json that train.py wrote there."
        )
    params = variables["params"]
    num_classes = int(meta.get("num_classes") or params["fc"]["kernel"].shape[-1])
    model = model_from_config(config, num_classes)
    preset = preset_from_config(config)
    x = jax.ShapeDtypeStruct((1, preset.crop, preset.crop, model.in_channels), jnp.float32)
    built = architecture_fingerprint(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
    held = architecture_fingerprint(params)
    if built != held:
        raise CheckpointError(
            f"The checkpoint in {workdir} (step {meta.get('step')}) holds "
            f"{meta.get('model_name', 'a model')!r} (architecture {held}), but {source} "
            f"describes {config.model.name!r} (architecture {built}). Restore the config.json "
            "that train.py wrote with this checkpoint, or give the workdir of the run you mean."
        )
    if recorded and saved is not None and saved.model.to_dict() != config.model.to_dict():
        print(
            f"note: {config_json} describes {_describe(saved.model)}, but its checkpoint holds "
            f"{_describe(config.model)}; using the checkpoint's own record.",
            file=sys.stderr,
        )
    names = meta.get("class_names")
    return model, variables, preset, tuple(names) if names else None


def _describe(model: ml_collections.ConfigDict) -> str:
    settings = model.to_dict()
    kwargs = settings.get("kwargs") or {}
    return f"{settings['name']!r} ({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
