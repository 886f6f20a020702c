"""The input pipeline the training loop calls: config -> per-process iterators of NumPy batches.

Training streams are infinite, deterministic given the seed, and resumable: epoch ``e`` is the
process's shard shuffled with a seed derived from (seed, e), and augmentation randomness comes
from (seed, global example counter). Starting at ``start_step`` skips the examples already
consumed (undecoded) and yields exactly the batches an uninterrupted run would have; for TFDS
that means reading, not decoding, up to one epoch of this process's records.
Eval streams give every example exactly once across processes, padded and masked.

Records whose bytes cannot be an image (empty, not an image format, truncated JPEG/PNG) are
skipped with a warning naming them. A training epoch keeps its length: the first good records
of the same shuffled epoch fill the places of skipped ones, so resuming stays exact.

Every function takes a complete data config (a run's ``spec.config.data``, or
``spec.complete({"data": partial}).data``): none fills in defaults.

TensorFlow and TFDS are imported inside functions only: ``import resnet_jax.data`` stays TF-free,
and TensorFlow is an extra (``resnet-jax[tf]``) that training hosts on the Grain path lack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from resnet_jax.data import digits, folder, presets, shards, synthetic


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the loop need to know about a dataset (counts are global)."""

    num_classes: int
    num_train: int
    num_eval: int
    class_names: tuple[str, ...] | None


def _optional_str() -> ml_collections.FieldReference:
    """None by default, yet settable from the command line (--config.data.data_dir=...)."""
    return ml_collections.config_dict.placeholder(str)


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field with its default: ``spec.complete`` fills a config's missing ones."""
    c = ml_collections.ConfigDict()
    # 'imagenet2012', 'imagenette', 'tf_flowers', 'cifar10' or any TFDS image-classification
    # name; 'digits' (scikit-learn's handwritten digits, offline); 'folder' (class subfolders);
    # 'synthetic' (NumPy noise, no TF, for benchmarks).
    c.dataset = "imagenet2012"
    c.data_dir = _optional_str()  # TFDS data_dir; None = ~/tensorflow_datasets or $TFDS_DATA_DIR.
    c.manual_dir = _optional_str()  # Manually downloaded files; None = <data_dir>/downloads/manual.
    # Download and prepare a TFDS dataset that is not prepared in data_dir yet (ImageNet's
    # manual files are prepared either way). Off: a run never starts a download on its own.
    c.download = False
    c.train_split = "train"  # TFDS split strings, e.g. 'train[:90%]'; ignored by digits/folder.
    c.eval_split = "validation"  # e.g. 'train[90%:]' for tf_flowers, 'test' for cifar10.
    c.folder = _optional_str()  # 'folder': training images, <folder>/<class>/<image>.
    c.eval_folder = _optional_str()  # Eval images; None = hold out eval_fraction of `folder`.
    c.eval_fraction = 0.1  # 'folder': fixed per-class hold-out fraction when no eval_folder.
    # 'header' opens each image's header once per folder; 'full' also decodes every image.
    c.folder_check = "header"
    c.image_size = 224  # Square model input in training, and in evaluation by default.
    c.eval_image_size = 0  # Eval input (center crop) size; 0 = image_size (RSB A3: 160 -> 224).
    c.train_preprocess = "inception_crop"  # 'inception_crop' | 'cifar_crop' (pad 4) | 'resize'.
    c.eval_preprocess = "center_crop"  # 'center_crop' (resize image_size / crop_pct) | 'resize'.
    c.crop_pct = 0.875  # Eval crop fraction: resize the short side to the eval size / crop_pct.
    c.min_area = 0.08  # Smallest crop area fraction for 'inception_crop'.
    c.interpolation = "bilinear"  # One of presets.INTERPOLATIONS.
    c.mean = presets.IMAGENET_MEAN  # RGB mean in [0, 1] units.
    c.std = presets.IMAGENET_STD  # RGB std in [0, 1] units.
    # A presets.PRESETS name ('torchvision_v1', 'timm_rsb', 'keras_caffe', ...): it sets the
    # normalisation, interpolation and eval resize/crop ratio, overriding the four fields above.
    c.preset = _optional_str()
    # 'float32': normalised model inputs; 'uint8': pixels in [0, 255], a quarter of the bytes
    # to copy to the devices, normalised there by the steps (the accelerator recipes use it).
    c.image_dtype = "float32"
    c.flip = True  # Random horizontal flips in training.
    # Host augmentation of training images after the crop and flip, seeded per example (Grain
    # only; resnet_jax.data.augment): '' none, timm's RandAugment ('rand-m7-mstd0.5-inc1', RSB
    # A1/A2) or 'ta_wide' (TrivialAugmentWide).
    c.auto_augment = ""
    c.random_erase_prob = 0.0  # Random Erasing of a box per image, on the device (train step).
    # 'grain': random-access sources, a new permutation every epoch, Pillow in worker
    # processes, resumed without replay, no TensorFlow. 'tfdata': the tf.data pipeline
    # (TFDS files read in order through shuffle_buffer; resuming skips up to an epoch).
    c.pipeline = "grain"
    c.workers = -1  # 'grain': decode worker processes; -1 = one per core, 0 = in this process.
    c.shuffle_buffer = 16_384  # Examples in the TFDS shuffle buffer (small sources shuffle fully).
    c.cache = False  # Cache the undecoded records in memory (small datasets).
    c.num_parallel_calls = -1  # Parallel decode/augment calls; -1 = AUTOTUNE.
    c.prefetch = -1  # Batches prefetched; -1 = AUTOTUNE.
    c.private_threads = 48  # tf.data private thread pool size; 0 = TF's shared pool.
    # Training examples in a fixed order. False lets tf.data hand out examples as they finish
    # (hosts with slow or uneven reads keep ahead), but a resumed run no longer sees exactly
    # the batches of an uninterrupted one. Evaluation is always ordered.
    c.deterministic = True
    c.num_classes = 1000  # 'synthetic' only.
    c.synthetic_size = 1024  # 'synthetic': training examples.
    c.synthetic_eval_size = 256  # 'synthetic': eval examples.
    return c


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}.")
    return index, count


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}."
        )
    return global_batch_size // process_count


