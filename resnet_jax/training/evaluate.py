"""Evaluation over a whole split: every example counted once, the padded tail masked out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from resnet_jax.parallel import DataParallel
from resnet_jax.training.steps import mean_metrics


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


def evaluate(
    eval_fn: Callable,
    state: Any,
    batches: Iterable[dict[str, np.ndarray]],
    parallel: DataParallel,
    *,
    local_batch_size: int,
    max_steps: int = -1,
) -> dict[str, float]:
    """Mean loss, top-1 and top-5 over the real examples of ``batches``, plus their count."""
    sums = None
    for i, batch in enumerate(batches):
        if 0 <= max_steps <= i:
            break
        out = eval_fn(state, parallel.shard_batch(pad_batch(batch, local_batch_size)))
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    if sums is None:
        raise ValueError("The evaluation split yielded no batches.")
    return mean_metrics(jax.device_get(parallel.unreplicate(sums)))
