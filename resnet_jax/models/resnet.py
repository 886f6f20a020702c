"""The ResNet family as one Linen module: v1, v1.5, v2 (pre-activation), ResNet-D, Wide
ResNet, ResNeXt and the CIFAR nets of the paper, with and without shortcuts.

Pure function with explicit state::

    variables = model.init(rng, x)                      # {'params', 'batch_stats'}
    logits = model.apply(variables, x)                  # eval: running statistics
    logits, new_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.blocks import (
    SHORTCUTS,
    BasicBlock,
    Bottleneck,
    PreActBottleneck,
    check_input,
)
from resnet_jax.models.layers import LayerFactory, max_pool_3x3_s2, torch_linear_init

VARIANTS = ("v1", "v1.5", "v2")
BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "deep", "cifar")
POOLINGS = ("avg", "max", None)


class ResNet(nn.Module):
    """Deep residual network (He et al. 2015, 2016) in NHWC.

    variant: 'v1.5' strides the bottleneck's 3x3 conv (torchvision, timm); 'v1' its first
      1x1 (Keras Applications ResNet50); 'v2' is pre-activation with the stride in the last
      block of each stage, as in Keras ResNet50V2.
    stem: 'imagenet' 7x7/2 conv + 3x3/2 max pool; 'deep' three 3x3 convs (ResNet-C/D, timm
      resnet50d); 'cifar' one 3x3 conv, no pool.
    shortcut: 'conv' projection (option B), 'avgpool' (ResNet-D), 'zeropad' (option A, the
      CIFAR nets), 'none' (plain nets without shortcuts).
    space_to_depth: compute the 'imagenet' 7x7/2 stem conv as a 4x4 conv on 2x2 space-to-depth
      input (MLPerf TPU); same parameters and outputs, even image sizes only.
    remat: recompute each block's activations in the backward pass (nn.remat) to fit larger
      per-device batches; same parameters and outputs.
    frozen_stages: the stem and the first k stages keep BN on running statistics in training
      and pass no gradient back (mmdetection's frozen_stages with norm_eval); 0: none, -1: the
      whole backbone (with v2's post_bn). Same parameters; fine-tuning pairs it with an
      optimizer that leaves those parameters alone.
    drop_path_rate: stochastic depth in training (needs a 'dropout' rng); block i of n drops its
      residual branch with rate * i / (n - 1), timm's linear rule. No parameters.
    conv_general_dilated: the function every nn.Conv computes with (``lax``'s; the opt-in
      ``resnet_jax.backend`` swaps in another with the same numbers).
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    variant: str = "v1.5"
    stem: str = "imagenet"
    stem_width: int = 64
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    shortcut: str = "conv"
    groups: int = 1
    width_per_group: int = 64
    num_classes: int = 1000
    include_top: bool = True
    pooling: str | None = "avg"
    in_channels: int = 3
    conv_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: Any = None
    bn_axis_index_groups: Any = None
    zero_init_last_bn: bool = False
    init_scheme: str = "he"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    space_to_depth: bool = False
    remat: bool = False
    frozen_stages: int = 0
    drop_path_rate: float = 0.0
    conv_general_dilated: Callable = jax.lax.conv_general_dilated

    def validate(self) -> None:
        """Raises ValueError for an impossible architecture, before anything is traced."""
        checks = [
            (self.variant in VARIANTS, f"variant {self.variant!r} not in {VARIANTS}"),
            (self.block in BLOCKS, f"block {self.block!r} not in {BLOCKS}"),
            (self.stem in STEMS, f"stem {self.stem!r} not in {STEMS}"),
            (self.shortcut in SHORTCUTS, f"shortcut {self.shortcut!r} not in {SHORTCUTS}"),
            (self.pooling in POOLINGS, f"pooling {self.pooling!r} not in {POOLINGS}"),
            (
                len(self.stage_sizes) == len(self.stage_widths),
                f"{len(self.stage_sizes)} stage_sizes but {len(self.stage_widths)} stage_widths",
            ),
            (all(n >= 1 for n in self.stage_sizes), f"stage_sizes {self.stage_sizes} must be >= 1"),
            (
                not (self.block == "basic" and (self.groups != 1 or self.width_per_group != 64)),
                "basic blocks support only groups=1 and width_per_group=64",
            ),
            (
                not (self.variant == "v2" and self.block != "bottleneck"),
                "variant 'v2' is built with bottleneck blocks only",
            ),
            (
                not (self.variant == "v2" and self.shortcut != "conv"),
                "variant 'v2' uses its own shortcuts; leave shortcut='conv'",
            ),
            (
                not (self.include_top and self.pooling is None),
                "include_top=True needs pooling 'avg' or 'max'",
            ),
            (self.num_classes >= 1 or not self.include_top, "num_classes must be >= 1"),
            (
                not (self.space_to_depth and self.stem != "imagenet"),
                f"space_to_depth applies to the 'imagenet' 7x7 stem only, not {self.stem!r}",
            ),
            (
                -1 <= self.frozen_stages <= len(self.stage_sizes),
                f"frozen_stages={self.frozen_stages} must be in [-1, {len(self.stage_sizes)}]",
            ),
            (0 <= self.drop_path_rate < 1, f"drop_path_rate={self.drop_path_rate} not in [0, 1)"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ValueError("Invalid ResNet configuration: " + "; ".join(errors) + ".")

    def block_drop_path_rates(self) -> list[float]:
        """Per-block drop path rates, rising linearly from 0 to drop_path_rate (timm's rule)."""
        n = sum(self.stage_sizes)
        return [self.drop_path_rate * i / max(n - 1, 1) for i in range(n)]

    def stage_stride(self, stage: int, index: int) -> int:
        """v1/v1.5 stride the first block of stages 2+; v2 the last block of all but the last."""
        if self.variant == "v2":
            last_stage = stage == len(self.stage_sizes) - 1
            return 2 if index == self.stage_sizes[stage] - 1 and not last_stage else 1
        return 2 if stage > 0 and index == 0 else 1

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, return_features: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        self.validate()
        check_input(self, x, self.in_channels)
        L = LayerFactory(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            init_scheme=self.init_scheme,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            bn_axis_index_groups=self.bn_axis_index_groups,
            train=train,
            conv_general_dilated=self.conv_general_dilated,
        )
        frozen = len(self.stage_sizes) if self.frozen_stages < 0 else self.frozen_stages
        frozen_L = dataclasses.replace(L, train=False)  # BN on running statistics.
        features: dict[str, jax.Array] = {}
        x = self._stem(jnp.asarray(x, self.dtype), frozen_L if frozen else L)
        features["stem"] = x

        channels = x.shape[-1]
        rates = iter(self.block_drop_path_rates())
        for stage, (n_blocks, width) in enumerate(
            zip(self.stage_sizes, self.stage_widths, strict=True)
        ):
            for index in range(n_blocks):
                block = self._block(
                    width,
                    channels,
                    self.stage_stride(stage, index),
                    frozen_L if stage < frozen else L,
                    next(rates),
                    name=f"layer{stage + 1}_{index}",
                )
                x = block(x)
                channels = x.shape[-1]
            if stage + 1 == frozen:
                x = jax.lax.stop_gradient(x)
            features[f"layer{stage + 1}"] = x
        if self.variant == "v2":
            whole = frozen == len(self.stage_sizes)
            x = nn.relu((frozen_L if whole else L).norm(name="post_bn")(x))
            x = jax.lax.stop_gradient(x) if whole else x
            features[f"layer{len(self.stage_sizes)}"] = x

        if self.pooling is not None:
            x = (jnp.mean if self.pooling == "avg" else jnp.max)(x, axis=(1, 2))
            features["pooled"] = x
        if self.include_top:
            he = torch_linear_init(channels)
            fc_init = {"kernel_init": he, "bias_init": he} if self.init_scheme == "he" else {}
            x = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="fc",
                **fc_init,
            )(x)
            x = jnp.asarray(x, jnp.float32)
            features["logits"] = x
        return features if return_features else x

    def _stem(self, x: jax.Array, L: LayerFactory) -> jax.Array:
        if self.stem == "cifar":
            x = L.conv(self.stem_width, 3, bias=self.conv_bias, name="conv1")(x)
            return nn.relu(L.norm(name="bn1")(x))
        if self.stem == "deep":
            w = self.stem_width
            for i, features in enumerate((w, w, 2 * w)):
                x = L.conv(
                    features, 3, 2 if i == 0 else 1, bias=self.conv_bias, name=f"stem_conv{i + 1}"
                )(x)
                x = nn.relu(L.norm(name=f"stem_bn{i + 1}")(x))
            return max_pool_3x3_s2(x)
        if self.space_to_depth:
            conv = L.stem_conv_space_to_depth(self.stem_width, bias=self.conv_bias, name="conv1")
        else:
            conv = L.conv(self.stem_width, 7, 2, bias=self.conv_bias, name="conv1")
        x = conv(x)
        if self.variant == "v2":
            # Keras ResNetV2: no BN before the pool, which zero-pads a pre-ReLU input.
            return max_pool_3x3_s2(x, pad_value=0.0)
        x = nn.relu(L.norm(name="bn1")(x))
        return max_pool_3x3_s2(x)

    def _block(
        self, width: int, channels: int, stride: int, L: LayerFactory, rate: float, name: str
    ) -> nn.Module:
        wrap = nn.remat if self.remat else (lambda cls: cls)
        if self.variant == "v2":
            return wrap(PreActBottleneck)(
                width, channels, L, stride, self.conv_bias, drop_path_rate=rate, name=name
            )
        common = dict(
            shortcut=self.shortcut,
            conv_bias=self.conv_bias,
            zero_init_last_bn=self.zero_init_last_bn,
            drop_path_rate=rate,
            name=name,
        )
        if self.block == "basic":
            return wrap(BasicBlock)(width, channels, L, stride, **common)
        return wrap(Bottleneck)(
            width,
            channels,
            L,
            stride,
            groups=self.groups,
            width_per_group=self.width_per_group,
            stride_on_1x1=self.variant == "v1",
            **common,
        )
