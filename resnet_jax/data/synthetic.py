"""Synthetic images and labels made with NumPy (no TensorFlow), for benchmarks and smoke tests.

A dataset of ``num_examples`` examples fixed by the seed: example ``i`` has a random label and
the image ``pool[i % pool_size]`` from a small pool of standard-normal images (a pool keeps
host memory and batch assembly cheap at 224x224).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from resnet_jax.data.shards import even_shard, num_eval_batches

POOL_SIZE = 32


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """Image pool (P, S, S, 3) float32 and labels (N,) int32, fixed by the seed."""

    images: np.ndarray
    labels: np.ndarray

    @classmethod
    def create(cls, *, num_examples: int, num_classes: int, image_size: int, seed: int):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, num_classes, size=num_examples, dtype=np.int32)
        pool = min(POOL_SIZE, num_examples)
        images = rng.standard_normal((pool, image_size, image_size, 3), dtype=np.float32)
        return cls(images=images, labels=labels)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "image": self.images[indices % len(self.images)],
            "label": self.labels[indices],
        }


def train_iterator(
    data: SyntheticData,
    *,
    local_batch: int,
    start_step: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches; process ``p`` takes every ``process_count``-th example of the stream."""
    n = len(data.labels)
    step = start_step
    while True:
        local = step * local_batch + np.arange(local_batch)
        yield data.batch((local * process_count + process_index) % n)
        step += 1


def eval_iterator(
    data: SyntheticData,
    *,
    local_batch: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Each example once across processes (contiguous even shards), last batch padded, masked."""
    n = len(data.labels)
    start, stop = even_shard(n, process_index, process_count)
    num_batches = num_eval_batches(n, process_count, local_batch)
    for b in range(num_batches):
        idx = start + b * local_batch + np.arange(local_batch)
        valid = idx < stop
        out = data.batch(np.where(valid, idx, 0))
        out["image"] = np.where(valid[:, None, None, None], out["image"], 0.0).astype(np.float32)
        out["label"] = np.where(valid, out["label"], 0).astype(np.int32)
        out["mask"] = valid.astype(np.float32)
        yield out

