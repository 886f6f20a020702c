"""Keras Applications ResNets -> Flax, from the model object or from its weight files.

Three file layouts are read with h5py alone (no Keras, no TensorFlow):
  * Keras 3 ``.weights.h5`` (and the ``model.weights.h5`` inside a ``.keras`` zip): variables
    under class-based names (``layers/conv2d_9/vars/0``), mapped by the model's layer order.
    Recent Keras also records each layer's name there; when it does, names must agree with
    that order or the file is refused, and they key the mismatch report.
  * Legacy ``.h5`` from ``model.save`` (``model_weights/conv1_conv/conv1_conv/kernel``) or
    Keras 2 ``save_weights`` (``conv1_conv/conv1_conv/kernel:0``): layer-named groups.

    variables = from_keras("resnet50.weights.h5", "resnet50_v1")
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import numpy as np
from etils import epath

from resnet_jax.convert.common import Variables, convert, resolve_model
from resnet_jax.convert.keras_layout import (
    KERAS_VARIABLES,
    auto_names,
    class_of_auto_name,
    keras_layout,
    keras_weighted_layers,
)

if TYPE_CHECKING:
    import h5py


class KerasLayerOrderError(ValueError):
    """A ``.weights.h5`` whose recorded layer names disagree with the model's layer order."""


def model_arrays(keras_model: Any) -> dict[str, np.ndarray]:
    """{'conv1_conv/kernel': array, ...} from a built Keras model."""
    return {
        f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": np.asarray(w.value)
        for layer in keras_model.layers
        for w in layer.weights
    }


def _open_h5(path: str | os.PathLike) -> h5py.File:
    import h5py  # The `reference` extra's: loading any checkpoint imports this module.

    data = io.BytesIO(epath.Path(path).read_bytes())
    if zipfile.is_zipfile(data):  # a .keras archive holds model.weights.h5
        with zipfile.ZipFile(data) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise ValueError(f"{path} is a zip archive without model.weights.h5.")
            return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    return h5py.File(data, "r")


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def legacy_h5_arrays(f: h5py.File) -> dict[str, np.ndarray]:
    """Layer-named legacy HDF5 (Keras 2, or Keras 3 ``model.save('x.h5')``)."""
    root = f["model_weights"] if "model_weights" in f else f
    arrays = {}
    for layer in (_text(n) for n in root.attrs["layer_names"]):
        group = root[layer]
        for weight in (_text(n) for n in group.attrs.get("weight_names", [])):
            arrays[f"{layer}/{weight.split('/')[-1].split(':')[0]}"] = np.asarray(group[weight])
    return arrays


def weights_h5_arrays(f: h5py.File, model: nn.Module) -> dict[str, np.ndarray]:
    """Keras 3 ``.weights.h5``: class-based names resolved through the model's layer order."""
    by_auto = auto_names(keras_weighted_layers(model))
    stored: dict[str, tuple[str | None, list[np.ndarray]]] = {}
    for auto, group in f["layers"].items():
        variables = group.get("vars")
        if variables is None or not len(variables):
            continue
        recorded = variables.attrs.get("name")
        values = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        stored[auto] = (None if recorded is None else _text(recorded), values)

    named = all(recorded is not None for recorded, _ in stored.values())
    if named:
        expected = {layer for _, layer in by_auto.values()}
        if {recorded for recorded, _ in stored.values()} == expected:
            wrong = [
                f"layers/{auto} holds {recorded!r}, the model's order expects {by_auto[auto][1]!r}"
                for auto, (recorded, _) in stored.items()
                if by_auto.get(auto, (None, None))[1] != recorded
            ]
            if wrong:
                raise KerasLayerOrderError(
                    "The file's layers are not in the model's layer order, so Keras itself "
                    "would load them into the wrong layers:\n  " + "\n  ".join(wrong[:20])
                )
    arrays = {}
    for auto, (recorded, values) in stored.items():
        cls, layer = by_auto.get(auto, (None, None))
        if named:
            layer, cls = recorded, class_of_auto_name(auto)
        if layer is None or cls is None:  # more layers than the model has: unexpected
            arrays.update({f"layers/{auto}/vars/{i}": v for i, v in enumerate(values)})
            continue
        names = KERAS_VARIABLES[cls]
        for i, value in enumerate(values):
            key = f"{layer}/{names[i]}" if i < len(names) else f"{layer}/vars/{i}"
            arrays[key] = value
    return arrays


def file_arrays(path: str | os.PathLike, model: nn.Module) -> dict[str, np.ndarray]:
    """Keras weights from any supported file layout, keyed 'layer/weight'."""
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"No such weights file: {path}")
    with _open_h5(path) as f:
        if "layers" in f and "vars" in f:
            return weights_h5_arrays(f, model)
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return legacy_h5_arrays(f)
    raise ValueError(
        f"{path} is neither a Keras 3 .weights.h5 (groups 'layers' and 'vars') nor a legacy "
        f"Keras .h5 (a 'layer_names' attribute)."
    )


def from_keras(source: Any, model: str | nn.Module = "resnet50_v1", **overrides: Any) -> Variables:
    """A Keras ResNet (model object, ``.weights.h5``, ``.keras`` or legacy ``.h5``) ->
    {'params', 'batch_stats'} for ``model`` (a registry name such as 'resnet50_v2')."""
    label, module = resolve_model(model, **overrides)
    if isinstance(source, str | os.PathLike):
        arrays = file_arrays(source, module)
    elif hasattr(source, "layers"):
        arrays = model_arrays(source)
    else:
        arrays = {str(k): np.asarray(v) for k, v in dict(source).items()}
    return convert(arrays, module, keras_layout(module), f"{label} (Keras Applications layout)")
