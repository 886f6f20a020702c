"""Learning-rate schedules, optimizers and the loss of the ImageNet recipes.

The peak learning rate is ``base_learning_rate * batch_size / 256`` (Goyal et al. 2017), reached
by a linear warmup and followed by cosine, step or polynomial decay. Weight decay and LARS
trust ratios apply to conv/dense kernels only, never to BatchNorm scales/offsets or biases;
LAMB's too, as timm's Lamb (RSB) leaves the parameters it does not decay unadapted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "step", "polynomial", "constant")
OPTIMIZERS = ("sgd", "lars", "lamb")


def peak_learning_rate(opt: ml_collections.ConfigDict, batch_size: int) -> float:
    """Linear scaling rule: the configured rate is per 256 examples."""
    return opt.base_learning_rate * batch_size / 256


def warmup_steps(opt: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The linear warmup's length in steps: ``opt.warmup_epochs`` rounded to whole steps."""
    return int(round(opt.warmup_epochs * steps_per_epoch))


def create_learning_rate_schedule(
    opt: ml_collections.ConfigDict, *, batch_size: int, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 for ``opt.warmup_epochs``, then ``opt.lr_schedule`` decay."""
    peak = peak_learning_rate(opt, batch_size)
    warmup = warmup_steps(opt, steps_per_epoch)
    remaining = max(total_steps - warmup, 1)
    if opt.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, remaining)
    elif opt.lr_schedule == "step":
        boundaries = {int(b) - warmup: opt.lr_decay_factor for b in opt.lr_boundaries_steps}
        after = optax.piecewise_constant_schedule(peak, boundaries)
    elif opt.lr_schedule == "polynomial":
        after = optax.polynomial_schedule(
            peak, opt.end_learning_rate, opt.polynomial_power, remaining
        )
    elif opt.lr_schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"Unknown lr_schedule {opt.lr_schedule!r}; expected one of {SCHEDULES}.")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def kernel_mask(params: Any) -> Any:
    """True for conv and dense kernels, False for BN scale/bias and biases: what decays."""

    def is_kernel(path: tuple, leaf: jax.Array) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        return name == "kernel" and jnp.ndim(leaf) > 1

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(
    opt: ml_collections.ConfigDict, learning_rate: optax.Schedule
) -> optax.GradientTransformation:
    """SGD (Nesterov) with L2 decay on kernels, LARS or LAMB for large batches (LAMB's first
    moment decays by ``momentum``; ``nesterov`` is SGD's and LARS's); optional clipping (timm's
    Lamb clips the global norm at 1 by itself: set grad_clip_norm=1)."""
    chain = []
    if opt.grad_clip_norm and opt.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay > 0:
            chain.append(optax.add_decayed_weights(opt.weight_decay, mask=kernel_mask))
        chain.append(optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "lars":
        chain.append(
            optax.lars(
                learning_rate,
                weight_decay=opt.weight_decay,
                weight_decay_mask=kernel_mask,
                trust_coefficient=opt.lars_trust_coefficient,
                eps=opt.lars_eps,
                trust_ratio_mask=kernel_mask,
                momentum=opt.momentum,
                nesterov=opt.nesterov,
            )
        )
    elif opt.name == "lamb":  # optax.lamb with the trust ratio masked like the decay.
        chain += [
            optax.scale_by_adam(b1=opt.momentum, b2=0.999, eps=1e-6),
            optax.add_decayed_weights(opt.weight_decay, mask=kernel_mask),
            optax.masked(optax.scale_by_trust_ratio(), kernel_mask),
            optax.scale_by_learning_rate(learning_rate),
        ]
    else:
        raise ValueError(f"Unknown optimizer {opt.name!r}; expected one of {OPTIMIZERS}.")
    return optax.chain(*chain)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32: class indices [B] (one-hot, optionally
    label-smoothed) or soft targets [B, C] as given (Mixup/CutMix's, smoothed there)."""
    logits = logits.astype(jnp.float32)
    if labels.shape == logits.shape:
        return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32))
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
