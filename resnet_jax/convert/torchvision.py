"""torchvision ResNets <-> Flax: state_dicts from a model, a ``.pth`` or a ``.safetensors``.

The reverse direction writes torchvision's own layout, so weights trained here load there:

    variables = from_torchvision("resnet50.pth", "resnet50")
    state_dict = to_torchvision(variables, "resnet50")   # loads with strict=True in torchvision
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from etils import epath

from resnet_jax.convert.common import Variables, convert, export, resolve_model
from resnet_jax.convert.published import PublishedFile, describe, file_note, from_url, recognise
from resnet_jax.convert.reference import (
    Reference,
    download,
    preset_from_values,
    randomize_torch_batchnorm,
    torch_runner,
)
from resnet_jax.convert.torch_compat import import_torchvision, load_torch_file, to_numpy
from resnet_jax.convert.torch_layout import is_bn_counter, torch_layout
from resnet_jax.data.presets import get_preset

TORCHVISION_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
)

StateDictSource = Mapping[str, Any] | str | os.PathLike | Any  # mapping, file or nn.Module


def state_dict_arrays(source: StateDictSource) -> dict[str, np.ndarray]:
    """A state_dict as NumPy arrays, from a mapping, a weights file or a torch module."""
    if isinstance(source, str | os.PathLike):
        source = load_torch_file(source)
    elif hasattr(source, "state_dict") and callable(source.state_dict):
        source = source.state_dict()
    return to_numpy(source)


def from_torchvision(
    source: StateDictSource, model: str | nn.Module = "resnet50", **overrides: Any
) -> Variables:
    """torchvision or timm weights (module, state_dict or file) -> {'params', 'batch_stats'}
    for ``model``; timm's ResNet-D extras follow from the model (``torch_layout``)."""
    label, module = resolve_model(model, **overrides)
    return convert(
        state_dict_arrays(source),
        module,
        torch_layout(module),
        f"{label} (torchvision/timm layout)",
        ignore=is_bn_counter,
    )


def to_torchvision(
    variables: Variables, model: str | nn.Module = "resnet50", **overrides: Any
) -> OrderedDict[str, Any]:
    """Flax variables -> a torchvision state_dict (torch tensors, with BN batch counters), so
    ``torchvision.models.get_model(name).load_state_dict(sd)`` accepts it strictly."""
    import torch

    _, module = resolve_model(model, **overrides)
    arrays = export(variables, torch_layout(module))
    state_dict: OrderedDict[str, Any] = OrderedDict()
    for key, value in arrays.items():
        state_dict[key] = torch.from_numpy(np.array(value))  # owned, writable copy
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            state_dict[counter] = torch.tensor(0, dtype=torch.long)
    return state_dict


def check_model_name(name: str) -> None:
    if name not in TORCHVISION_MODELS:
        raise ValueError(
            f"torchvision has no ResNet named {name!r}; choose one of "
            f"{', '.join(TORCHVISION_MODELS)} (ResNet-D models come from --source timm, "
            f"v1/v2 models from --source keras)."
        )


def published_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum entry, e.g. ('resnet50', 'IMAGENET1K_V2')."""
    tv = import_torchvision()
    enum = tv.models.get_model_weights(name)
    key = weights.split(".")[-1]
    if key not in enum.__members__:
        raise ValueError(
            f"{weights!r} is neither a file nor a published weight of torchvision {name}; "
            f"published: {', '.join(enum.__members__)}."
        )
    return enum[key]


def published_files(name: str) -> list[PublishedFile]:
    """The files of torchvision's published weights for ``name``, as its enum's URLs name them."""
    enum = import_torchvision().models.get_model_weights(name)
    return [from_url(entry.url, f"torchvision {entry}", entry) for entry in enum]


def preset_for(weights: Any | None) -> Any:
    """The preprocessing that belongs to a torchvision weights enum entry (V1 when unknown)."""
    if weights is None:
        return get_preset("torchvision_v1")
    t = weights.transforms()
    return preset_from_values(
        "torchvision",
        t.resize_size[0],
        t.crop_size[0],
        t.interpolation.value,
        tuple(t.mean),
        tuple(t.std),
    )


def build_reference(name: str, weights: str | None = None, seed: int = 0) -> Reference:
    """torchvision's model from a file, a published name (IMAGENET1K_V2) or a seeded random
    init with randomised BN statistics, and its conversion."""
    import torch

    check_model_name(name)
    torch.manual_seed(seed)
    model = import_torchvision().models.get_model(name, weights=None)
    warnings = []
    if weights is None:
        preset = preset_for(None)
        randomize_torch_batchnorm(model, seed, preset)
        label, source = f"random (seed {seed})", model
        note = f"{describe(preset)}: torchvision's IMAGENET1K_V1 preprocessing"
    elif epath.Path(weights).exists():
        files = published_files(name)
        source = load_torch_file(weights)
        known, warnings = recognise(weights, files)
        label = f"{weights} = {known.key}" if known else str(weights)
        preset = preset_for(known.key if known else None)
        why = f"torchvision {name}: {', '.join(f.file_name for f in files)}"
        note = file_note(weights, preset, known, why)
    else:
        entry = published_weights(name, weights)
        source = download(
            lambda: entry.get_state_dict(progress=False, check_hash=True),
            f"torchvision {entry}",
            entry.url,
            f"--weights /path/to/{os.path.basename(entry.url)}",
        )
        label, preset = str(entry), preset_for(entry)
        note = f"{describe(preset)}: the preprocessing of torchvision {entry}"
    variables = from_torchvision(source, name)  # checks every key before torch sees them
    if source is not model:
        model.load_state_dict(source)
    return Reference(
        "torchvision", name, label, preset, variables, torch_runner(model), model,
        note, tuple(warnings),
    )  # fmt: skip
