"""Host image augmentations of the modern recipes: RandAugment and TrivialAugment (Wide).

Ops run on uint8 (H, W, 3) arrays through Pillow with the arguments timm (RandAugment) and
torchvision (TrivialAugmentWide) compute, so the pixels are theirs. All randomness comes from
the ``np.random.Generator`` passed in: seed it from (run seed, example position) with
:func:`example_rng` and an augmented stream replays exactly on resume.
Random Erasing and Mixup/CutMix act on normalised batches on the device
(``resnet_jax.training.erasing`` and ``resnet_jax.training.mixup``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax.data.presets import IMAGENET_MEAN
from resnet_jax.images import FILTERS

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# timm's create_transform fills uncovered pixels with the dataset mean as uint8.
IMAGENET_FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104)
_FILTER_NAMES = ("bilinear", "bicubic")  # Plus RandAugment's 'random', TrivialAugment's 'nearest'.
_LEVEL_DENOM = 10.0
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of one example: a function of the run seed and its position only."""
    return np.random.default_rng(np.random.SeedSequence((seed, position)))


def _affine(img, matrix, resample, fill):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill)


def _enhance(kind):
    return lambda img, factor, **_: kind(img).enhance(factor)


def _solarize_add(img, add, thresh=128, **_):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * 3)


# timm.data.auto_augment's ops: (img, *args, resample=, fill=) -> img.
OPS: dict[str, Callable[..., Image.Image]] = {
    "AutoContrast": lambda img, **_: ImageOps.autocontrast(img),
    "Equalize": lambda img, **_: ImageOps.equalize(img),
    "Invert": lambda img, **_: ImageOps.invert(img),
    "Rotate": lambda img, deg, resample, fill: img.rotate(deg, resample=resample, fillcolor=fill),
    "Posterize": lambda img, bits, **_: img if bits >= 8 else ImageOps.posterize(img, bits),
    "Solarize": lambda img, thresh, **_: ImageOps.solarize(img, thresh),
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, f, resample, fill: _affine(img, (1, f, 0, 0, 1, 0), resample, fill),
    "ShearY": lambda img, f, resample, fill: _affine(img, (1, 0, 0, f, 1, 0), resample, fill),
    "TranslateXRel": lambda img, pct, resample, fill: _affine(
        img, (1, 0, pct * img.size[0], 0, 1, 0), resample, fill
    ),
    "TranslateYRel": lambda img, pct, resample, fill: _affine(
        img, (1, 0, 0, 0, 1, pct * img.size[1]), resample, fill
    ),
}


def _scaled(scale: float, offset: float = 0.0, signed: bool = False):
    return lambda m: ((m / _LEVEL_DENOM) * scale + offset, signed)


# timm's LEVEL_TO_ARG: magnitude -> (argument, whether a coin flip negates it).
_LEVELS: dict[str, Callable[[float], tuple[float | None, bool]]] = {
    "AutoContrast": lambda m: (None, False),
    "Equalize": lambda m: (None, False),
    "Invert": lambda m: (None, False),
    "Rotate": _scaled(30.0, signed=True),
    "Posterize": lambda m: (int((m / _LEVEL_DENOM) * 4), False),
    "PosterizeIncreasing": lambda m: (4 - int((m / _LEVEL_DENOM) * 4), False),
    "Solarize": lambda m: (min(256, int((m / _LEVEL_DENOM) * 256)), False),
    "SolarizeIncreasing": lambda m: (256 - min(256, int((m / _LEVEL_DENOM) * 256)), False),
    "SolarizeAdd": lambda m: (min(128, int((m / _LEVEL_DENOM) * 110)), False),
    "ShearX": _scaled(0.3, signed=True),
    "ShearY": _scaled(0.3, signed=True),
    "TranslateXRel": _scaled(0.45, signed=True),
    "TranslateYRel": _scaled(0.45, signed=True),
    **{k: _scaled(1.8, 0.1) for k in _ENHANCE},
    # 'Increasing' enhancements move away from 1.0 (no change): 1 +- 0.9 m / 10, at least 0.1.
    **{f"{k}Increasing": _scaled(0.9, signed=True) for k in _ENHANCE},
}
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)  # fmt: skip
RAND_OPS_INCREASING = tuple(
    f"{n}Increasing" if n in ("Posterize", "Solarize", *_ENHANCE) else n for n in RAND_OPS
)


