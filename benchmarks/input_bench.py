"""Host input pipeline throughput: ``resnet_jax.data`` on JPEG files the benchmark writes.

A 'folder' dataset of ImageNet-like JPEGs (500x375, quality 90) read by the training
pipeline exactly as in training: file read, fused JPEG decode-and-crop (Inception crop), resize
to 224, flip, normalise, batch. Measured with the pipeline's own tf.data settings on all cores,
and with one map thread and a one-thread pool (about one core), in images/s and per core; the
better per-core figure gives the host cores needed to feed 5,000 images/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import usable_cores


def write_jpegs(
    root: str, num_images: int, *, size: tuple[int, int] = (375, 500), classes: int = 4
) -> None:
    """Writes ``num_images`` photo-like JPEGs (smooth colour fields plus grain) in class dirs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for i in range(num_images):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform(0, 255, size=(h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(image, np.float32) + rng.normal(0, 12, size=(h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"img{i:05d}.jpg"), quality=90
        )


def _measure(
    folder: str, *, image_size: int, batch_size: int, batches: int, warmup: int, **data: Any
) -> float:
    from resnet_jax.data import create_train_iterator, default_data_config

    config = default_data_config()
    config.dataset = "folder"
    config.folder = folder
    config.eval_fraction = 0.0
    config.folder_check = "header"
    config.image_size = image_size
    config.train_preprocess = "inception_crop"
    for key, value in data.items():
        config[key] = value
    batches_iter = create_train_iterator(
        config, global_batch_size=batch_size, seed=0, process_index=0, process_count=1
    )
    for _ in range(warmup):
        next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return batches * batch_size / (time.perf_counter() - start)


def measure_input_pipeline(
    *,
    num_images: int = 256,
    image_size: int = 224,
    batch_size: int = 32,
    batches: int = 48,
    warmup: int = 4,
    log: Any = None,
) -> dict[str, Any]:
    """Images/s of the training input pipeline, in total and per CPU core."""
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="resnet_jax_input_bench_") as root:
        start = time.perf_counter()
        write_jpegs(root, num_images)
        if log:
            log(f"  wrote {num_images} JPEGs in {time.perf_counter() - start:.1f} s")
        common = dict(image_size=image_size, batch_size=batch_size, batches=batches, warmup=warmup)
        all_cores = _measure(root, **common)
        if log:
            log(f"  all {cores} cores: {all_cores:.1f} img/s")
        one_thread = _measure(root, num_parallel_calls=1, private_threads=1, **common)
        if log:
            log(f"  one thread: {one_thread:.1f} img/s")
        jpeg_bytes = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files
        )
    return {
        "images": num_images,
        "jpeg_size": "500x375",
        "mean_jpeg_kb": round(jpeg_bytes / num_images / 1024, 1),
        "image_size": image_size,
        "batch_size": batch_size,
        "timed_batches": batches,
        "cores_used": cores,
        "images_per_sec": all_cores,
        "images_per_sec_per_core": all_cores / cores,
        "one_thread_images_per_sec": one_thread,
        "cores_to_feed_5000_images_per_sec": 5000 / max(all_cores / cores, one_thread),
        "settings": "pipeline defaults: AUTOTUNE map and prefetch, private pool 48, "
        "max_intra_op_parallelism 1, deterministic; one thread: num_parallel_calls=1, "
        "private_threads=1",
    }