def _synthetic(config: Any, train: bool, seed: int) -> synthetic.SyntheticData:
    return synthetic.SyntheticData.create(
        num_examples=int(config.synthetic_size if train else config.synthetic_eval_size),
        num_classes=int(config.num_classes),
        image_size=int(config.image_size) if train else presets.data_preset(config).crop,
        seed=seed if train else seed + 1,
        dtype=str(config.image_dtype),
    )


def folder_indices(
    config: Any, cache_dir: str | None = None, write: bool = True
) -> tuple[folder.FolderIndex, folder.FolderIndex]:
    """(train, eval) indexes of a 'folder' dataset: ``eval_folder`` or a fixed hold-out. Each
    folder is scanned once per process (and its index kept in ``cache_dir`` with ``write``)."""
    if not config.folder:
        raise ValueError("data.folder must name a folder of class subfolders for dataset 'folder'.")
    scan = functools.partial(
        folder.cached_scan, check=config.folder_check, cache_dir=cache_dir, write=write
    )
    index = scan(config.folder)
    if config.eval_folder:
        eval_index = scan(config.eval_folder)
        if eval_index.class_names != index.class_names:
            raise ValueError(
                f"eval_folder classes {list(eval_index.class_names)} differ from folder classes "
                f"{list(index.class_names)}; both need the same class subfolders."
            )
        return index, eval_index
    if config.eval_fraction <= 0:
        return index, index.subset([])
    return folder.holdout_split(index, float(config.eval_fraction))


def get_dataset_info(
    config: ml_collections.ConfigDict, cache_dir: str | None = None
) -> DatasetInfo:
    """Classes and global example counts of the configured dataset (prepares TFDS data); a
    folder's index is read from ``cache_dir`` (the run's workdir) when kept there."""
    if config.dataset == "synthetic":
        sizes = int(config.synthetic_size), int(config.synthetic_eval_size)
        return DatasetInfo(int(config.num_classes), *sizes, None)
    if config.dataset == "digits":
        return DatasetInfo(
            10, digits.num_examples("train"), digits.num_examples("eval"), digits.CLASS_NAMES
        )
    if config.dataset == "folder":
        train, evaluation = folder_indices(config, cache_dir, write=False)
        return DatasetInfo(len(train.class_names), len(train), len(evaluation), train.class_names)
    from resnet_jax.data import sources

    builder = sources.tfds_builder(config)
    label = builder.info.features["label"]
    counts = []
    for split in (config.train_split, config.eval_split):
        sources.check_split(builder, split, config)
        counts.append(sources.tfds_count(builder, split))
    names = tuple(label.names) if getattr(label, "names", None) else None
    return DatasetInfo(int(label.num_classes), counts[0], counts[1], names)


def _source(config: ml_collections.ConfigDict, *, train: bool, index: int, count: int) -> Any:
    from resnet_jax.data import sources

    where = {"process_index": index, "process_count": count, "train": train}
    if config.dataset == "digits":
        images, labels = digits.load_digits_split("train" if train else "eval", config.image_size)
        return sources.array_source(images, labels, **where)
    if config.dataset == "folder":
        chosen = folder_indices(config)[0 if train else 1]
        return sources.files_source(chosen.files, chosen.labels, **where)
    split = config.train_split if train else config.eval_split
    return sources.tfds_source(config, split, **where)


