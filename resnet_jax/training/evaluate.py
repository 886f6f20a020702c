"""Evaluation over a whole split: every example counted once, the padded tail masked out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from resnet_jax.parallel import DataParallel


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pads a short last batch to ``size`` rows with zeros and mask 0 (static shapes)."""
    n = len(batch["label"])
    if "mask" not in batch:
        batch = {**batch, "mask": np.ones((n,), np.float32)}
    if n == size:
        return batch
    if n > size:
        raise ValueError(f"Eval batch of {n} examples exceeds the local batch size {size}.")
    return {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }


def sum_batches(
    step_fn: Callable,
    state: Any,
    batches: Iterable[dict[str, np.ndarray]],
    parallel: DataParallel,
    *,
    local_batch_size: int,
    max_steps: int = -1,
) -> Any:
    """``step_fn``'s outputs (psum-reduced, e.g. metric sums or a confusion matrix) summed over
    ``batches``, each padded to the local batch size, as one host copy."""
    sums = None
    for i, batch in enumerate(batches):
        if 0 <= max_steps <= i:
            break
        out = step_fn(state, parallel.shard_batch(pad_batch(batch, local_batch_size)))
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    if sums is None:
        raise ValueError("The evaluation split yielded no batches.")
    return jax.device_get(parallel.unreplicate(sums))


def eval_sums(
    spec: Any, step_fn: Callable, state: Any, parallel: DataParallel, cache_dir: Any = None
) -> Any:
    """``sum_batches`` over the eval split of the run ``spec`` (a RunSpec) describes, through
    the configured pipeline (a folder's index kept in ``cache_dir``): every example once, at
    most ``num_eval_steps`` batches."""
    from resnet_jax.data import grain_pipeline

    config = spec.config
    batches = grain_pipeline.eval_iterator(
        config.data, global_batch_size=config.eval_batch_size, cache_dir=cache_dir
    )
    try:
        return sum_batches(
            step_fn,
            state,
            batches,
            parallel,
            local_batch_size=spec.local_eval_batch,
            max_steps=config.num_eval_steps,
        )
    finally:
        grain_pipeline.close(batches)
