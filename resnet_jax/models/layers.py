"""Convolution, normalisation and pooling, configured in one place.

PyTorch pads symmetrically (k // 2 on each side); Flax's 'SAME' pads (0, 1) or (2, 3) for
stride 2 on even inputs and would shift the sampling grid of converted weights, so every
convolution and pool here pads explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

Dtype = Any


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = kernel_size // 2
    return ((p, p), (p, p))


def kernel_init(name: str):
    """'he': Kaiming normal, fan_out, ReLU gain (torchvision, the paper); 'lecun': Flax default."""
    if name == "he":
        return nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    if name == "lecun":
        return nn.initializers.lecun_normal()
    raise ValueError(f"Unknown kernel_init {name!r}; expected 'he' or 'lecun'.")


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds conv and norm layers with dtype, init and BN settings decided in one place."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_scheme: str = "he"
    bn_momentum: float = 0.9  # Flax momentum 0.9 == PyTorch momentum 0.1
    bn_epsilon: float = 1e-5
    bn_axis_name: Any = None
    bn_axis_index_groups: Any = None
    train: bool = False
    conv_general_dilated: Callable = jax.lax.conv_general_dilated

    def conv(
        self,
        features: int,
        kernel: int,
        stride: int = 1,
        *,
        groups: int = 1,
        bias: bool = False,
        name: str | None = None,
    ) -> nn.Conv:
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=symmetric_padding(kernel),
            feature_group_count=groups,
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=kernel_init(self.init_scheme),
            conv_general_dilated=self.conv_general_dilated,
            name=name,
        )

    def stem_conv_space_to_depth(
        self, features: int, *, bias: bool = False, name: str | None = None
    ) -> SpaceToDepthStemConv:
        """The 7x7/2 stem conv computed on 2x2 space-to-depth input; same parameters as conv()."""
        return SpaceToDepthStemConv(
            features,
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=kernel_init(self.init_scheme),
            name=name,
        )

    def norm(self, *, zero_init: bool = False, name: str | None = None) -> nn.BatchNorm:
        return nn.BatchNorm(
            use_running_average=not self.train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            axis_index_groups=self.bn_axis_index_groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
            name=name,
        )


def max_pool_3x3_s2(x: jax.Array, pad_value: float = -jnp.inf) -> jax.Array:
    """3x3/2 max pool with one pixel of symmetric padding (torchvision: -inf; Keras V2: zeros).

    ``lax.reduce_window`` as ``nn.max_pool`` computes it, called directly: exporters that patch
    Flax's pooling functions (jax2onnx) then see the plain primitive."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    if pad_value != -jnp.inf:
        x = jnp.pad(x, pads, constant_values=pad_value)
        pads = ((0, 0),) * 4
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)


def avg_pool_2x2_ceil(x: jax.Array) -> jax.Array:
    """AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False), the ResNet-D shortcut pool."""
    h, w = x.shape[1], x.shape[2]
    pads = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    window = (1, 2, 2, 1)

    def total(a: jax.Array) -> jax.Array:
        zero = jnp.array(0, x.dtype)
        return jax.lax.reduce_window(jnp.pad(a, pads), zero, jax.lax.add, window, window, "VALID")

    return total(x) / total(jnp.ones((1, h, w, 1), x.dtype))  # Sums over pixels, not padding.


def subsample(x: jax.Array, stride: int) -> jax.Array:
    """Every stride-th pixel from the top-left: a 1x1 pool or a 1x1 strided conv's grid.

    A strided slice, not indexing: ``x[:, ::s, ::s]`` lowers to a gather, which ONNX and LiteRT
    converters do not all take once the batch dimension is symbolic."""
    if stride == 1:
        return x
    return jax.lax.slice(x, (0,) * 4, x.shape, (1, stride, stride, 1))


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
    """(N, H, W, C) -> (N, H/b, W/b, b*b*C), channels ordered (row in block, column, c)."""
    n, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(
            f"The space-to-depth stem needs an image height and width divisible by {block}, got "
            f"{h}x{w}. Use an even image size, or build the model with space_to_depth=False."
        )
    x = x.reshape(n, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def stem_kernel_space_to_depth(kernel: jax.Array) -> jax.Array:
    """A 7x7 HWIO kernel (stride 2, padding 3) as the equivalent 4x4 kernel on 2x2 blocks.

    A zero row and column in front make it 8x8; tap 2a+b of each axis becomes tap a of the
    block grid at in-block offset b, which is how space_to_depth orders the channels.
    """
    kh, kw, c, o = kernel.shape
    if (kh, kw) != (7, 7):
        raise ValueError(f"Expected a 7x7 stem kernel, got {kh}x{kw}.")
    kernel = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))
    kernel = kernel.reshape(4, 2, 4, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
    return kernel.reshape(4, 4, 4 * c, o)


class SpaceToDepthStemConv(nn.Module):
    """The 7x7/2 stem conv as a 4x4/1 conv on 2x2 space-to-depth input (MLPerf TPU ResNet-50).

    An exact reparametrisation: the stored parameter is the 7x7 kernel (and bias) of the plain
    stem, reshaped inside the call, so checkpoints work with either stem. Even sizes only.
    """

    features: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (7, 7, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (
            self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        # Input pixel 2i - 4 + k' (k' = 0..7) sits in block i - 2 + k' // 2: pad 2 blocks
        # before (the first pixel meets the zero tap) and 1 after.
        y = jax.lax.conv_general_dilated(
            space_to_depth(x),
            stem_kernel_space_to_depth(kernel),
            window_strides=(1, 1),
            padding=((2, 1), (2, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias if bias is not None else y