def rand_augment_op(
    image: Image.Image, name: str, magnitude: float, negate: bool, resample: int, fill=IMAGENET_FILL
) -> Image.Image:
    """One RandAugment op at a fixed magnitude (0-10) and sign, exactly as timm's AugmentOp."""
    orig = name
    arg, signed = _LEVELS[name](magnitude)
    if signed and negate:
        arg = -arg
    name = name.removesuffix("Increasing")
    if name != orig and name in _ENHANCE:
        arg = max(0.1, 1.0 + arg)
    args = () if arg is None else (arg,)
    return OPS[name](image, *args, resample=resample, fill=fill)


def parse_rand_augment(spec: str) -> dict:
    """timm's 'rand-m9-n2-mstd0.5-mmax10-p0.5-inc1' string as keyword arguments."""
    parts = spec.split("-")
    out = dict(magnitude=10.0, num_layers=2, magnitude_std=0.0, magnitude_max=None, prob=0.5)
    out["increasing"] = False
    keys = {"m": "magnitude", "n": "num_layers", "mstd": "magnitude_std", "mmax": "magnitude_max"}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
        key, value = match.groups() if match else (part, None)
        if key in ("n", "mmax") and value and value.isdigit():
            out[keys[key]] = int(value)
        elif key in ("m", "mstd") and value:
            out[keys[key]] = float(value) if key == "m" or float(value) <= 100 else math.inf
        elif key == "p" and value:
            out["prob"] = float(value)
        elif key == "inc" and value in ("0", "1"):
            out["increasing"] = value == "1"
        else:
            raise ValueError(
                f"Unknown RandAugment section {part!r} in {spec!r}; expected 'rand' followed by "
                "m<int> (magnitude), n<int> (ops per image), mstd<float>, mmax<int>, p<float>, "
                "inc<0|1>, e.g. 'rand-m7-mstd0.5-inc1'."
            )
    return out


def rand_augment(
    magnitude: float = 10.0,
    num_layers: int = 2,
    magnitude_std: float = 0.0,
    magnitude_max: int | None = None,
    prob: float = 0.5,
    increasing: bool = False,
    interpolation: str = "random",
    fill=IMAGENET_FILL,
) -> Augment:
    """timm's RandAugment: ``num_layers`` ops drawn with replacement, each applied with ``prob``
    at a magnitude drawn from N(magnitude, magnitude_std) (uniform in [0, m] for inf), clipped
    to [0, magnitude_max or 10]; 'random' interpolation picks bilinear or bicubic per op."""
    _check_interpolation(interpolation, ("random", *_FILTER_NAMES))
    names = RAND_OPS_INCREASING if increasing else RAND_OPS
    upper = magnitude_max or _LEVEL_DENOM

    def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _to_pil(image)
        for index in rng.integers(0, len(names), num_layers):
            if prob < 1.0 and rng.random() > prob:
                continue
            m = magnitude
            if magnitude_std == math.inf:
                m = rng.uniform(0, magnitude)
            elif magnitude_std > 0:
                m = rng.normal(magnitude, magnitude_std)
            m = max(0.0, min(m, upper))
            resample = _resample(interpolation, rng)
            img = rand_augment_op(img, names[index], m, rng.random() > 0.5, resample, fill)
        return np.asarray(img)

    return augment


