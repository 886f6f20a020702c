"""The card of a set of weights (``card.json``: architecture and arguments, preset, class names,
origin, verified figures) and the one place that tells a weights directory from a workdir."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath

from resnet_jax.data.classes import imagenet_class_names
from resnet_jax.data.presets import Preset
from resnet_jax.models import ResNet
from resnet_jax.models.registry import model_arguments

CARD_FILE = "card.json"
FORMAT, VERSION = "resnet_jax.weights", 1
LEGACY_FORMAT = "resnet_jax.converted"  # Before card.json: an orbax 'metadata' item.
_STEP = 0


@dataclasses.dataclass(frozen=True)
class Card:
    """What a set of weights is and how to feed it: ``card.json`` next to the variables."""

    architecture: str  # Registry name: build.model_from_name(architecture, **arguments).
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
    arguments = model_arguments(architecture, overrides or {})  # Unknown names: refused.
    num_classes = arguments.get("num_classes", ResNet.num_classes)
    if class_names is None and num_classes == 1000:
        class_names = imagenet_class_names()
    origin = {"framework": source, "weights": weights, "preset_note": preset_origin}
    classes = tuple(class_names) if class_names is not None else None
    arguments = {**(overrides or {}), "num_classes": num_classes}
    return Card(architecture, arguments, preset, classes, origin, verification)


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


def save_variables(directory: str | os.PathLike, variables: dict[str, Any]) -> None:
    """Writes ``variables`` as a weights directory's orbax item (``restore_variables`` reads it)."""
    import orbax.checkpoint as ocp

    _orbax(epath.Path(directory), save=True, variables=ocp.args.StandardSave(variables))


def restore_variables(directory: str | os.PathLike, abstract: Any = None) -> dict[str, Any]:
    """The variables of a weights directory, shaped as ``abstract`` (None: as saved)."""
    import jax
    import orbax.checkpoint as ocp

    # On this host's first device, whatever device wrote them (a CPU box, a TPU VM).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    args = ocp.args.StandardRestore(abstract, fallback_sharding=device)
    return jax.device_put(dict(_orbax(epath.Path(directory), variables=args)["variables"]), device)
