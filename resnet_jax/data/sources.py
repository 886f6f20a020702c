"""Where examples come from: TFDS builders, in-memory arrays and image files, as tf.data records.

A ``Source`` is one process's shard in a fixed order, not yet decoded, so that shuffling and
skipping (for resume) stay cheap; the pipeline decodes after both. TensorFlow is imported on
first use: opening a TFDS build (``tfds_builder``, for Grain too) needs none.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from typing import Any

import numpy as np
from absl import logging
from etils import epath, epy

from resnet_jax.data.shards import even_shard, train_shard


def _hide_gpus(_: str) -> None:
    importlib.import_module("resnet_jax.data.preprocess")  # Hides the GPUs from TF on import.


with epy.lazy_imports(success_callback=_hide_gpus):  # TF is imported on first use.
    import tensorflow as tf

Example = dict[str, Any]
TFDATA = "The tf.data input pipeline (data.pipeline='tfdata')"
SPECIAL_DATASETS = ("digits", "folder", "synthetic")
TFDS_EXAMPLES = ("imagenet2012", "imagenette", "tf_flowers", "cifar10")
_FILE_ORDER_SEED = 0  # Mixes classes before sharding folders; part of the data definition.


class NoTensorFlowError(ModuleNotFoundError):
    """TensorFlow is not installed and what was asked for needs it."""


def require_tensorflow(needed_for: str, other_fix: str = "") -> None:
    """Raises NoTensorFlowError saying that ``needed_for`` needs TensorFlow and how to add it,
    where TensorFlow is not installed."""
    if find_spec("tensorflow") is None:
        raise NoTensorFlowError(
            f"{needed_for} needs TensorFlow, which is not installed: `pip install "
            f"'resnet-jax[tf]'` adds it{other_fix}.",
            name="tensorflow",
        )


@dataclasses.dataclass(frozen=True)
class Source:
    """One process's examples ``{'image', 'label'}`` in a fixed order, with their count.

    ``load`` runs per example after shuffling/skipping (e.g. reads a file); ``shuffle_buffer``
    None means the records are small enough to shuffle fully. ``check`` (a cheap test on the
    encoded bytes, no decoding) says which records to skip; it warns once per skipped record.
    """

    records: tf.data.Dataset
    num_examples: int
    total_examples: int  # In the whole split, across all processes.
    load: Callable[[Example], Example] | None = None
    shuffle_buffer: int | None = None
    check: Callable[[Example], tf.Tensor] | None = None


_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_OTHER_MAGIC = (b"GIF87a", b"GIF89a", b"BM")  # WebP: RIFF....WEBP, checked separately.
_skipped: dict[str, str] = {}
_skipped_lock = threading.Lock()


def skipped_records() -> dict[str, str]:
    """Records skipped so far in this process (name -> reason), e.g. truncated JPEGs."""
    with _skipped_lock:
        return dict(_skipped)


def _tail_has(data: tf.Tensor, marker: bytes, window: int = 64) -> tf.Tensor:
    """Whether ``marker`` occurs in the last ``window`` bytes (tolerates trailing padding)."""
    n = tf.strings.length(data)
    tail = tf.io.decode_raw(tf.strings.substr(data, tf.maximum(n - window, 0), window), tf.uint8)
    k = len(marker)
    found = tf.ones([tf.maximum(tf.size(tail) - k + 1, 0)], tf.bool)
    for i, byte in enumerate(marker):
        found &= tail[i : tf.size(tail) - k + 1 + i] == byte
    return tf.reduce_any(found)


def image_problem(data: tf.Tensor) -> tf.Tensor:
    """Why encoded bytes cannot be an image TensorFlow decodes, or '' (no decoding done).

    Catches empty records, non-image data and truncated JPEG/PNG files (no end marker);
    grey, RGBA, CMYK, 16-bit and PNG-in-.jpg images pass and are converted by the decoder.
    """
    head = tf.strings.substr(data, 0, 12)
    is_jpeg = tf.strings.substr(head, 0, 3) == _JPEG
    is_png = tf.strings.substr(head, 0, 8) == _PNG
    is_webp = (tf.strings.substr(head, 0, 4) == b"RIFF") & (
        tf.strings.substr(head, 8, 4) == b"WEBP"
    )
    is_other = is_webp
    for magic in _OTHER_MAGIC:
        is_other |= tf.strings.substr(head, 0, len(magic)) == magic
    return tf.case(
        [
            (tf.strings.length(data) == 0, lambda: tf.constant("empty record")),
            (is_jpeg, lambda: tf.where(_tail_has(data, b"\xff\xd9"), "", "truncated JPEG")),
            (is_png, lambda: tf.where(_tail_has(data, b"IEND"), "", "truncated PNG")),
            (is_other, lambda: tf.constant("")),
        ],
        default=lambda: tf.constant("not an image format TensorFlow decodes"),
        exclusive=False,
    )


def _warn_skipped(name: tf.Tensor, reason: tf.Tensor) -> bool:
    name, reason = name.numpy().decode("utf-8", "replace"), reason.numpy().decode()
    with _skipped_lock:
        new = name not in _skipped
        _skipped[name] = reason
        count = len(_skipped)
    if new:
        logging.warning("Skipping image %s: %s (%d record(s) skipped so far).", name, reason, count)
    return False


def keep_decodable(ex: Example) -> tf.Tensor:
    """Filter predicate: True for records whose image passes ``image_problem``."""
    problem = image_problem(ex["image"])
    return tf.cond(
        problem == "",
        lambda: tf.constant(True),
        lambda: tf.ensure_shape(tf.py_function(_warn_skipped, [ex["name"], problem], tf.bool), []),
    )


def unknown_dataset_message(name: str) -> str:
    return (
        f"Unknown dataset {name!r}. Supported: {', '.join(map(repr, SPECIAL_DATASETS))}, or any "
        "TFDS image-classification dataset with 'image' and 'label' features, such as "
        f"{', '.join(map(repr, TFDS_EXAMPLES))} (tfds.list_builders() lists them all)."
    )


def prepare_command(name: str, data_dir: str | os.PathLike, manual_dir: str | None = None) -> str:
    """The shell command that prepares ``name`` in ``data_dir``: what error messages print."""
    command = f"python -m resnet_jax.data.prepare {name} --data_dir={data_dir}"
    return f"{command} --manual_dir={manual_dir}" if manual_dir else command


def _manual_dir(config: Any, builder: Any) -> str:
    return config.get("manual_dir") or f"{builder.data_dir_root}/downloads/manual"


def _manual_files_message(config: Any, builder: Any, error: Exception) -> str:
    manual_dir = _manual_dir(config, builder)
    data_dir = str(builder.data_dir_root)
    command = prepare_command(config.dataset, data_dir, manual_dir)  # With its variant.
    if builder.name == "imagenet2012":
        return (
            "ImageNet (imagenet2012) cannot be downloaded automatically. Download "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org and "
            f"put them in {manual_dir} (TFDS expects <data_dir>/downloads/manual/"
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar), then prepare the dataset "
            f"once with:\n  {command}\n(TFDS said: {error})"
        )
    return (
        f"Dataset {config.dataset!r} needs files downloaded by hand into {manual_dir}; then run:\n"
        f"  {command}\n(TFDS said: {error})"
    )


def patch_tfds_importlib_resources() -> None:
    """Lets TFDS 4.9.10 prepare datasets where the ``importlib_resources`` backport is missing.

    TFDS's ``code_path`` uses ``importlib_resources.abc`` but only requires the backport on
    Python < 3.9 (tensorflow/datasets#11212); the standard library's module serves on 3.11.
    """
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import importlib.resources.abc  # noqa: F401  (makes the .abc attribute available)

        sys.modules["importlib_resources"] = importlib.resources


def tfds_builder(config: Any) -> Any:
    """The TFDS builder of ``config.dataset``, prepared (downloaded if allowed) and checked."""
    import tensorflow_datasets as tfds

    patch_tfds_importlib_resources()

    data_dir = config.get("data_dir")
    if data_dir and not epath.Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"data.data_dir {data_dir} does not exist (nothing was created): pass "
            "--config.data.data_dir=DIR naming the directory the datasets are prepared in."
        )
    try:
        file_format = config.get("file_format")  # Only when preparing: the build's format.
        if not file_format and config.get("download") and config.get("pipeline") == "grain":
            file_format = "array_record"  # What Grain reads; TFDS would write TFRecord.
        kwargs = {"file_format": file_format} if file_format else {}
        builder = tfds.builder(config.dataset, data_dir=data_dir, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(unknown_dataset_message(config.dataset)) from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {config.dataset!r} has features {list(features)}; an image "
            "classification dataset with 'image' and 'label' features is needed."
        )
    if builder.is_prepared():
        return builder
    if not config.get("download", False) and not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        command = prepare_command(config.dataset, builder.data_dir_root)  # With its variant.
        raise FileNotFoundError(
            f"TFDS dataset {config.dataset!r} is not prepared in {builder.data_dir_root}: "
            f"download and prepare it once with `{command}`, or rerun with "
            "--config.data.download=True to let the run download it (needs network)."
        )
    require_tensorflow(f"Preparing TFDS dataset {config.dataset!r}")
    download_config = tfds.download.DownloadConfig(manual_dir=config.get("manual_dir"))
    try:
        builder.download_and_prepare(download_config=download_config)
    except AssertionError as e:  # TFDS's way of saying the manual files are missing.
        if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            raise
        raise FileNotFoundError(_manual_files_message(config, builder, e)) from None
    return builder


def tfds_count(builder: Any, split: Any) -> int:
    """Examples in ``split`` from the metadata; counted from the data when the metadata has
    none (as under ``tfds.testing.mock_data``, whose split metadata is empty)."""
    import tensorflow_datasets as tfds

    try:
        n = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        n = 0
    if n > 0:
        return n
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def check_split(builder: Any, split: str, config: Any) -> None:
    """Says which splits exist when ``split`` names one the prepared dataset lacks."""
    available = list(builder.info.splits)
    if not available:  # Mocked or metadata-less datasets accept any split.
        return
    for part in split.split("+"):
        name = part.split("[")[0].strip()
        if name not in available:
            hint = ""
            if builder.name == "imagenet2012" and name == "validation":
                hint = f" Was ILSVRC2012_img_val.tar in {_manual_dir(config, builder)}?"
            raise ValueError(
                f"Dataset {builder.name!r} has no split {name!r} (from {split!r}); it has "
                f"{', '.join(available)}.{hint}"
            )


def tfds_source(
    config: Any, split: str, *, process_index: int, process_count: int, train: bool
) -> Source:
    """This process's part of a TFDS split as encoded image bytes (``SkipDecoding``), in file
    order; a training shard drops the remainder so that all shards are equal. Each record is
    named by its ``file_name`` feature where the dataset has one, else by its TFDS id."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(config)
    check_split(builder, split, config)
    subsplit = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=train
    )
    read_config = tfds.ReadConfig(try_autocache=False, skip_prefetch=True, add_tfds_id=True)
    ds = builder.as_dataset(
        split=subsplit,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    features = builder.info.features
    name_key = next((k for k in ("file_name", "image/filename") if k in features), "tfds_id")
    ds = ds.map(
        lambda ex: {
            "image": ex["image"],
            "label": tf.cast(ex["label"], tf.int32),
            "name": ex[name_key],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    n_local = tfds_count(builder, subsplit)
    n_total = n_local if process_count == 1 else tfds_count(builder, split)
    return Source(
        ds, n_local, n_total, shuffle_buffer=int(config.shuffle_buffer), check=keep_decodable
    )


def _shard(n: int, process_index: int, process_count: int, train: bool) -> tuple[int, int]:
    if train:
        return train_shard(n, process_index, process_count)
    return even_shard(n, process_index, process_count)


def array_source(
    images: np.ndarray, labels: np.ndarray, *, process_index: int, process_count: int, train: bool
) -> Source:
    """In-memory uint8 images (N, H, W, 3) and labels; each process takes a contiguous shard."""
    start, stop = _shard(len(labels), process_index, process_count, train)
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": images[start:stop], "label": np.asarray(labels[start:stop], np.int32)}
    )
    return Source(ds, stop - start, len(labels))


def _read_file(ex: Example) -> Example:
    return {"image": tf.io.read_file(ex["image"]), "label": ex["label"]}


def files_source(
    files: Sequence[str],
    labels: Sequence[int],
    *,
    process_index: int,
    process_count: int,
    train: bool,
) -> Source:
    """Image files with labels; the order is mixed with a fixed seed before sharding so every
    process sees every class, and files are read only after shuffling/skipping."""
    order = np.random.default_rng(_FILE_ORDER_SEED).permutation(len(files))
    start, stop = _shard(len(files), process_index, process_count, train)
    order = order[start:stop]
    ds = tf.data.Dataset.from_tensor_slices(
        {
            # Bytes, not str: file names need not be UTF-8 (os.fsdecode gives them back).
            "image": np.array([os.fsencode(files[i]) for i in order], dtype=bytes),
            "label": np.asarray([labels[i] for i in order], np.int32),
        }
    )
    return Source(ds, stop - start, len(files), load=_read_file)
