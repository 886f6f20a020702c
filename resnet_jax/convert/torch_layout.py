"""Flax variable paths <-> PyTorch state_dict keys for torchvision and timm ResNets.

torchvision and timm share one naming (``layer1.0.conv1.weight``, ``downsample.0/1``,
``fc``); timm's ResNet-D adds a deep stem inside ``conv1`` (a Sequential: conv, BN, ReLU,
x3, its last BN being ``bn1``) and an average-pool shortcut ``downsample.0`` (no weights)
before ``downsample.1`` (conv) and ``downsample.2`` (BN).
"""

from __future__ import annotations

import flax.linen as nn

from resnet_jax.convert.common import (
    CONV_OIHW_TO_HWIO,
    LINEAR_OUT_IN_TO_IN_OUT,
    Layout,
    LeafNames,
    named_layout,
    parse_block,
)

# Deep stem (timm resnet*d): nn.Sequential(conv, bn, act, conv, bn, act, conv) + bn1.
_DEEP_STEM = {
    "stem_conv1": "conv1.0",
    "stem_bn1": "conv1.1",
    "stem_conv2": "conv1.3",
    "stem_bn2": "conv1.4",
    "stem_conv3": "conv1.6",
    "stem_bn3": "bn1",
}
# PyTorch's ResNet convs have no bias: a Flax conv bias has no name there.
_LEAVES: LeafNames = {
    ("conv", "params", "kernel"): ("weight", CONV_OIHW_TO_HWIO),
    ("fc", "params", "kernel"): ("weight", LINEAR_OUT_IN_TO_IN_OUT),
    ("fc", "params", "bias"): ("bias", None),
    ("bn", "params", "scale"): ("weight", None),
    ("bn", "params", "bias"): ("bias", None),
    ("bn", "batch_stats", "mean"): ("running_mean", None),
    ("bn", "batch_stats", "var"): ("running_var", None),
}
_BLOCK_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def is_bn_counter(key: str) -> bool:
    """BN's ``num_batches_tracked`` buffers carry no numerics (momentum is fixed)."""
    return key.endswith("num_batches_tracked")


def torch_module(modules: tuple[str, ...], avgpool_shortcut: bool) -> str | None:
    """('layer1_0', 'downsample_conv') -> 'layer1.0.downsample.0' (or '.1' with the avg pool)."""
    if len(modules) == 1:
        name = modules[0]
        if name in ("conv1", "bn1", "fc"):
            return name
        return _DEEP_STEM.get(name)
    if len(modules) == 2 and parse_block(modules[0]) is not None:
        stage, index = parse_block(modules[0])
        block, layer = f"layer{stage}.{index}", modules[1]
        offset = 1 if avgpool_shortcut else 0
        if layer in _BLOCK_LAYERS:
            return f"{block}.{layer}"
        if layer == "downsample_conv":
            return f"{block}.downsample.{offset}"
        if layer == "downsample_bn":
            return f"{block}.downsample.{offset + 1}"
    return None


def torch_layout(model: nn.Module) -> Layout:
    """The PyTorch key and transpose for every variable of ``model`` (v1.5, ResNet-D, Wide,
    ResNeXt); raises for variables PyTorch's ResNets do not have (v1 biases, v2 blocks)."""
    avgpool_shortcut = getattr(model, "shortcut", "conv") == "avgpool"
    return named_layout(
        model,
        "PyTorch (torchvision/timm)",
        lambda modules: torch_module(modules, avgpool_shortcut),
        _LEAVES,
        ".",
    )