def _check_interpolation(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise ValueError(f"Unknown augmentation interpolation {name!r}; expected one of {allowed}.")


def _resample(interpolation: str, rng: np.random.Generator) -> int:
    if interpolation == "random":
        return FILTERS[_FILTER_NAMES[rng.integers(2)]]
    return FILTERS[interpolation]


def _inverse_affine(center, angle, translate, shear) -> list[float]:
    """torchvision's _get_inverse_affine_matrix at scale 1 (the Pillow matrix of F.affine)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def trivial_augment_op(
    image: Image.Image, name: str, magnitude: float, resample=Image.Resampling.NEAREST, fill=0
) -> Image.Image:
    """One TrivialAugmentWide op at a signed magnitude, as torchvision's ``_apply_op`` on PIL."""
    fill = (fill,) * 3 if isinstance(fill, int) else tuple(fill)
    w, h = image.size
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        shear = [shear, 0.0] if name == "ShearX" else [0.0, shear]
        return _affine(image, _inverse_affine([0, 0], 0.0, [0, 0], shear), resample, fill)
    if name in ("TranslateX", "TranslateY"):
        move = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        matrix = _inverse_affine([w * 0.5, h * 0.5], 0.0, move, [0.0, 0.0])
        return _affine(image, matrix, resample, fill)
    if name == "Rotate":
        return image.rotate(magnitude, resample, False, None, fillcolor=fill)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return OPS[name](image, 1.0 + magnitude)
    if name == "Posterize":
        return ImageOps.posterize(image, int(magnitude))
    if name == "Identity":
        return image
    if name == "Solarize":
        return ImageOps.solarize(image, magnitude)
    return OPS[name](image)  # AutoContrast, Equalize


def trivial_augment_space(num_bins: int = 31) -> dict[str, tuple[np.ndarray, bool]]:
    """torchvision's TrivialAugmentWide op space: op -> (magnitude bins, signed)."""

    def bins(start: float, end: float) -> np.ndarray:
        """torch.linspace in float32: a float32 step, each value one fused multiply-add."""
        step = np.float64((np.float32(end) - np.float32(start)) / np.float32(num_bins - 1))
        i = np.arange(num_bins)
        up, down = np.float32(start) + step * i, np.float32(end) - step * (num_bins - 1 - i)
        return np.where(i < num_bins // 2, up, down).astype(np.float32)

    posterize = 8 - np.round(np.arange(num_bins, dtype=np.float32) / ((num_bins - 1) / 6))
    none = np.zeros(())
    return {
        "Identity": (none, False),
        "ShearX": (bins(0.0, 0.99), True),
        "ShearY": (bins(0.0, 0.99), True),
        "TranslateX": (bins(0.0, 32.0), True),
        "TranslateY": (bins(0.0, 32.0), True),
        "Rotate": (bins(0.0, 135.0), True),
        "Brightness": (bins(0.0, 0.99), True),
        "Color": (bins(0.0, 0.99), True),
        "Contrast": (bins(0.0, 0.99), True),
        "Sharpness": (bins(0.0, 0.99), True),
        "Posterize": (posterize.astype(np.int32), False),
        "Solarize": (bins(255.0, 0.0), False),
        "AutoContrast": (none, False),
        "Equalize": (none, False),
    }


def trivial_augment_wide(num_bins: int = 31, interpolation: str = "nearest", fill=0) -> Augment:
    """TrivialAugmentWide (Muller and Hutter 2021): one uniformly drawn op at a uniformly drawn
    magnitude bin, negated half the time where signed (torchvision's defaults)."""
    _check_interpolation(interpolation, ("nearest", *_FILTER_NAMES))
    space = list(trivial_augment_space(num_bins).items())
    resample = FILTERS[interpolation]

    def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        name, (magnitudes, signed) = space[rng.integers(len(space))]
        m = float(magnitudes[rng.integers(magnitudes.size)]) if magnitudes.ndim else 0.0
        if signed and rng.integers(2):
            m = -m
        return np.asarray(trivial_augment_op(_to_pil(image), name, m, resample, fill))

    return augment


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Augmentations take uint8 RGB images of shape (H, W, 3); got {image.dtype} of shape "
            f"{image.shape}. Decode to RGB uint8 before augmenting."
        )
    return Image.fromarray(image)


def make_train_augment(spec: str | None, **kwargs) -> Augment:
    """``fn(image, rng) -> image`` for a spec: 'rand-m7-mstd0.5-inc1' (timm RandAugment),
    'ta_wide' (TrivialAugmentWide) or ''/None/'none' (identity). kwargs go to the op builder."""
    if not spec or spec == "none":
        return lambda image, rng: image
    if spec.split("-")[0] == "rand":
        return rand_augment(**parse_rand_augment(spec), **kwargs)
    if spec == "ta_wide":
        return trivial_augment_wide(**kwargs)
    raise ValueError(
        f"Unknown augmentation {spec!r}; expected 'rand-...' (e.g. 'rand-m7-mstd0.5-inc1', the "
        "RSB A1/A2 setting), 'ta_wide' or 'none'."
    )
