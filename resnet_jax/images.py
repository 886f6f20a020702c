"""Image files to model inputs with Pillow and NumPy, no TensorFlow: the path used by
prediction and feature extraction, exact to torchvision's and Keras's own loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, UnidentifiedImageError

from resnet_jax import storage
from resnet_jax.data.presets import Preset, normalize

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
FILTERS = {  # Keys: presets.INTERPOLATIONS, which every Preset is checked against.
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos3": Image.Resampling.LANCZOS,
}


class BadImageError(ValueError):
    """A file that is not a readable image."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Opens any image Pillow reads as 8-bit RGB: grayscale, palette, RGBA (alpha dropped, as
    torchvision and Keras do), CMYK and 16-bit files are converted."""
    try:
        with epath.Path(path).open("rb") as f, Image.open(f) as img:
            return rgb(img)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        raise BadImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def rgb(img: Image.Image) -> Image.Image:
    """Decodes an opened image as 8-bit RGB (see ``load_rgb``); a ``draft`` request set on
    ``img`` before this call is honoured."""
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.round(arr * 255.0 / peak).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def pixels(img: Image.Image, preset: Preset) -> np.ndarray:
    """Resize and center-crop one RGB image as the weights' own framework did; uint8. The
    tf.data eval transform (``preprocess.preset_transform``) gives the same pixels within 1."""
    resample = FILTERS[preset.interpolation]
    w, h = img.size
    if preset.resize_mode == "squash":
        img = img.resize((preset.crop, preset.crop), resample)
    else:
        # torchvision.transforms.Resize(int): shorter side -> resize, longer side truncated.
        if w <= h:
            size = (preset.resize, int(preset.resize * h / w))
        else:
            size = (int(preset.resize * w / h), preset.resize)
        img = img.resize(size, resample)
        w, h = img.size
        top = int(round((h - preset.crop) / 2.0))
        left = int(round((w - preset.crop) / 2.0))
        img = img.crop((left, top, left + preset.crop, top + preset.crop))
    return np.asarray(img)


def preprocess(img: Image.Image, preset: Preset) -> np.ndarray:
    """One RGB image as model inputs: ``pixels``, normalised; float32."""
    return np.asarray(normalize(pixels(img, preset).astype(np.float32), preset), np.float32)


def transforms(preset: Preset) -> Callable[[Any], np.ndarray]:
    """Image file or RGB PIL image -> float32 (crop, crop, 3) model inputs, as predict feeds
    them (like torchvision's ``weights.transforms()``)."""
    return lambda image: preprocess(image if hasattr(image, "mode") else load_rgb(image), preset)


def list_images(inputs: Iterable[str | os.PathLike]) -> list[epath.Path]:
    """Expands files and folders, local or gs:// (recursively, sorted), into image paths by
    suffix."""
    paths: list[epath.Path] = []
    for item in map(epath.Path, inputs):
        if item.is_dir():
            found = (
                epath.Path(folder, f)
                for folder, _, files in storage.walk(item)
                for f in files
                if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
            )
            paths.extend(sorted(found))
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder; give image files or folders.")
    return paths


def batches(
    paths: list[epath.Path], preset: Preset, batch_size: int, skipped: list[tuple[str, str]]
) -> Iterator[tuple[list[epath.Path], np.ndarray]]:
    """Yields (paths, images) batches; unreadable files are appended to ``skipped`` with why."""
    names: list[epath.Path] = []
    images: list[np.ndarray] = []
    for path in paths:
        try:
            images.append(preprocess(load_rgb(path), preset))
            names.append(path)
        except BadImageError as e:
            skipped.append((str(path), str(e)))
            continue
        if len(images) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if images:
        yield names, np.stack(images)
