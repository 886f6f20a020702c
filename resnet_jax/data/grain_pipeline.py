"""The Grain input pipeline: random-access sources, Pillow in worker processes, no TensorFlow.

Training: example ``k`` of process ``p`` (of ``P``) is in epoch ``e = k // m`` (``m`` examples
per process and epoch) at place ``k % m`` of the process's slice of a full permutation of the
dataset seeded by (seed, e); its crop, flip and ``auto_augment`` are seeded by (seed,
k * P + p). A batch is thus a function of its position, and the iterator's state is that
position: resuming opens the stream there and reads nothing before it. Records that cannot be
decoded are replaced by the next good record of the same epoch slice, so epochs keep their
length and resuming stays exact.

Decoding uses Pillow: the Inception crop window is chosen from the header, JPEGs are decoded
DCT-scaled (``Image.draft``) when the window is at least twice the output size, and the crop,
resize and flip are one resample of the decoded image. Evaluation pixels are
``resnet_jax.images.pixels``, the same as ``predict``'s.

No TensorFlow is needed: TFDS opens an ArrayRecord build and ``tfds.data_source`` reads it
without it. ``uses_grain`` says where tf.data, and so TensorFlow, would be needed instead.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging
from etils import epath
from PIL import Image

from resnet_jax import images
from resnet_jax.data import augment, digits, pipeline, presets, shards

_PERMUTATION_TAG = 1  # Keeps the epoch permutations' seeds apart from the examples' seeds.
_ENDLESS_EPOCHS = 1 << 20  # Stream length in epochs: endless for any run.
TFDS_FORMAT_HINT = (
    "The Grain pipeline reads TFDS datasets stored as ArrayRecord: add ArrayRecord files next to "
    "the TFRecord build with `tfds convert_format --dataset_version_dir={data_dir}/{name}/"
    "<version> --out_file_format=array_record`, or prepare it anew in another folder with "
    "`resnet-jax-prepare {name} --data_dir=NEW_DIR` (ArrayRecord by default) and pass "
    "--config.data.data_dir=NEW_DIR"
)


class BadRecordError(ValueError):
    """Bytes that are not a readable image."""


# Sources: len() and [i] -> (encoded bytes or uint8 array, label, name); picklable for workers.


class ArraySource:
    """In-memory uint8 images (N, H, W, 3) and labels (the bundled digits)."""

    def __init__(self, images_: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images_, np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int, str]:
        return self.images[i], int(self.labels[i]), f"#{i}"


class FileSource:
    """Image files and labels (a folder's index); a file is read when its example is needed."""

    def __init__(self, files: Sequence[str], labels: Sequence[int]):
        self.files, self.labels = tuple(files), np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int, str]:
        try:
            data = epath.Path(self.files[i]).read_bytes()
        except OSError as e:
            data = f"{type(e).__name__}: {e}"  # Reported as this record's problem.
        return data, int(self.labels[i]), self.files[i]


