"""Residual blocks: basic and bottleneck (He et al. 2015) and pre-activation (He et al. 2016).

Every block checks its input and output with chex at trace time: rank, the channel count it
was built for, the spatial size after its stride and the compute dtype. A wrong input fails
with the block's name instead of an opaque shape error deep inside a convolution.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import LayerFactory, avg_pool_2x2_ceil, subsample

SHORTCUTS = ("conv", "avgpool", "zeropad", "none")


def _label(module: nn.Module) -> str:
    kind = type(module).__name__
    return f"{module.name} ({kind})" if module.name else kind


def check_input(block: nn.Module, x: jax.Array, channels: int) -> None:
    chex.assert_rank(x, 4, custom_message=f"{_label(block)} expects NHWC images")
    if x.shape[-1] != channels:
        raise ValueError(
            f"{_label(block)} expects {channels} input channels (NHWC, channels last), got input "
            f"of shape {x.shape}. Check the input layout and the model's in_channels."
        )


def check_output(
    block: nn.Module, x: jax.Array, y: jax.Array, stride: int, channels: int, dtype
) -> None:
    n, h, w, _ = x.shape
    expected = (n, math.ceil(h / stride), math.ceil(w / stride), channels)
    chex.assert_shape(y, expected, custom_message=f"{_label(block)} output")
    chex.assert_type(y, dtype, custom_message=f"{_label(block)} output")


def drop_path(x: jax.Array, rate: float, keep: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016) as timm's drop_path: the residual branch of examples
    not in ``keep`` (bool [N]) is zeroed, the kept ones are scaled by 1 / (1 - rate)."""
    keep = keep.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (keep.astype(x.dtype) / (1.0 - rate))


def residual_branch(block: nn.Module, y: jax.Array) -> jax.Array:
    """The residual branch before the add: drop path in training (Flax 'dropout' rng stream)."""
    if block.drop_path_rate == 0 or not block.layers.train:
        return y
    rate = block.drop_path_rate
    keep = jax.random.bernoulli(block.make_rng("dropout"), 1 - rate, y.shape[:1])
    return drop_path(y, rate, keep)


def projection_shortcut(
    x: jax.Array,
    kind: str,
    layers: LayerFactory,
    out_channels: int,
    stride: int,
    bias: bool = False,
) -> jax.Array:
    """The shortcut of a block that changes resolution or width.

    'conv': 1x1 strided conv + BN (option B, torchvision); 'avgpool': 2x2 average pool then
    1x1 conv + BN (ResNet-D); 'zeropad': subsample and zero-pad channels (option A, the CIFAR
    nets of the paper); 'none': no shortcut (the plain nets).
    """
    if kind == "conv":
        x = layers.conv(out_channels, 1, stride, bias=bias, name="downsample_conv")(x)
        return layers.norm(name="downsample_bn")(x)
    if kind == "avgpool":
        if stride > 1:
            x = avg_pool_2x2_ceil(x)
        x = layers.conv(out_channels, 1, bias=bias, name="downsample_conv")(x)
        return layers.norm(name="downsample_bn")(x)
    if kind == "zeropad":
        x = subsample(x, stride)
        extra = out_channels - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    raise ValueError(f"Unknown shortcut {kind!r}; expected one of {SHORTCUTS}.")


def add_shortcut(block: nn.Module, x: jax.Array, y: jax.Array, out_channels: int) -> jax.Array:
    """The end of a post-activation block: its shortcut added to the branch ``y`` (projected
    when the block changes resolution or width), then ReLU; the output checked."""
    if block.shortcut != "none":
        residual = x
        if block.stride != 1 or block.in_channels != out_channels:
            residual = projection_shortcut(
                x, block.shortcut, block.layers, out_channels, block.stride, block.conv_bias
            )
        y = residual_branch(block, y) + residual
    y = nn.relu(y)
    check_output(block, x, y, block.stride, out_channels, block.layers.dtype)
    return y


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); the stride is on the first."""

    features: int
    in_channels: int
    layers: LayerFactory
    stride: int = 1
    shortcut: str = "conv"
    conv_bias: bool = False
    zero_init_last_bn: bool = False
    drop_path_rate: float = 0.0
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x, self.in_channels)
        L = self.layers
        y = L.conv(self.features, 3, self.stride, bias=self.conv_bias, name="conv1")(x)
        y = nn.relu(L.norm(name="bn1")(y))
        y = L.conv(self.features, 3, bias=self.conv_bias, name="conv2")(y)
        y = L.norm(zero_init=self.zero_init_last_bn, name="bn2")(y)
        return add_shortcut(self, x, y, self.features)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4.

    v1.5 (torchvision, timm; the default) strides the 3x3 conv; v1 (Keras Applications,
    the original paper) strides the first 1x1. Width = features * width_per_group / 64 * groups,
    which gives Wide ResNet (width_per_group=128) and ResNeXt (groups=32, width_per_group=4).
    """

    features: int
    in_channels: int
    layers: LayerFactory
    stride: int = 1
    groups: int = 1
    width_per_group: int = 64
    stride_on_1x1: bool = False
    shortcut: str = "conv"
    conv_bias: bool = False
    zero_init_last_bn: bool = False
    drop_path_rate: float = 0.0
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x, self.in_channels)
        L, bias = self.layers, self.conv_bias
        width = int(self.features * (self.width_per_group / 64.0)) * self.groups
        out = self.features * self.expansion
        s1, s3 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
        y = L.conv(width, 1, s1, bias=bias, name="conv1")(x)
        y = nn.relu(L.norm(name="bn1")(y))
        y = L.conv(width, 3, s3, groups=self.groups, bias=bias, name="conv2")(y)
        y = nn.relu(L.norm(name="bn2")(y))
        y = L.conv(out, 1, bias=bias, name="conv3")(y)
        y = L.norm(zero_init=self.zero_init_last_bn, name="bn3")(y)
        return add_shortcut(self, x, y, out)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (ResNet v2, He et al. 2016), as in Keras ResNet50V2.

    BN-ReLU comes first and feeds the convs and a projection shortcut; an identity shortcut
    takes the block input itself, subsampled (a 1x1 max pool) when the block strides. Biases
    sit on convs not followed by BN (the 1x1 expand and the projection) when conv_bias is set.
    """

    features: int
    in_channels: int
    layers: LayerFactory
    stride: int = 1
    conv_bias: bool = True
    drop_path_rate: float = 0.0
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x, self.in_channels)
        L = self.layers
        out = self.features * self.expansion
        preact = nn.relu(L.norm(name="preact_bn")(x))
        if self.in_channels != out:
            residual = L.conv(out, 1, self.stride, bias=self.conv_bias, name="downsample_conv")(
                preact
            )
        else:
            residual = subsample(x, self.stride)
        y = L.conv(self.features, 1, name="conv1")(preact)
        y = nn.relu(L.norm(name="bn1")(y))
        y = L.conv(self.features, 3, self.stride, name="conv2")(y)
        y = nn.relu(L.norm(name="bn2")(y))
        y = L.conv(out, 1, bias=self.conv_bias, name="conv3")(y)
        y = residual_branch(self, y) + residual
        check_output(self, x, y, self.stride, out, L.dtype)
        return y
