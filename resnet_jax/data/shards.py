"""Which examples each process reads: the arithmetic of sharding and eval padding.

Pure Python so that every data source (TFDS, arrays, folders, synthetic) agrees on it.
"""

from __future__ import annotations

import math


def even_shard(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of shard ``index`` of ``count`` contiguous near-equal shards of ``n`` items.

    The first ``n % count`` shards get one extra item, as ``tfds.even_splits`` does.
    """
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}.")
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def train_shard(n: int, index: int, count: int) -> tuple[int, int]:
    """Equal-size contiguous shards for training (the remainder ``n % count`` is dropped), so
    every process finishes its epochs at the same step."""
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}.")
    size = n // count
    return index * size, (index + 1) * size


def num_eval_batches(n: int, process_count: int, local_batch: int) -> int:
    """Batches every process yields so that the largest shard fits (smaller ones are padded)."""
    return math.ceil(math.ceil(n / process_count) / local_batch)
