"""Random Erasing (Zhong et al. 2017) on the device, after normalisation, as timm's RandomErasing.

timm erases normalised images with N(0, 1) noise per pixel ('pixel'), per box ('rand') or zeros
('const'). Our host sends uint8 and normalises on the device, so erasing runs there too: noise
drawn on the host would have to be quantised to uint8 and clipped to [0, 255], which is not
timm's distribution. One box per image (timm's count=1), up to 10 attempts to fit it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ERASING_MODES = ("pixel", "rand", "const")
ATTEMPTS = 10  # timm tries this many boxes before leaving an image as it is


def boxes_from_uniforms(
    uniforms: jax.Array,
    height: int,
    width: int,
    *,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
) -> jax.Array:
    """timm's box search from U[0, 1) draws [..., ATTEMPTS, 4] (area, log-aspect, top, left):
    [..., 4] int32 (top, left, h, w) of the first box that fits, h = w = 0 where none does."""
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect or 1 / min_aspect)
    u_area, u_aspect, u_top, u_left = jnp.moveaxis(uniforms.astype(jnp.float32), -1, 0)
    target = (min_area + (max_area - min_area) * u_area) * (height * width)
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
    h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w < width) & (h < height)
    top = jnp.floor(u_top * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u_left * (width - w + 1)).astype(jnp.int32)
    first = jnp.argmax(fits, axis=-1)[..., None]
    pick = lambda a: jnp.take_along_axis(a, first, axis=-1)[..., 0]  # noqa: E731
    found = fits.any(axis=-1)
    return jnp.stack([pick(top), pick(left), pick(h) * found, pick(w) * found], axis=-1)


def erase(images: jax.Array, boxes: jax.Array, values: jax.Array) -> jax.Array:
    """Replaces box (top, left, h, w) of each NHWC image by ``values`` (broadcast to images)."""
    _, height, width, _ = images.shape
    top, left, h, w = (boxes[:, i, None] for i in range(4))
    rows = (jnp.arange(height) >= top) & (jnp.arange(height) < top + h)
    cols = (jnp.arange(width) >= left) & (jnp.arange(width) < left + w)
    inside = rows[:, :, None, None] & cols[:, None, :, None]
    return jnp.where(inside, jnp.broadcast_to(values, images.shape).astype(images.dtype), images)


def random_erasing(
    key: jax.Array,
    images: jax.Array,
    *,
    probability: float = 0.25,
    mode: str = "pixel",
) -> jax.Array:
    """Erases one random box (timm's default area and aspect ranges) in each normalised NHWC
    image with ``probability`` (timm's reprob; 0.25 in DeiT; timm's --remode default 'pixel')."""
    if mode not in ERASING_MODES:
        raise ValueError(f"Unknown Random Erasing mode {mode!r}; expected one of {ERASING_MODES}.")
    n, height, width, channels = images.shape
    k_apply, k_box, k_values = jax.random.split(key, 3)
    boxes = boxes_from_uniforms(jax.random.uniform(k_box, (n, ATTEMPTS, 4)), height, width)
    boxes = boxes * (jax.random.uniform(k_apply, (n, 1)) < probability)
    if mode == "pixel":
        values = jax.random.normal(k_values, images.shape, jnp.float32)
    elif mode == "rand":
        values = jax.random.normal(k_values, (n, 1, 1, channels), jnp.float32)
    else:
        values = jnp.zeros((), jnp.float32)
    return erase(images, boxes, values)
