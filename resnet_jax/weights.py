"""One weights format and one loader: orbax variables ({'params', 'batch_stats'}, step 0) plus
``card.json`` (architecture and arguments, preset, class names, origin, verified figures), as
torchvision's weights enums carry ``transforms()`` and ``meta``. A training workdir's latest
checkpoint loads through the same call, its card derived from the checkpoint's meta:

    model, variables, preset, classes, card = resnet_jax.load("checkpoints/resnet50_tv2")
    logits = model.apply(variables, images.transforms(preset)(image)[None])
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import traverse_util

from resnet_jax.build import model_from_name
from resnet_jax.card import (  # noqa: F401  (CARD_FILE, kind: part of the loader's API)
    CARD_FILE,
    Card,
    converted_card,
    kind,
    read_card,
    restore_variables,
    save_variables,
)
from resnet_jax.checkpoint import CheckpointError, architecture_fingerprint
from resnet_jax.data.presets import Preset
from resnet_jax.models import ResNet

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}


class Loaded(NamedTuple):
    model: ResNet
    variables: Variables
    preset: Preset
    classes: tuple[str, ...] | None
    card: Card


def _abstract(model: ResNet) -> Variables:
    from resnet_jax.convert.common import abstract_variables  # resnet_jax.convert imports us.

    return traverse_util.unflatten_dict(abstract_variables(model))


def load(path: str | os.PathLike) -> Loaded:
    """(model, variables, preset, classes, card) of a weights directory or of a training
    workdir's latest checkpoint; variables land on the first local device."""
    if kind(path) == "workdir":
        return _load_workdir(path)
    card = read_card(path)
    model = model_from_name(card.architecture, **card.arguments)
    variables = restore_variables(path, _abstract(model))
    return Loaded(model, variables, card.preset, card.classes, card)


def check_target(
    directory: str | os.PathLike, overwrite: bool, option: str = "overwrite=True"
) -> bool:
    """Whether saving to ``directory`` replaces weights; raises when it may not (not empty
    without ``overwrite``, which ``option`` names, or holding something else)."""
    directory = epath.Path(directory)
    if not (directory.exists() and any(directory.iterdir())):
        return False
    if not overwrite:
        raise FileExistsError(f"{directory} is not empty; choose a new directory or pass {option}.")
    if read_card(directory) is None:
        raise FileExistsError(
            f"{directory} holds something other than a converted checkpoint; not replacing it."
        )
    return True


def save(
    directory: str | os.PathLike, variables: Variables, card: Card, overwrite: bool = False
) -> epath.Path:
    """Writes ``{'params', 'batch_stats'}`` with orbax, then card.json (last: a directory
    without it is not weights)."""
    directory = epath.Path(directory)
    if check_target(directory, overwrite):
        directory.rmtree()
    variables = jax.tree.map(jnp.asarray, {k: variables[k] for k in ("params", "batch_stats")})
    directory.mkdir(parents=True, exist_ok=True)
    save_variables(directory, variables)
    (directory / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=1))
    return directory


def save_converted(
    directory: str | os.PathLike,
    variables: Variables,
    *,
    overwrite: bool = False,
    **card: Any,
) -> epath.Path:
    """``save`` with the card of converted weights (``converted_card``'s arguments:
    architecture, source, weights, preset, overrides, class_names, preset_origin,
    verification)."""
    return save(directory, variables, converted_card(**card), overwrite)


def _load_workdir(workdir: str | os.PathLike) -> Loaded:
    """The latest checkpoint, with the model of the config stored with it (config.json may
    have been rewritten by a later run or a person); its parameter layout must match."""
    from resnet_jax.build import preset_from_config
    from resnet_jax.training.restore import load_variables, read_config
    from resnet_jax.training.workdir import CONFIG_FILE

    variables, meta = load_variables(workdir)
    config_json = epath.Path(workdir) / CONFIG_FILE
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
    names = meta.get("class_names")
    card = Card(
        config.model.name,
        {
            **(config.model.to_dict().get("kwargs") or {}),
            **({"space_to_depth": True} if config.model.get("space_to_depth") else {}),
            "num_classes": int(meta.get("num_classes") or params["fc"]["kernel"].shape[-1]),
        },
        preset_from_config(config),
        tuple(names) if names else None,
        {"workdir": str(workdir), "step": meta.get("step"), "dataset": config.data.dataset},
    )
    model = model_from_name(card.architecture, **card.arguments)
    built = architecture_fingerprint(_abstract(model)["params"])
    held = architecture_fingerprint(params)
    if built != held:
        raise CheckpointError(
            f"The checkpoint in {workdir} (step {meta.get('step')}) holds "
            f"{meta.get('model_name', 'a model')!r} (architecture {held}), but {source} "
            f"describes {config.model.name!r} (architecture {built}). Restore the config.json "
            "that train.py wrote with this checkpoint, or give the workdir of the run you mean."
        )
    if recorded and saved is not None and saved.model.to_dict() != config.model.to_dict():
        said, holds = (
            f"{m.name!r} ({', '.join(f'{k}={v}' for k, v in (m.get('kwargs') or {}).items())})"
            for m in (saved.model, config.model)
        )
        print(
            f"note: {config_json} describes {said}, but its checkpoint holds {holds}; using the "
            "checkpoint's own record.",
            file=sys.stderr,
        )
    return Loaded(model, variables, card.preset, card.classes, card)