def _options(config: ml_collections.ConfigDict, deterministic: bool = True) -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.threading.max_intra_op_parallelism = 1
    if config.private_threads > 0:
        options.threading.private_threadpool_size = int(config.private_threads)
    return options


def _as_numpy(ds: Any) -> Iterator[dict[str, np.ndarray]]:
    import tensorflow_datasets as tfds

    return iter(tfds.as_numpy(ds))


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches {'image': (B, S, S, 3), 'label': int32 (B,)} for this process; images
    are float32 model inputs, or uint8 pixels with ``config.image_dtype='uint8'``.

    B = global_batch_size // process_count. Started at ``start_step`` it yields exactly the
    batches the uninterrupted iterator yields from that step on.
    """
    index, count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    if config.dataset == "synthetic":
        return synthetic.train_batches(
            _synthetic(config, True, seed),
            local_batch=local_batch,
            start_step=start_step,
            process_index=index,
            process_count=count,
        )
    from resnet_jax.data import sources

    sources.require_tensorflow(sources.TFDATA)
    import tensorflow as tf

    from resnet_jax.data import preprocess

    source = _source(config, train=True, index=index, count=count)
    n = source.num_examples
    if n == 0:
        raise ValueError(f"Process {index}/{count} has no training examples in {config.dataset!r}.")
    consumed = start_step * local_batch
    start_epoch, offset = divmod(consumed, n)
    records = source.records.cache() if config.cache else source.records
    buffer = n if source.shuffle_buffer is None else max(1, min(source.shuffle_buffer, n))

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        # The order must follow from `seed` alone. TF pairs an op seed with the graph-level
        # seed that tf.random.set_seed / keras.utils.set_random_seed leave behind (and with
        # a global seed of 0 cannot take a tensor op seed at all): trace without it.
        tf.compat.v1.get_default_graph().seed = None
        shuffle_seed = preprocess.epoch_shuffle_seed(seed, e)
        shuffled = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        if source.check is None:
            return shuffled
        # Same order on both passes (reshuffle_each_iteration=False): n examples per epoch.
        return shuffled.filter(source.check).repeat(2).take(n)

    transform = preprocess.make_train_transform(config)

    def prepare(counter: tf.Tensor, ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = source.load(ex) if source.load else ex
        example_seed = preprocess.example_seed(seed, counter * count + index)
        return {"image": transform(ex["image"], example_seed), "label": ex["label"]}

    ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch).skip(offset)
    ds = ds.enumerate(start=consumed)
    ordered = bool(config.deterministic)
    ds = ds.map(prepare, num_parallel_calls=int(config.num_parallel_calls), deterministic=ordered)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.prefetch(int(config.prefetch))
    return _as_numpy(ds.with_options(_options(config, ordered)))


def create_eval_iterator(
    config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Finite batches {'image', 'label', 'mask'}: every eval example once across processes with
    mask 1, padding (mask 0) at the end, and the same number of batches on every process."""
    index, count = _processes(process_index, process_count)
    local_batch = _local_batch(global_batch_size, count)
    if config.dataset == "synthetic":
        return synthetic.eval_batches(
            _synthetic(config, False, 0),
            local_batch=local_batch,
            process_index=index,
            process_count=count,
        )
    from resnet_jax.data import sources

    sources.require_tensorflow(sources.TFDATA)
    import tensorflow as tf

    from resnet_jax.data import preprocess

    source = _source(config, train=False, index=index, count=count)
    num_batches = shards.num_eval_batches(source.total_examples, count, local_batch)
    padding = num_batches * local_batch - source.num_examples
    if padding < 0:
        raise RuntimeError(
            f"Process {index} holds {source.num_examples} of {source.total_examples} eval "
            f"examples, more than its share; the split metadata looks inconsistent."
        )
    transform = preprocess.make_eval_transform(config)

    def prepare(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = source.load(ex) if source.load else ex
        return {"image": transform(ex["image"]), "label": ex["label"], "mask": tf.constant(1.0)}

    size = presets.data_preset(config).crop
    pad = {
        "image": tf.zeros([size, size, 3], tf.as_dtype(config.image_dtype)),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(0.0),
    }
    records = source.records.cache() if config.cache else source.records
    if source.check is not None:  # Skipped records are replaced by padding: same batch count.
        records = records.filter(source.check)
        padding = num_batches * local_batch
    ds = records.map(prepare, num_parallel_calls=int(config.num_parallel_calls), deterministic=True)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padding))
    ds = ds.take(num_batches * local_batch).batch(local_batch, drop_remainder=True)
    ds = ds.prefetch(int(config.prefetch))
    return _as_numpy(ds.with_options(_options(config)))
