"""Named architectures: ``create_model('resnet50', num_classes=10)`` and ``list_models()``.

Each entry is the set of ResNet attributes that makes the reference architecture; any
attribute can be overridden by keyword.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from resnet_jax.models.resnet import ResNet

_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_KERAS = dict(conv_bias=True, bn_epsilon=1.001e-5)
_CIFAR = dict(
    stem="cifar", stem_width=16, stage_widths=(16, 32, 64), num_classes=10, shortcut="zeropad"
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    kwargs: dict[str, Any]


_REGISTRY: dict[str, ModelSpec] = {}


def _register(name: str, description: str, **kwargs: Any) -> None:
    _REGISTRY[name] = ModelSpec(name, description, kwargs)


def _imagenet(depth: int, **kwargs: Any) -> dict[str, Any]:
    block, sizes = _DEPTHS[depth]
    return dict(block=block, stage_sizes=sizes, **kwargs)


for _d in _DEPTHS:
    _register(f"resnet{_d}", f"ResNet-{_d} v1.5 (torchvision, timm)", **_imagenet(_d))
    _register(
        f"resnet{_d}d",
        f"ResNet-{_d}-D: deep stem, avg-pool shortcut (timm resnet{_d}d)",
        **_imagenet(_d, stem="deep", stem_width=32, shortcut="avgpool"),
    )
for _d in (50, 101, 152):
    _register(
        f"resnet{_d}_v1",
        f"ResNet-{_d} v1: stride on the 1x1, conv biases (Keras Applications ResNet{_d})",
        **_imagenet(_d, variant="v1", **_KERAS),
    )
    _register(
        f"resnet{_d}_v2",
        f"ResNet-{_d} v2, pre-activation (Keras Applications ResNet{_d}V2)",
        **_imagenet(_d, variant="v2", **_KERAS),
    )
for _d in (50, 101):
    _register(
        f"wide_resnet{_d}_2",
        f"Wide ResNet-{_d}-2 (torchvision)",
        **_imagenet(_d, width_per_group=128),
    )
_register(
    "resnext50_32x4d",
    "ResNeXt-50 32x4d (torchvision)",
    **_imagenet(50, groups=32, width_per_group=4),
)
_register(
    "resnext101_32x8d",
    "ResNeXt-101 32x8d (torchvision)",
    **_imagenet(101, groups=32, width_per_group=8),
)
_register(
    "resnext101_64x4d",
    "ResNeXt-101 64x4d (torchvision)",
    **_imagenet(101, groups=64, width_per_group=4),
)
for _n in (20, 32, 44, 56, 110):
    _k = (_n - 2) // 6
    _register(
        f"resnet{_n}",
        f"CIFAR ResNet-{_n} (He et al. 2015, Table 6; option A shortcuts)",
        block="basic",
        stage_sizes=(_k, _k, _k),
        **_CIFAR,
    )
    _register(
        f"plain{_n}",
        f"CIFAR plain-{_n}: ResNet-{_n} without shortcuts (degradation experiment)",
        block="basic",
        stage_sizes=(_k, _k, _k),
        **{**_CIFAR, "shortcut": "none"},
    )


def list_models() -> list[str]:
    """Names accepted by create_model, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}. Known models: {', '.join(list_models())}."
        ) from None


def model_arguments(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A registered architecture's ResNet attributes with ``overrides`` (each one a ResNet
    attribute, else ValueError), without building it."""
    spec = model_spec(name)
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for {name!r}; "
            f"ResNet accepts: {', '.join(sorted(fields))}."
        )
    return {**spec.kwargs, **overrides}


def create_model(name: str, **overrides: Any) -> ResNet:
    """Builds a registered architecture; keyword overrides replace any ResNet attribute."""
    model = ResNet(**model_arguments(name, overrides))
    model.validate()
    return model
