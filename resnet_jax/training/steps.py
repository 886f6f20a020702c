"""Per-device train and eval steps: pure functions with named-axis collectives.

The same functions run under ``jax.jit(jax.shard_map(...))`` and ``jax.pmap`` (see
``resnet_jax.parallel``): gradients are averaged with ``lax.pmean`` over the data axes,
BatchNorm reduces over the model's ``bn_axis_name``, and metrics are psum'ed sums that
the host divides by the true example count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from resnet_jax.data import presets
from resnet_jax.training import ema as weight_ema
from resnet_jax.training.optim import cross_entropy
from resnet_jax.training.state import TrainState

if TYPE_CHECKING:
    from resnet_jax.parallel import DataParallel

Metrics = dict[str, jax.Array]
AxisNames = Hashable | Sequence[Hashable]
# (logits [B, C], labels [B] or soft targets [B, C]) -> per-example loss [B].
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
# (key, images, labels) -> (images, labels or soft targets): Random Erasing, Mixup/CutMix.
AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
NO_STEP = 2**31 - 1  # ``first_nonfinite`` of a window without a non-finite step.


def model_inputs(images: jax.Array, preset: presets.Preset | None) -> jax.Array:
    """The model's input: float images as they come; uint8 pixels (``data.image_dtype='uint8'``)
    normalised here, on the device, in float32 with the data config's preset."""
    if images.dtype != jnp.uint8:
        return images
    if preset is None:
        raise ValueError(
            "The batch holds uint8 pixels (data.image_dtype='uint8') but the step was built "
            "without a preset to normalise them: pass preset=presets.data_preset(config.data)."
        )
    return presets.normalize(images.astype(jnp.float32), preset)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    axis_name: AxisNames,
    loss_fn: LossFn = cross_entropy,
    augment_fn: AugmentFn | None = None,
    ema_decay: weight_ema.DecaySchedule | None = None,
    sync_batch_stats: bool = False,
    skip_nonfinite: bool = False,
    preset: presets.Preset | None = None,
) -> tuple[TrainState, Metrics]:
    """One SGD step on this device's shard of the global batch.

    ``sync_batch_stats`` averages the BN running statistics over all devices after the
    step; needed when BN groups span fewer devices than the data axes. The running
    averages are linear in the batch statistics, so this equals averaging at the end.
    A step whose global loss or gradient norm is not finite reports ``nonfinite`` = 1 and
    its number in ``first_nonfinite``; with ``skip_nonfinite`` it keeps the previous params,
    BN statistics and optimizer state (the step counter still advances past the batch).
    ``preset`` normalises uint8 batches (see ``model_inputs``). ``augment_fn`` augments the
    normalised batch on the device (its targets go to ``loss_fn``); it and drop path draw from
    a key of (run key, step, device), so a resumed run draws the same. A state with a weight
    EMA updates it with the ``ema_decay`` schedule.
    """
    images, labels = model_inputs(batch["image"], preset), batch["label"]
    targets, rngs = labels, {}
    if augment_fn is not None or getattr(model, "drop_path_rate", 0.0) > 0:
        key = jax.random.fold_in(
            jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name)
        )
        aug_key, rngs["dropout"] = jax.random.split(key)
        if augment_fn is not None:
            images, targets = augment_fn(aug_key, images, labels)

    def loss_of(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs=rngs,
        )
        loss = jnp.mean(loss_fn(logits, targets))
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    grads = lax.pmean(grads, axis_name)
    if sync_batch_stats:
        batch_stats = lax.pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        if ema_decay is None:
            raise ValueError("The state holds a weight EMA but the step has no ema_decay schedule.")
        new = {"params": params, "batch_stats": batch_stats}
        ema = weight_ema.update(ema, new, ema_decay(state.step + 1))

    n = jnp.asarray(labels.shape[0], jnp.float32)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    metrics = lax.psum({"loss": loss * n, "top1": correct, "count": n}, axis_name)
    # From already-reduced values, so every device (and host) reaches the same verdict.
    grad_sq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_sq)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        params = keep(params, state.params)
        batch_stats = keep(batch_stats, state.batch_stats)
        opt_state = keep(opt_state, state.opt_state)
        ema = keep(ema, state.ema)
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    metrics["first_nonfinite"] = jnp.where(finite, NO_STEP, state.step + 1).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema
    )
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    axis_name: AxisNames,
    preset: presets.Preset | None = None,
) -> Metrics:
    """Sums of loss, top-1 and top-5 hits over the masked (real) examples of the batch; with a
    weight EMA in the state, also its ``ema_loss``, ``ema_top1`` and ``ema_top5``."""
    images = model_inputs(batch["image"], preset)
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)

    def sums(variables: dict, prefix: str = "") -> Metrics:
        logits = model.apply(variables, images, train=False).astype(jnp.float32)
        top_k = lax.top_k(logits, min(5, logits.shape[-1]))[1]
        top1 = (top_k[:, 0] == labels).astype(jnp.float32)
        top5 = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
        loss = cross_entropy(logits, labels)
        hits = {"loss": loss * mask, "top1": top1 * mask, "top5": top5 * mask}
        return {prefix + k: jnp.sum(v) for k, v in hits.items()}

    out = {**sums(state.variables), "count": jnp.sum(mask)}
    if state.ema is not None:
        out.update(sums(state.ema, "ema_"))
    return lax.psum(out, axis_name)


def compile_train_step(
    parallel: DataParallel,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    augment_fn: AugmentFn | None = None,
    ema_decay: weight_ema.DecaySchedule | None = None,
    skip_nonfinite: bool = False,
    preset: presets.Preset | None = None,
    donate_state: bool = True,
) -> Callable:
    """``train_step`` compiled by ``parallel``, reducing over its axes and syncing the BN
    statistics when its BN groups are smaller than the data axes."""
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        axis_name=parallel.axis_name,
        loss_fn=loss_fn,
        augment_fn=augment_fn,
        ema_decay=ema_decay,
        sync_batch_stats=parallel.has_bn_groups,
        skip_nonfinite=skip_nonfinite,
        preset=preset,
    )
    return parallel.compile(step, donate_state=donate_state)


def compile_eval_step(
    parallel: DataParallel,
    *,
    model: nn.Module,
    preset: presets.Preset | None = None,
    compiler_options: dict[str, str] | None = None,
) -> Callable:
    """``eval_step`` compiled by ``parallel`` (the state is not donated) with ``jax.jit``'s
    ``compiler_options``."""
    step = functools.partial(eval_step, model=model, axis_name=parallel.axis_name, preset=preset)
    return parallel.compile(step, donate_state=False, compiler_options=compiler_options)


def mean_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Turns summed metrics into means over the true count (count itself is kept)."""
    count = max(float(sums["count"]), 1.0)
    out = {k: float(v) / count for k, v in sums.items() if k != "count"}
    out["count"] = float(sums["count"])
    return out
