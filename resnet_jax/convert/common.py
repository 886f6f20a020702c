"""Source-agnostic conversion: a layout maps each Flax variable to a source key and transpose.

A converter is a layout plus a loader. The layout is derived from the target model's own
variable tree (shapes via ``jax.eval_shape``, nothing computed), so every variable the model
needs is accounted for and every checkpoint key is checked: missing, unexpected and
mis-shaped keys are reported together in one error.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.build import model_from_name

Path = tuple[str, ...]  # ('params', 'layer1_0', 'conv1', 'kernel')
Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}

CONV_OIHW_TO_HWIO = (2, 3, 1, 0)  # PyTorch conv weight -> Flax kernel (grouped convs too)
LINEAR_OUT_IN_TO_IN_OUT = (1, 0)  # PyTorch Linear weight -> Flax Dense kernel


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where a Flax variable lives in the source: its key, and the axis permutation
    ``perm`` with ``flax = source.transpose(perm)`` (None: same layout)."""

    key: str
    perm: tuple[int, ...] | None = None

    def to_flax(self, value: np.ndarray) -> np.ndarray:
        return value if self.perm is None else np.transpose(value, self.perm)

    def to_source(self, value: np.ndarray) -> np.ndarray:
        return value if self.perm is None else np.transpose(value, np.argsort(self.perm))

    def source_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.perm is None:
            return tuple(flax_shape)
        return tuple(flax_shape[i] for i in np.argsort(self.perm))


Layout = dict[Path, Entry]


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the architecture: lists every missing, unexpected and
    mis-shaped key (in the source's own naming and layout)."""

    def __init__(
        self,
        target: str,
        missing: list[str],
        unexpected: list[str],
        misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        limit: int = 20,
    ):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [
            f"Checkpoint does not fit {target}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected and {len(misshaped)} mis-shaped keys."
        ]

        def section(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")

        section("missing (the model needs them, the checkpoint lacks them)", missing)
        section("unexpected (in the checkpoint, not in the model)", unexpected)
        section(
            "mis-shaped (checkpoint shape vs expected shape)",
            [f"{k}: {tuple(got)} vs expected {tuple(want)}" for k, got, want in misshaped],
        )
        lines.append(
            "Is it a checkpoint of another depth, width or variant? Choose the model that "
            "matches it (see resnet_jax.list_models()) or pass matching overrides such as "
            "num_classes."
        )
        super().__init__("\n".join(lines))


def resolve_model(model: str | nn.Module, **overrides: Any) -> tuple[str, nn.Module]:
    """A registry name (with overrides) or a ready ResNet module -> (label, module)."""
    if isinstance(model, str):
        return model, model_from_name(model, **overrides)
    if overrides:
        raise ValueError("Overrides apply to a model name; pass them to create_model instead.")
    return type(model).__name__, model


@functools.lru_cache(maxsize=32)
def abstract_variables(model: nn.Module) -> dict[Path, jax.ShapeDtypeStruct]:
    """The model's variables as flat {path: ShapeDtypeStruct}, traced without computing
    (cached per architecture: modules compare by their attributes). Do not mutate."""
    x = jax.ShapeDtypeStruct((1, 64, 64, getattr(model, "in_channels", 3)), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return traverse_util.flatten_dict(nn.unbox(tree))


# A source framework's name and transpose for each variable: keyed by (the Flax module's kind,
# collection, leaf); the kind is 'fc', 'bn' (any module named with bn) or 'conv'.
LeafNames = dict[tuple[str, str, str], tuple[str, tuple[int, ...] | None]]


def named_layout(
    model: nn.Module,
    layout_name: str,
    module_key: Callable[[tuple[str, ...]], str | None],
    leaves: LeafNames,
    sep: str,
) -> Layout:
    """Every variable's source key: its module's key in the source (``module_key``), ``sep``,
    then its leaf's name from ``leaves``; a variable without a name there raises."""

    def name(path: Path) -> Entry:
        collection, modules, leaf = module_path(path)
        prefix = module_key(modules)
        kind = "fc" if modules[-1] == "fc" else "bn" if "bn" in modules[-1] else "conv"
        if prefix is None or (kind, collection, leaf) not in leaves:
            raise unknown_variable(path, layout_name)
        key, perm = leaves[(kind, collection, leaf)]
        return Entry(f"{prefix}{sep}{key}", perm)

    return {path: name(path) for path in abstract_variables(model)}


def convert(
    source: Mapping[str, np.ndarray],
    model: nn.Module,
    layout: Layout,
    target: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> Variables:
    """Source arrays -> {'params', 'batch_stats'} for ``model``, after checking every key."""
    expected = abstract_variables(model)
    wanted = {entry.key: path for path, entry in layout.items()}
    missing = sorted((e.key for e in layout.values() if e.key not in source), key=natural)
    unexpected = sorted((k for k in source if k not in wanted and not ignore(k)), key=natural)
    misshaped = []
    for key, path in wanted.items():
        if key in source:
            want = layout[path].source_shape(expected[path].shape)
            got = tuple(np.shape(source[key]))
            if got != want:
                misshaped.append((key, got, want))
    if missing or unexpected or misshaped:
        misshaped.sort(key=lambda item: natural(item[0]))
        raise CheckpointMismatchError(target, missing, unexpected, misshaped)
    flat = {
        path: np.asarray(layout[path].to_flax(np.asarray(source[e.key])), expected[path].dtype)
        for path, e in layout.items()
    }
    return traverse_util.unflatten_dict(flat)


def export(variables: Variables, layout: Layout) -> dict[str, np.ndarray]:
    """The reverse of ``convert``: Flax variables -> {source key: array in source layout}."""
    flat = traverse_util.flatten_dict(nn.unbox(dict(variables)))
    missing = sorted("/".join(p) for p in layout if p not in flat)
    unexpected = sorted("/".join(p) for p in flat if p not in layout)
    if missing or unexpected:
        raise CheckpointMismatchError("the layout", missing, unexpected, [])
    return {
        entry.key: np.ascontiguousarray(entry.to_source(np.asarray(flat[path])))
        for path, entry in layout.items()
    }


def natural(key: str) -> tuple:
    """Sort key that puts 'layer1.2' before 'layer1.10' (digits compare as numbers)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def module_path(path: Path) -> tuple[str, tuple[str, ...], str]:
    """('params', 'layer1_0', 'conv1', 'kernel') -> ('params', ('layer1_0', 'conv1'), 'kernel')."""
    return path[0], tuple(path[1:-1]), path[-1]


def parse_block(name: str) -> tuple[int, int] | None:
    """'layer3_5' -> (3, 5): the 1-based stage and 0-based block index; None otherwise."""
    if name.startswith("layer") and "_" in name:
        stage, index = name[len("layer") :].split("_", 1)
        if stage.isdigit() and index.isdigit():
            return int(stage), int(index)
    return None


def unknown_variable(path: Path, layout_name: str) -> ValueError:
    return ValueError(
        f"The {layout_name} layout has no name for the Flax variable {'/'.join(path)}; this "
        f"architecture cannot be expressed in that layout."
    )
