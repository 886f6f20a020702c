"""One weights format and one loader: orbax variables ({'params', 'batch_stats'}, step 0) plus
``card.json`` (architecture and arguments, preset, class names, origin, verified figures), as
torchvision's weights enums carry ``transforms()`` and ``meta``. A training workdir's latest
checkpoint loads through the same call, its card derived from the checkpoint's meta:

    model, variables, preset, classes, card = resnet_jax.load("checkpoints/resnet50_tv2")
    logits = model.apply(variables, preset.transforms()(image)[None])
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import traverse_util

from resnet_jax.checkpoint import CheckpointError, architecture_fingerprint
from resnet_jax.data.classes import imagenet_class_names
from resnet_jax.data.presets import Preset
from resnet_jax.models import ResNet, create_model

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}

CARD_FILE = "card.json"
FORMAT, VERSION = "resnet_jax.weights", 1
LEGACY_FORMAT = "resnet_jax.converted"  # Before card.json: an orbax 'metadata' item.
_STEP = 0


@dataclasses.dataclass(frozen=True)
class Card:
    """What a set of weights is and how to feed it: ``card.json`` next to the variables."""

    architecture: str  # Registry name: create_model(architecture, **arguments).
    arguments: dict[str, Any]
    preset: Preset
    classes: tuple[str, ...] | None
    origin: dict[str, Any]  # {'framework', 'weights', 'preset_note'} or {'workdir', 'step'}.
    verification: dict[str, Any] | None = None  # Figures against the source framework.

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Card:
        classes = tuple(d["classes"]) if d.get("classes") else None
        fields = {f.name: d.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**{**fields, "preset": Preset.from_dict(d["preset"]), "classes": classes})


class Loaded(NamedTuple):
    model: ResNet
    variables: Variables
    preset: Preset
    classes: tuple[str, ...] | None
    card: Card


def converted_card(
    architecture: str,
    source: str,
    weights: str,
    preset: Preset,
    overrides: dict[str, Any] | None = None,
    class_names: Any = None,
    preset_origin: str | None = None,
    verification: dict[str, Any] | None = None,
) -> Card:
    """The card of converted weights; 1000 classes without names are ImageNet's."""
    model = create_model(architecture, **(overrides or {}))  # Refuses unknown names early.
    if class_names is None and model.num_classes == 1000:
        class_names = imagenet_class_names()
    origin = {"framework": source, "weights": weights, "preset_note": preset_origin}
    classes = tuple(class_names) if class_names is not None else None
    arguments = {**(overrides or {}), "num_classes": model.num_classes}
    return Card(architecture, arguments, preset, classes, origin, verification)


def _abstract(model: ResNet) -> Variables:
    from resnet_jax.convert.common import abstract_variables  # resnet_jax.convert imports us.

    return traverse_util.unflatten_dict(abstract_variables(model))


def _orbax(directory: epath.Path, save: bool = False, **items: Any) -> Any:
    """Saves (or restores) orbax items at step 0 of ``directory``."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        directory.absolute(),
        item_names=("variables", "metadata"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False),
    )
    try:
        if save:
            return manager.save(_STEP, args=ocp.args.Composite(**items))
        return manager.restore(_STEP, args=ocp.args.Composite(**items))
    finally:
        manager.close()  # Waits for the save.


def _legacy_card(directory: epath.Path) -> Card | None:
    """The card of a directory written before card.json (orbax 'metadata' item), or None."""
    import orbax.checkpoint as ocp

    if not (directory / str(_STEP) / "metadata").is_dir():
        return None
    m = _orbax(directory, metadata=ocp.args.JsonRestore())["metadata"]
    if m.get("format") != LEGACY_FORMAT:
        return None
    return converted_card(
        m["architecture"], m["source"], m["weights"], Preset.from_dict(m["preset"]),
        m.get("model_overrides"), m.get("class_names"), m.get("preset_origin"),
        m.get("verification"),
    )  # fmt: skip


def read_card(directory: str | os.PathLike) -> Card | None:
    """The card of a weights directory (card.json, or the metadata of older ones), or None."""
    directory = epath.Path(directory)
    card = directory / CARD_FILE
    if card.is_file():
        return Card.from_dict(json.loads(card.read_text()))
    return _legacy_card(directory)


def kind(path: str | os.PathLike) -> str:
    """'weights' or 'workdir' (train.py's config.json or checkpoints/): the one place that
    tells them apart; FileNotFoundError naming what to give otherwise."""
    from resnet_jax.training.restore import is_workdir

    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such checkpoint directory; give a converted checkpoint or a training "
            "workdir (the --workdir of train.py)."
        )
    if (path / CARD_FILE).is_file():
        return "weights"
    if is_workdir(path):
        return "workdir"
    if _legacy_card(path) is not None:
        return "weights"
    raise FileNotFoundError(
        f"{path} is neither a converted checkpoint nor a training workdir (no config.json "
        "or checkpoints/ in it); give the folder that resnet_jax.convert or train.py wrote."
    )


def load(path: str | os.PathLike) -> Loaded:
    """(model, variables, preset, classes, card) of a weights directory or of a training
    workdir's latest checkpoint; variables land on the first local device."""
    import orbax.checkpoint as ocp

    if kind(path) == "workdir":
        return _load_workdir(path)
    card = read_card(path)
    model = build_model(card)
    abstract = _abstract(model)
    restored = _orbax(epath.Path(path), variables=ocp.args.StandardRestore(abstract))
    return Loaded(model, dict(restored["variables"]), card.preset, card.classes, card)


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
    import orbax.checkpoint as ocp

    directory = epath.Path(directory)
    if check_target(directory, overwrite):
        directory.rmtree()
    variables = jax.tree.map(jnp.asarray, {k: variables[k] for k in ("params", "batch_stats")})
    directory.mkdir(parents=True, exist_ok=True)
    _orbax(directory, save=True, variables=ocp.args.StandardSave(variables))
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


def build_model(card: Card) -> ResNet:
    """The card's architecture in float32 on one device: the one place a loaded model is
    built (through the training config's builder, which also turns JSON lists to tuples)."""
    from resnet_jax.build import model_from_config

    kwargs = {k: v for k, v in card.arguments.items() if k != "num_classes"}
    config = ml_collections.ConfigDict({"model": {"name": card.architecture, "kwargs": kwargs}})
    return model_from_config(config, card.arguments["num_classes"])


def _load_workdir(workdir: str | os.PathLike) -> Loaded:
    """The latest checkpoint, with the model of the config stored with it (config.json may
    have been rewritten by a later run or a person); its parameter layout must match."""
    from resnet_jax.training.restore import load_variables, preset_from_config, read_config
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
            "num_classes": int(meta.get("num_classes") or params["fc"]["kernel"].shape[-1]),
        },
        preset_from_config(config),
        tuple(names) if names else None,
        {"workdir": str(workdir), "step": meta.get("step"), "dataset": config.data.dataset},
    )
    model = build_model(card)
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
