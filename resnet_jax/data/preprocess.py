"""TensorFlow image preprocessing ops: decode, crop, flip, resize, normalise.

Every op is a plain function on one example that runs eagerly and inside ``tf.data``. Random
ops are stateless: they take a ``seed`` of shape [2] derived from (run seed, example counter),
so the augmented stream is reproducible and can be resumed at any example.

This module imports TensorFlow at import time; only the input pipeline imports it, lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from resnet_jax.data import presets


def _hide_gpus_from_tf() -> None:
    """Keeps TF off the accelerators so JAX owns all GPU memory (as the Flax example does)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; nothing left to do.
        pass


_hide_gpus_from_tf()

Example = dict[str, tf.Tensor]


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
    """Decodes encoded bytes (JPEG/PNG/GIF/BMP/WebP) or passes a uint8 array, as (H, W, 3) uint8.

    Grayscale becomes RGB, alpha is dropped, CMYK JPEG and 16-bit PNG are converted.
    """
    if data.dtype == tf.string:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        return image
    image = tf.convert_to_tensor(data)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.tile(image, [1, 1, 3])
    return tf.cast(image, tf.uint8)


def _sample_crop_window(shape: tf.Tensor, seed: tf.Tensor, min_area: float) -> tf.Tensor:
    """Samples an Inception-style crop window [y, x, h, w] (area and aspect-ratio jitter)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_and_random_crop(
    data: tf.Tensor, seed: tf.Tensor, *, min_area: float = 0.08
) -> tf.Tensor:
    """Inception random-resized-crop window, decoded as uint8 (H', W', 3).

    JPEG bytes go through the fused ``decode_and_crop_jpeg`` (decodes only the window); other
    formats and already-decoded arrays are decoded first and then cropped.
    """

    def crop_decoded(image: tf.Tensor) -> tf.Tensor:
        window = _sample_crop_window(tf.shape(image), seed, min_area)
        return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]

    if data.dtype != tf.string:
        return crop_decoded(decode_rgb(data))

    def jpeg() -> tf.Tensor:
        window = _sample_crop_window(tf.io.extract_jpeg_shape(data), seed, min_area)
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: crop_decoded(decode_rgb(data)))
    image.set_shape([None, None, 3])
    return image


def _pillow_nearest(n_in: tf.Tensor, n_out: tf.Tensor) -> tf.Tensor:
    """Source rows (or columns) of Pillow's NEAREST resize: it steps (i + 0.5) * n_in / n_out
    by repeated float64 additions, which a cumulative sum reproduces exactly."""
    step = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
    steps = tf.concat([[step / 2], tf.fill([n_out - 1], step)], 0)
    return tf.cast(tf.math.cumsum(steps), tf.int32)


def resize(
    image: tf.Tensor, size: tuple[int, int] | tf.Tensor, method: str = "bilinear"
) -> tf.Tensor:
    """Resizes to ``size`` (h, w) as Pillow does, so eval pixels match predict's within 1/255:
    antialiased, width then height, clipped to [0, 255] after each pass; float32."""
    presets.check_choice("interpolation", method, presets.INTERPOLATIONS)
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    if method == "nearest":
        rows = _pillow_nearest(shape[0], size[0])
        return tf.gather(tf.gather(image, rows), _pillow_nearest(shape[1], size[1]), axis=1)
    for hw in ((shape[0], size[1]), size):
        image = tf.image.resize(image, hw, method=method, antialias=True)
        image = tf.clip_by_value(image, 0.0, 255.0)
    return image


def short_side_size(height: tf.Tensor, width: tf.Tensor, short: int) -> tf.Tensor:
    """Output (h, w) when the short side becomes ``short``; the long side is truncated as in
    torchvision's ``Resize(int)`` (in integers, so no rounding can move it)."""
    hw = tf.cast(tf.stack([height, width]), tf.int64)
    return tf.cast(hw * short // tf.reduce_min(hw), tf.int32)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Crops the central ``size`` x ``size`` window; offsets rounded as torchvision does."""
    shape = tf.shape(image)
    top = tf.cast(tf.round((shape[0] - size) / 2), tf.int32)
    left = tf.cast(tf.round((shape[1] - size) / 2), tf.int32)
    crop = image[top : top + size, left : left + size]
    crop.set_shape([size, size, image.shape[-1]])
    return crop


def inception_crop(
    data: tf.Tensor, seed: tf.Tensor, size: int, *, min_area: float = 0.08, method: str = "bilinear"
) -> tf.Tensor:
    """Random-resized crop (Szegedy et al. 2015) to ``size`` x ``size``; float32 in [0, 255]."""
    image = resize(decode_and_random_crop(data, seed, min_area=min_area), (size, size), method)
    image.set_shape([size, size, 3])
    return image


def cifar_crop(
    data: tf.Tensor, seed: tf.Tensor, size: int, *, pad: int = 4, method: str = "bilinear"
) -> tf.Tensor:
    """Zero-pads by ``pad`` pixels and takes a random ``size`` crop (He et al. 2016, CIFAR)."""
    image = decode_rgb(data)
    if image.shape[0] != size or image.shape[1] != size:
        image = resize(image, (size, size), method)
    image = tf.pad(tf.cast(image, tf.float32), [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(image, [size, size, 3], seed=seed)


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flips left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def finish(image: tf.Tensor, preset: presets.Preset, image_dtype: str) -> tf.Tensor:
    """The pipeline's output: normalised float32 inputs, or (``image_dtype='uint8'``) the
    pixels rounded to uint8, a quarter of the bytes to ship, normalised on the device by the
    train and eval steps (``resnet_jax.training.steps.model_inputs``)."""
    if image_dtype == "uint8":
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.cast(presets.normalize(image, preset), tf.float32)


def example_seed(seed: int, counter: tf.Tensor) -> tf.Tensor:
    """The stateless seed of one example: a function of the run seed and its global counter."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(counter, tf.int64)])


def epoch_shuffle_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """An int64 shuffle seed for ``epoch`` derived from the run seed (negative counters keep it
    apart from the per-example seeds)."""
    key = tf.stack([tf.constant(seed, tf.int64), -1 - tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)


def make_train_transform(config: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns ``fn(data, seed) -> (S, S, 3)`` for ``config.train_preprocess``: float32 model
    inputs, or uint8 pixels with ``config.image_dtype='uint8'``."""
    presets.check_choice("train_preprocess", config.train_preprocess, presets.TRAIN_PREPROCESS)
    presets.check_choice("image_dtype", config.image_dtype, presets.IMAGE_DTYPES)
    preset = presets.data_preset(config)
    size, method = int(config.image_size), preset.interpolation

    def transform(data: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        if config.train_preprocess == "inception_crop":
            image = inception_crop(
                data, crop_seed, size, min_area=float(config.min_area), method=method
            )
        elif config.train_preprocess == "cifar_crop":
            image = cifar_crop(data, crop_seed, size, method=method)
        else:
            image = resize(decode_rgb(data), (size, size), method)
        if config.flip:
            image = flip(image, flip_seed)
        image = finish(image, preset, config.image_dtype)
        image.set_shape([size, size, 3])
        return image

    return transform


def make_eval_transform(config: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """Returns ``fn(data) -> (S, S, 3)`` for ``config.eval_preprocess`` (dtype as above)."""
    presets.check_choice("image_dtype", config.image_dtype, presets.IMAGE_DTYPES)
    return preset_transform(presets.eval_preset(config), config.image_dtype)


def preset_transform(preset: presets.Preset, image_dtype: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The eval transform of ``preset``: the same pixels as ``resnet_jax.images.preprocess``."""

    def transform(data: tf.Tensor) -> tf.Tensor:
        image = decode_rgb(data)
        if preset.resize_mode == "squash":  # Keras load_img: straight to the crop size.
            size = (preset.crop, preset.crop)
        else:  # torchvision Resize(resize) + CenterCrop(crop).
            size = short_side_size(tf.shape(image)[0], tf.shape(image)[1], preset.resize)
        image = center_crop(resize(image, size, preset.interpolation), preset.crop)
        return finish(image, preset, image_dtype)

    return transform
