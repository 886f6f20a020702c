"""Evaluation preprocessing presets that belong to a set of weights.

Each ecosystem trained its ResNets with its own resize, crop and normalisation; converted
weights only predict as they did at home when fed the same way. A preset is plain data:
it travels in checkpoint metadata (``to_dict``/``from_dict``) and drives both the TF input
pipeline and the NumPy/Pillow path used by ``predict``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# Resize filters that mean the same in the tf.data pipeline and in Pillow (predict): their
# pixels agree within 1/255 on photographs (tests/test_preprocess_parity.py). TF's 'area' is
# not Pillow's box filter (differences of 70+ levels), so it is not offered.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos3")
RESIZE_MODES = ("short_side", "squash")
TRAIN_PREPROCESS = ("inception_crop", "cifar_crop", "resize")  # data.train_preprocess
EVAL_PREPROCESS = ("center_crop", "resize")  # data.eval_preprocess
MODES = ("torch", "caffe", "tf")


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises ValueError naming ``kind``, the bad ``value`` and the allowed ``choices``."""
    if value not in choices:
        raise ValueError(f"Unknown {kind} {value!r}; expected one of {', '.join(choices)}.")


@dataclasses.dataclass(frozen=True)
class Preset:
    """Resize, center-crop ``crop``, then normalise.

    ``resize_mode`` 'short_side' resizes the shorter side to ``resize`` keeping the aspect
    ratio (torchvision, timm); 'squash' resizes straight to ``crop`` x ``crop`` as
    ``keras.utils.load_img(target_size=...)`` does.

    ``mode`` says how pixels become model inputs:
      'torch': RGB scaled to [0, 1], then (x - mean) / std.
      'caffe': RGB -> BGR, minus the per-channel BGR mean, no scaling (Keras ResNet v1).
      'tf':    scaled to [-1, 1] (Keras ResNet v2).
    """

    name: str
    resize: int
    crop: int
    interpolation: str = "bilinear"  # One of INTERPOLATIONS.
    resize_mode: str = "short_side"  # 'short_side' | 'squash'
    mode: str = "torch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        check_choice(f"preset {self.name!r} interpolation", self.interpolation, INTERPOLATIONS)
        check_choice(f"preset {self.name!r} resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice(f"preset {self.name!r} mode", self.mode, MODES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


# fmt: off
PRESETS: dict[str, Preset] = {
    # torchvision IMAGENET1K_V1 weights: resize 256, crop 224, bilinear.
    "torchvision_v1": Preset("torchvision_v1", resize=256, crop=224),
    # torchvision IMAGENET1K_V2 weights: resize 232, crop 224, bilinear.
    "torchvision_v2": Preset("torchvision_v2", resize=232, crop=224),
    # timm RSB weights (resnet50.a1_in1k): bicubic, crop_pct 0.95 -> resize int(224 / 0.95).
    "timm_rsb": Preset("timm_rsb", resize=235, crop=224, interpolation="bicubic"),
    # Keras Applications ResNet50/101/152: 'caffe' mode.
    # Both Keras presets load as keras.utils.load_img(path, target_size=(224, 224)) does.
    "keras_caffe": Preset(
        "keras_caffe", resize=224, crop=224, interpolation="nearest", resize_mode="squash",
        mode="caffe", mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0),
    ),
    # Keras Applications ResNet50V2/101V2/152V2: inputs scaled to [-1, 1].
    "keras_tf": Preset(
        "keras_tf", resize=224, crop=224, interpolation="nearest", resize_mode="squash",
        mode="tf", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    ),
}
# fmt: on


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown preprocessing preset {name!r}; known presets: {', '.join(sorted(PRESETS))}."
        ) from None


def data_preset(data: Any) -> Preset:
    """The eval resize/crop/normalisation of a training data config (``config.data``).

    With ``data.preset`` set, that preset decides, its resize/crop ratio scaled to the eval
    size (``eval_image_size``, or ``image_size`` when 0); otherwise ``crop_pct``,
    ``interpolation``, ``mean`` and ``std`` do.
    """
    size = int(data.eval_image_size or data.image_size)
    if data.preset:
        p = get_preset(data.preset)
        resize_size = size * p.resize // p.crop if p.crop != size else p.resize
        return dataclasses.replace(p, resize=resize_size, crop=size)
    check_choice("data.interpolation", data.interpolation, INTERPOLATIONS)
    return Preset(
        name="config",
        resize=int(size / float(data.crop_pct)),
        crop=size,
        interpolation=data.interpolation,
        mean=tuple(float(m) for m in data.mean),
        std=tuple(float(s) for s in data.std),
    )


def eval_preset(data: Any) -> Preset:
    """The eval preprocessing of a complete data config, for the spec, tf.data and Grain alike:
    ``data_preset``, or for eval_preprocess 'resize' the whole image squashed to the crop."""
    check_choice("eval_preprocess", data.eval_preprocess, EVAL_PREPROCESS)
    preset = data_preset(data)
    if data.eval_preprocess == "resize":
        preset = dataclasses.replace(preset, resize=preset.crop, resize_mode="squash")
    return preset


# Pipeline outputs: normalised float32, or uint8 pixels that the steps normalise on the device.
IMAGE_DTYPES = ("float32", "uint8")


def normalize(x, preset: Preset):
    """Maps float RGB pixels in [0, 255] (NumPy, JAX or TF array, channels last) to inputs."""
    mean = np.asarray(preset.mean, np.float32)
    std = np.asarray(preset.std, np.float32)
    if preset.mode == "caffe":
        return x[..., ::-1] - mean
    if preset.mode == "tf":
        return x / 127.5 - 1.0
    return (x / 255.0 - mean) / std  # 'torch'; Preset checks the mode.
