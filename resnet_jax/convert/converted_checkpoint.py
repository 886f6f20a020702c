"""Converted weights as an orbax checkpoint: variables plus JSON metadata.

The metadata says where the weights came from and how to feed them: source framework,
architecture (a registry name and overrides), variant, the weights' name and the
preprocessing preset that belongs to them. ``load_converted`` rebuilds the model from it:

    save_converted("ckpt/resnet50_tv2", variables, architecture="resnet50",
                   source="torchvision", weights="IMAGENET1K_V2", preset=preset)
    name, variables, metadata = load_converted("ckpt/resnet50_tv2")
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from resnet_jax.convert.common import Variables
from resnet_jax.data.presets import Preset
from resnet_jax.models import create_model, model_spec

FORMAT = "resnet_jax.converted"
FORMAT_VERSION = 1
_STEP = 0


def _manager(directory: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        item_names=("variables", "metadata"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
    )


def build_metadata(
    architecture: str,
    source: str,
    weights: str,
    preset: Preset,
    overrides: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    spec = model_spec(architecture)
    model = create_model(architecture, **(overrides or {}))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "description": spec.description,
        "variant": model.variant,
        "model_overrides": dict(overrides or {}),
        "num_classes": model.num_classes,
        "source": source,
        "weights": weights,
        "preset": preset.to_dict(),
        **extra,
    }


def check_target(
    directory: str | os.PathLike, overwrite: bool, option: str = "overwrite=True"
) -> bool:
    """Whether saving to ``directory`` replaces a converted checkpoint; raises when it may not
    (not empty without ``overwrite``, which ``option`` names, or not a converted checkpoint)."""
    directory = Path(directory)
    if not (directory.exists() and any(directory.iterdir())):
        return False
    if not overwrite:
        raise FileExistsError(f"{directory} is not empty; choose a new directory or pass {option}.")
    if not is_converted(directory):
        raise FileExistsError(
            f"{directory} holds something other than a converted checkpoint; not replacing it."
        )
    return True


def save_converted(
    directory: str | os.PathLike,
    variables: Variables,
    *,
    architecture: str,
    source: str,
    weights: str,
    preset: Preset,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    **extra: Any,
) -> Path:
    """Writes ``{'params', 'batch_stats'}`` and metadata; extra keyword items (JSON values,
    e.g. a verification summary) are stored in the metadata too."""
    directory = Path(directory)
    if check_target(directory, overwrite):
        shutil.rmtree(directory)
    metadata = build_metadata(architecture, source, weights, preset, overrides, **extra)
    variables = jax.tree.map(jnp.asarray, {k: variables[k] for k in ("params", "batch_stats")})
    manager = _manager(directory)
    manager.save(
        _STEP,
        args=ocp.args.Composite(
            variables=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)
        ),
    )
    manager.wait_until_finished()
    manager.close()
    return directory


def is_converted(directory: str | os.PathLike) -> bool:
    """True when the directory holds a checkpoint written by save_converted."""
    try:
        return read_metadata(Path(directory)).get("format") == FORMAT
    except Exception:
        return False


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    manager = _manager(Path(directory))
    if manager.latest_step() is None:
        raise FileNotFoundError(f"No converted checkpoint in {directory}.")
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
    )
    manager.close()
    return dict(restored["metadata"])


def load_converted(directory: str | os.PathLike) -> tuple[str, Variables, dict[str, Any]]:
    """(model name, {'params', 'batch_stats'}, metadata); the model is
    ``create_model(name, **metadata['model_overrides'])`` and the inputs follow
    ``Preset.from_dict(metadata['preset'])``."""
    metadata = read_metadata(directory)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{directory} is not a converted checkpoint (format {FORMAT!r}).")
    name = metadata["architecture"]
    model = create_model(name, **metadata.get("model_overrides", {}))
    x = jax.ShapeDtypeStruct((1, 64, 64, model.in_channels), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    manager = _manager(Path(directory))
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(variables=ocp.args.StandardRestore(dict(abstract))),
    )
    manager.close()
    return name, dict(restored["variables"]), metadata