class TfdsSource:
    """A TFDS split stored as ArrayRecord, read with ``tfds.data_source`` (encoded images)."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        import tensorflow_datasets as tfds

        self.records = tfds.data_source(
            name, split=split, data_dir=data_dir, download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, int, str]:
        ex = self.records[i]
        name = ex.get("file_name", ex.get("image/filename", f"#{i}"))
        return ex["image"], int(ex["label"]), name.decode() if isinstance(name, bytes) else name


def make_source(config: Any, *, train: bool, cache_dir: str | None = None) -> Any:
    """The whole split of ``config.dataset`` as a random-access source."""
    if config.dataset == "digits":
        return ArraySource(
            *digits.load_digits_split("train" if train else "eval", config.image_size)
        )
    if config.dataset == "folder":
        chosen = pipeline.folder_indices(config, cache_dir)[0 if train else 1]
        return FileSource(chosen.files, chosen.labels)
    split = config.train_split if train else config.eval_split
    try:
        return TfdsSource(config.dataset, split, config.data_dir)
    except (FileNotFoundError, ValueError) as e:
        hint = TFDS_FORMAT_HINT.format(name=config.dataset, data_dir=config.data_dir or "DIR")
        raise FileNotFoundError(f"{e}\n{hint}; or set --config.data.pipeline=tfdata.") from e


# Pillow transforms on one record.


def _open(data: Any) -> Image.Image:
    if isinstance(data, str):  # FileSource's read error.
        raise BadRecordError(data)
    if isinstance(data, np.ndarray):
        return Image.fromarray(data if data.ndim == 3 else data[..., None].repeat(3, -1))
    if not data:
        raise BadRecordError("empty record")
    try:
        return Image.open(io.BytesIO(data))
    except Exception as e:  # Pillow raises many types for broken files; all mean "skip".
        raise BadRecordError(f"{type(e).__name__}: {e}") from e


def _rgb(img: Image.Image) -> Image.Image:
    try:
        return images.rgb(img)
    except Exception as e:
        raise BadRecordError(f"{type(e).__name__}: {e}") from e


def inception_window(
    width: int, height: int, rng: np.random.Generator, min_area: float
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (left, top, right, bottom) of 8%-100% of the area (min_area)
    and aspect ratio 3/4-4/3 (Szegedy et al. 2015); the whole image after 10 misses."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def decode_crop(
    data: Any, size: int, rng: np.random.Generator, *, min_area: float, resample: int
) -> Image.Image:
    """An Inception crop resized to ``size``; JPEGs decode DCT-scaled when the window allows."""
    img = _open(data)
    width, height = img.size
    box = inception_window(width, height, rng, min_area)
    scale = min(box[2] - box[0], box[3] - box[1]) // size
    if scale >= 2 and img.format == "JPEG":  # draft picks 1/2, 1/4 or 1/8 within `scale`.
        img.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
    img = _rgb(img)
    fx, fy = img.size[0] / width, img.size[1] / height
    box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    return img.resize((size, size), resample, box=box)


def _finish(pixels: np.ndarray, preset: presets.Preset, image_dtype: str) -> np.ndarray:
    if image_dtype == "uint8":
        return pixels
    return np.asarray(presets.normalize(pixels.astype(np.float32), preset), np.float32)


_augment = functools.lru_cache(maxsize=4)(augment.make_train_augment)  # Built once per worker.


class TrainTransform:
    """(record, rng) -> (S, S, 3) image for ``config.train_preprocess``, then
    ``config.auto_augment`` on the cropped and flipped image (timm's order); picklable."""

    def __init__(self, config: Any):
        presets.check_choice("train_preprocess", config.train_preprocess, presets.TRAIN_PREPROCESS)
        presets.check_choice("image_dtype", config.image_dtype, presets.IMAGE_DTYPES)
        self.preset = presets.data_preset(config)
        self.kind, self.size = config.train_preprocess, int(config.image_size)
        self.min_area, self.flip = float(config.min_area), bool(config.flip)
        self.image_dtype, self.auto_augment = config.image_dtype, config.auto_augment
        self.resample = images.FILTERS[self.preset.interpolation]

    def __call__(self, data: Any, rng: np.random.Generator) -> np.ndarray:
        size = self.size
        if self.kind == "inception_crop":
            img = decode_crop(data, size, rng, min_area=self.min_area, resample=self.resample)
        else:
            img = _rgb(_open(data))
            if img.size != (size, size):
                img = img.resize((size, size), self.resample)
            if self.kind == "cifar_crop":  # Zero-pad 4 and crop back (He et al. 2016).
                padded = np.pad(np.asarray(img), ((4, 4), (4, 4), (0, 0)))
                y, x = rng.integers(0, 9, size=2)
                img = Image.fromarray(padded[y : y + size, x : x + size])
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = _augment(self.auto_augment)(np.asarray(img), rng)
        return _finish(pixels, self.preset, self.image_dtype)


class EvalTransform:
    """record -> (S, S, 3) image: ``images.pixels`` of the config's preset, as ``predict``."""

    def __init__(self, config: Any):
        presets.check_choice("image_dtype", config.image_dtype, presets.IMAGE_DTYPES)
        self.preset = presets.eval_preset(config)
        self.image_dtype = config.image_dtype

    def __call__(self, data: Any) -> np.ndarray:
        return _finish(images.pixels(_rgb(_open(data)), self.preset), self.preset, self.image_dtype)


# The streams.


def _warn(name: str, problem: Exception) -> None:
    logging.warning("Skipping image %s: %s", name, problem)


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, _PERMUTATION_TAG]).permutation(n)


