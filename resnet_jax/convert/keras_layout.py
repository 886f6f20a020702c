"""Flax variable paths <-> Keras Applications ResNet weights (v1 ResNet50 and v2 ResNet50V2).

Keras names layers ``conv{2..5}_block{i}_{0,1,2,3}_{conv,bn}`` (0 = shortcut), v2 adds
``_preact_bn`` and a final ``post_bn``; the classifier is ``predictions``. Kernels are
already HWIO / (in, out), so no transposes. ``keras_weighted_layers`` lists the layers with
weights in the functional model's order, which is how Keras 3 ``.weights.h5`` files are
keyed (per-class counters: ``conv2d``, ``conv2d_1``, ...).
"""

from __future__ import annotations

import flax.linen as nn

from resnet_jax.convert.common import Layout, LeafNames, named_layout, parse_block

KERAS_APPS = {
    "resnet50_v1": "ResNet50",
    "resnet101_v1": "ResNet101",
    "resnet152_v1": "ResNet152",
    "resnet50_v2": "ResNet50V2",
    "resnet101_v2": "ResNet101V2",
    "resnet152_v2": "ResNet152V2",
}
# Variable order inside each layer class, as Keras creates (and saves) them.
KERAS_VARIABLES = {
    "Conv2D": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Dense": ("kernel", "bias"),
}
# Keras 3 saving names each layer by its snake-cased class plus a counter.
AUTO_NAME_BASES = {
    "Conv2D": "conv2d",
    "BatchNormalization": "batch_normalization",
    "Dense": "dense",
}
_BLOCK_LAYERS = {
    "conv1": "1_conv",
    "bn1": "1_bn",
    "conv2": "2_conv",
    "bn2": "2_bn",
    "conv3": "3_conv",
    "bn3": "3_bn",
    "downsample_conv": "0_conv",
    "downsample_bn": "0_bn",
    "preact_bn": "preact_bn",
}
_TOP = {"conv1": "conv1_conv", "bn1": "conv1_bn", "post_bn": "post_bn", "fc": "predictions"}
_LEAVES: LeafNames = {
    **{
        (kind, "params", leaf): (leaf, None)
        for kind in ("conv", "fc")
        for leaf in ("kernel", "bias")
    },
    ("bn", "params", "scale"): ("gamma", None),
    ("bn", "params", "bias"): ("beta", None),
    ("bn", "batch_stats", "mean"): ("moving_mean", None),
    ("bn", "batch_stats", "var"): ("moving_variance", None),
}


def keras_app_name(name: str) -> tuple[str, str]:
    """'resnet50_v1' or 'ResNet50' -> ('resnet50_v1', 'ResNet50')."""
    if name in KERAS_APPS:
        return name, KERAS_APPS[name]
    for ours, app in KERAS_APPS.items():
        if name == app:
            return ours, app
    known = ", ".join(f"{k} ({v})" for k, v in KERAS_APPS.items())
    raise ValueError(f"No Keras Applications ResNet named {name!r}; known: {known}.")


def keras_layer(modules: tuple[str, ...]) -> str | None:
    """('layer2_0', 'downsample_conv') -> 'conv3_block1_0_conv'."""
    if len(modules) == 1:
        return _TOP.get(modules[0])
    parsed = parse_block(modules[0]) if len(modules) == 2 else None
    if parsed is None or modules[1] not in _BLOCK_LAYERS:
        return None
    stage, index = parsed
    return f"conv{stage + 1}_block{index + 1}_{_BLOCK_LAYERS[modules[1]]}"


def keras_layout(model: nn.Module) -> Layout:
    """The Keras weight key ('conv1_conv/kernel', 'conv1_bn/gamma', ...) of every variable."""
    return named_layout(model, "Keras Applications", keras_layer, _LEAVES, "/")


def keras_weighted_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(Keras class, layer name) of every layer with weights, in the functional model's order.

    Within a block Keras orders the shortcut conv after the residual branch's 3x3 (its
    layers are sorted by graph depth); v1 puts both final BNs after both 1x1 convs.
    """
    conv, bn = "Conv2D", "BatchNormalization"
    v2 = model.variant == "v2"
    order = [(conv, "conv1_conv")] + ([] if v2 else [(bn, "conv1_bn")])
    for s, blocks in enumerate(model.stage_sizes):
        for i in range(blocks):
            p = f"conv{s + 2}_block{i + 1}"
            shortcut = i == 0
            order += [(bn, f"{p}_preact_bn")] if v2 else []
            order += [(conv, f"{p}_1_conv"), (bn, f"{p}_1_bn"), (conv, f"{p}_2_conv")]
            order += [(bn, f"{p}_2_bn")]
            order += [(conv, f"{p}_0_conv")] if shortcut else []
            order += [(conv, f"{p}_3_conv")]
            if not v2:
                order += ([(bn, f"{p}_0_bn")] if shortcut else []) + [(bn, f"{p}_3_bn")]
    order += [(bn, "post_bn")] if v2 else []
    order += [("Dense", "predictions")] if model.include_top else []
    return order


def auto_names(order: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Keras 3 saving's class-based names: {'conv2d_9': ('Conv2D', 'conv2_block3_2_conv')}."""
    counts: dict[str, int] = {}
    names = {}
    for cls, layer in order:
        base = AUTO_NAME_BASES[cls]
        n = counts.get(base, -1) + 1
        counts[base] = n
        names[base if n == 0 else f"{base}_{n}"] = (cls, layer)
    return names


def class_of_auto_name(auto: str) -> str | None:
    """'batch_normalization_12' -> 'BatchNormalization'; None for layers without weights."""
    head, _, tail = auto.rpartition("_")
    base = head if tail.isdigit() else auto
    return next((cls for cls, b in AUTO_NAME_BASES.items() if b == base), None)
