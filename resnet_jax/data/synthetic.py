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
    """Image pool (P, S, S, 3) and labels (N,) int32, fixed by the seed: standard-normal
    float32 inputs, or uniform uint8 pixels for ``dtype='uint8'``."""

    images: np.ndarray
    labels: np.ndarray

    @classmethod
    def create(
        cls,
        *,
        num_examples: int,
        num_classes: int,
        image_size: int,
        seed: int,
        dtype: str = "float32",
    ):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, num_classes, size=num_examples, dtype=np.int32)
        pool = min(POOL_SIZE, num_examples)
        shape = (pool, image_size, image_size, 3)
        if dtype == "uint8":
            images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        elif dtype == "float32":
            images = rng.standard_normal(shape, dtype=np.float32)
        else:
            raise ValueError(f"Unknown image dtype {dtype!r}; expected 'float32' or 'uint8'.")
        return cls(images=images, labels=labels)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "image": self.images[indices % len(self.images)],
            "label": self.labels[indices],
        }


def train_batches(
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


def eval_batches(
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
        image = out["image"]
        out["image"] = np.where(valid[:, None, None, None], image, 0).astype(image.dtype)
        out["label"] = np.where(valid, out["label"], 0).astype(np.int32)
        out["mask"] = valid.astype(np.float32)
        yield out