class TrainExamples:
    """Example ``k`` of this process's training stream (see the module docstring)."""

    def __init__(self, source: Any, transform: TrainTransform, seed: int, index: int, count: int):
        self.source, self.transform = source, transform
        self.seed, self.index, self.count = seed, index, count
        self.per_epoch = shards.train_shard(len(source), index, count)
        self.per_epoch = self.per_epoch[1] - self.per_epoch[0]

    def record(self, k: int, attempt: int = 0) -> int:
        """The source index of example ``k`` (or of its ``attempt``-th replacement)."""
        epoch, place = divmod(k, self.per_epoch)
        place = (place + attempt) % self.per_epoch
        return int(
            _permutation(len(self.source), self.seed, epoch)[self.index * self.per_epoch + place]
        )

    def __call__(self, k: int) -> dict[str, Any]:
        for attempt in range(self.per_epoch):
            data, label, name = self.source[self.record(k, attempt)]
            rng = np.random.default_rng([self.seed, k * self.count + self.index])
            try:
                return {"image": self.transform(data, rng), "label": np.int32(label)}
            except BadRecordError as e:
                _warn(name, e)
        raise ValueError(f"Process {self.index} has no readable training image.")


class EvalExamples:
    """Place ``j`` of this process's eval shard, or padding (mask 0) past its end."""

    def __init__(self, source: Any, transform: EvalTransform, start: int, stop: int, size: int):
        self.source, self.transform, self.start, self.stop = source, transform, start, stop
        self.pad = np.zeros((size, size, 3), transform.image_dtype)

    def __call__(self, j: int) -> dict[str, Any]:
        if self.start + j < self.stop:
            data, label, name = self.source[self.start + j]
            try:
                return {
                    "image": self.transform(data),
                    "label": np.int32(label),
                    "mask": np.float32(1),
                }
            except BadRecordError as e:
                _warn(name, e)
        return {"image": self.pad, "label": np.int32(0), "mask": np.float32(0)}


def _workers(config: Any) -> int:
    workers = int(config.workers)
    if workers >= 0:
        return workers
    # The cores this process may run on (a container's or taskset's share), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _loader(ds: grain.MapDataset, workers: int) -> grain.IterDataset:
    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; outside an absl app, defaults.
        flags.FLAGS.mark_as_parsed()
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if workers else 1))
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Batches from example ``start`` of this process's stream on, the first one for training
    step ``start_step + 1``; ``get_state()`` is the position of the next batch."""

    def __init__(
        self, examples: TrainExamples, local_batch: int, start: int, start_step: int, workers: int
    ):
        self.examples, self.local_batch = examples, local_batch
        self.start, self.start_step, self.yielded = start, start_step, 0
        stop = start + examples.per_epoch * _ENDLESS_EPOCHS
        ds = grain.MapDataset.range(start, stop).map(examples)
        self._it = iter(_loader(ds.batch(local_batch, drop_remainder=True), workers))

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self.yielded += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return self.state_after(self.start_step + self.yielded)

    def close(self) -> None:
        self._it.close()

    def state_after(self, step: int) -> dict[str, Any]:
        """The state once training step ``step`` is done (the loop's iterator runs ahead of
        training by its prefetch): JSON for the checkpoint's metadata.

        It is every process's state: training shards are equal in size (``shards.train_shard``)
        and a bad record is replaced within its epoch slice, so after the same steps every
        process is at the same example of its own stream.
        """
        position = self.start + (step - self.start_step) * self.local_batch
        epoch, offset = divmod(position, self.examples.per_epoch)
        return {
            "pipeline": "grain",
            "next_example": position,
            "epoch": epoch,
            "epoch_offset": offset,
            "local_batch": self.local_batch,
            "seed": self.examples.seed,
            "process_count": self.examples.count,
        }


def resume_position(
    state: dict[str, Any] | None, *, start_step: int, local_batch: int, process_count: int
) -> int:
    """The example each process resumes at: the checkpoint's recorded ``state`` where there is
    one for this many processes, else ``start_step``'s (older checkpoints, tf.data runs)."""
    derived = start_step * local_batch
    if state is None or state.get("pipeline") != "grain":
        return derived
    position = state.get("next_example")
    if state.get("process_count") != process_count or not isinstance(position, int) or position < 0:
        logging.warning(
            "The checkpoint's input position %s is not one for %d process(es): resuming at step "
            "%d's position (example %d of each process's stream); the data order differs from "
            "an uninterrupted run.", state, process_count, start_step, derived,
        )  # fmt: skip
        return derived
    if position != derived:
        logging.warning(
            "The checkpoint's input position (example %d of each process's stream, %s per batch) "
            "differs from step %d's with %d per batch (example %d): resuming at the recorded "
            "one, so no example is read twice or skipped.",
            position, state.get("local_batch"), start_step, local_batch, derived,
        )  # fmt: skip
    return position


