"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on the device, one draw per batch.

timm's ``Mixup(mode='batch')``: with probability ``prob`` the batch is mixed with itself reversed
(``x.flip(0)``), by CutMix with probability ``switch_prob`` (when both alphas are set) else by
Mixup; the CutMix box is timm's ``rand_bbox`` and lambda is corrected to the clipped box's area.
Targets are label-smoothed one-hots mixed with the same lambda. Images are the normalised float
batch (after Random Erasing, as in timm's loader). Pure and jittable; fold the step into the key
and a resumed run mixes the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """timm's one-hot: ``1 - smoothing + smoothing / C`` on the label, ``smoothing / C`` off it."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), on, off).astype(jnp.float32)


def cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int, width: int):
    """timm's rand_bbox around centre (cy, cx) for ``lam``: (yl, yh, xl, xh) and the lambda
    corrected to the box's area after clipping to the image."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
    return (yl, yh, xl, xh), 1.0 - area / float(height * width)


def apply_mix(
    images: jax.Array,
    labels: jax.Array,
    lam: jax.Array,
    use_cutmix: jax.Array,
    centre: tuple[jax.Array, jax.Array],
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Mixes an NHWC float batch with its reverse at a given lambda (and CutMix box centre)."""
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"Mixup/CutMix mix normalised float images, got {images.dtype}; normalise the batch "
            "(and apply Random Erasing) first."
        )
    _, height, width, _ = images.shape
    (yl, yh, xl, xh), lam_cut = cutmix_box(lam, *centre, height, width)
    rows, cols = jnp.arange(height), jnp.arange(width)
    inside = ((rows >= yl) & (rows < yh))[:, None] & ((cols >= xl) & (cols < xh))[None, :]
    flipped = images[::-1]
    lam_mix = jnp.where(use_cutmix, 1.0, lam).astype(images.dtype)
    mixed = images * lam_mix + flipped * (1.0 - lam_mix)
    mixed = jnp.where((inside & use_cutmix)[None, :, :, None], flipped, mixed)
    lam = jnp.where(use_cutmix, lam_cut, lam)
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    return mixed, y * lam + y[::-1] * (1.0 - lam)


def mix(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    label_smoothing: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """Draws timm's per-batch parameters from ``key`` and mixes: (images, soft targets [B, C])."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix needs mixup_alpha > 0 or cutmix_alpha > 0 (or do not call it).")
    if images.shape[0] % 2:
        raise ValueError(f"Mixup/CutMix need an even batch (timm's rule), got {images.shape[0]}.")
    k_apply, k_switch, k_mix, k_cut, k_cy, k_cx = jax.random.split(key, 6)
    apply = jax.random.uniform(k_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-9), max(mixup_alpha, 1e-9))
    lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-9), max(cutmix_alpha, 1e-9))
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0)
    _, height, width, _ = images.shape
    centre = (jax.random.randint(k_cy, (), 0, height), jax.random.randint(k_cx, (), 0, width))
    return apply_mix(
        images,
        labels,
        lam,
        use_cutmix & apply,
        centre,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
    )