def create_train_iterator(
    config: Any,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    state: dict[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: str | None = None,
) -> TrainIterator:
    """Endless training batches {'image', 'label'} for this process from ``start_step``, at the
    position a ``state`` saved by ``TrainIterator.get_state`` records (see ``resume_position``),
    as ``pipeline.create_train_iterator`` yields them in shape and dtype."""
    index, count = pipeline._processes(process_index, process_count)
    local_batch = pipeline._local_batch(global_batch_size, count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    start = resume_position(
        state, start_step=start_step, local_batch=local_batch, process_count=count
    )
    source = make_source(config, train=True, cache_dir=cache_dir)
    examples = TrainExamples(source, TrainTransform(config), seed, index, count)
    if examples.per_epoch == 0:
        raise ValueError(f"Process {index}/{count} has no training examples in {config.dataset!r}.")
    return TrainIterator(examples, local_batch, start, start_step, _workers(config))


def create_eval_iterator(
    config: Any,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every eval example once across processes (mask 1), then padding (mask 0), in the same
    number of batches on every process."""
    index, count = pipeline._processes(process_index, process_count)
    local_batch = pipeline._local_batch(global_batch_size, count)
    source = make_source(config, train=False, cache_dir=cache_dir)
    start, stop = shards.even_shard(len(source), index, count)
    num_batches = shards.num_eval_batches(len(source), count, local_batch)
    transform = EvalTransform(config)
    examples = EvalExamples(source, transform, start, stop, transform.preset.crop)
    ds = grain.MapDataset.range(num_batches * local_batch).map(examples)
    return iter(_loader(ds.batch(local_batch, drop_remainder=True), _workers(config)))


def uses_grain(config: Any) -> bool:
    """Whether ``data.pipeline`` picks Grain for this dataset. Synthetic data has its own NumPy
    stream; a TFDS build without ArrayRecord files keeps tf.data, with a warning saying how to
    convert it. Raises NoTensorFlowError where tf.data would be needed and TF is missing."""
    presets.check_choice("data.pipeline", config.pipeline, ("grain", "tfdata"))
    if config.dataset == "synthetic":
        return False
    from resnet_jax.data import sources

    if config.pipeline == "tfdata":
        sources.require_tensorflow(sources.TFDATA, ", or set --config.data.pipeline=grain")
        return False
    if config.dataset in ("digits", "folder"):
        return True

    info = sources.tfds_builder(config).info
    fmt = getattr(info, "file_format", None)
    formats = [fmt, *getattr(info, "alternative_file_formats", [])]
    if "array_record" in [getattr(f, "value", f) for f in formats]:
        return True
    hint = TFDS_FORMAT_HINT.format(name=config.dataset, data_dir=config.data_dir or "DIR")
    fmt = getattr(fmt, "value", fmt)
    sources.require_tensorflow(
        f"Reading TFDS dataset {config.dataset!r}, stored as {fmt} (which only tf.data reads),",
        f"; or convert the build to ArrayRecord where TensorFlow is installed. {hint}",
    )
    _warn_tfdata(config.dataset, fmt, hint)
    return False


@functools.cache  # Once per dataset and process, not once per iterator.
def _warn_tfdata(name: str, fmt: str, hint: str) -> None:
    logging.warning("%s is stored as %s: reading it with tf.data. %s.", name, fmt, hint)


def train_iterator(
    config: Any,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    state: dict[str, Any] | None,
    cache_dir: str | None,
) -> Iterator[dict[str, np.ndarray]]:
    """The training loop's iterator: Grain's (at the recorded ``state``) or tf.data's (at
    ``start_step``), as ``uses_grain`` says."""
    if not uses_grain(config):
        return pipeline.create_train_iterator(
            config, global_batch_size=global_batch_size, seed=seed, start_step=start_step
        )
    return create_train_iterator(
        config, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
        state=state, cache_dir=cache_dir,
    )  # fmt: skip


def eval_iterator(
    config: Any, *, global_batch_size: int, cache_dir: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation iterator of the configured pipeline."""
    if not uses_grain(config):
        return pipeline.create_eval_iterator(config, global_batch_size=global_batch_size)
    return create_eval_iterator(config, global_batch_size=global_batch_size, cache_dir=cache_dir)


def close(iterator: Iterator[Any] | None) -> None:
    """Stops a Grain iterator's worker processes and frees their shared memory before the
    interpreter exits (else Python warns of leaked shared_memory); tf.data's need nothing."""
    getattr(iterator, "close", lambda: None)()


def state_after(iterator: Iterator[Any], step: int) -> dict[str, Any] | None:
    """The input state once ``step`` is trained, for the checkpoint; None for tf.data's."""
    return iterator.state_after(step) if isinstance(iterator, TrainIterator) else None
