"""The training loop's view of the data: shapes, determinism, exact resume, exact-once eval."""

import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from resnet_jax import spec
from resnet_jax.data import digits, pipeline


def _digits_config(**overrides) -> ml_collections.ConfigDict:
    config = pipeline.default_data_config()
    config.dataset = "digits"
    config.image_size = 16
    config.train_preprocess = "cifar_crop"
    config.eval_preprocess = "resize"
    config.private_threads = 0
    config.update(overrides)
    return config


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])


def test_importing_the_data_package_does_not_import_tensorflow():
    code = "import sys, resnet_jax.data; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_config_lists_every_field_the_pipeline_reads():
    config = pipeline.default_data_config()
    for field in (
        "dataset",
        "data_dir",
        "folder",
        "eval_folder",
        "train_split",
        "eval_split",
        "image_size",
        "train_preprocess",
        "eval_preprocess",
        "crop_pct",
        "min_area",
        "interpolation",
        "mean",
        "std",
        "preset",
        "flip",
        "shuffle_buffer",
        "cache",
        "num_parallel_calls",
        "prefetch",
        "private_threads",
        "num_classes",
        "synthetic_size",
        "image_dtype",
        "deterministic",
    ):
        assert field in config


def test_train_batches_have_the_promised_shapes_and_dtypes():
    it = pipeline.create_train_iterator(
        _digits_config(), global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    batch = next(it)
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= set(range(10))


def test_each_process_gets_its_share_of_the_global_batch():
    it = pipeline.create_train_iterator(
        _digits_config(), global_batch_size=8, seed=0, process_index=1, process_count=2
    )
    assert next(it)["image"].shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.create_train_iterator(
            _digits_config(), global_batch_size=7, seed=0, process_index=0, process_count=2
        )


def test_same_seed_same_batches_and_another_seed_other_batches():
    make = lambda seed: pipeline.create_train_iterator(  # noqa: E731
        _digits_config(), global_batch_size=16, seed=seed, process_index=0, process_count=1
    )
    a, b, c = _take(make(3), 3), _take(make(3), 3), _take(make(4), 3)
    _assert_same_batches(a, b)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_a_global_tensorflow_seed_changes_nothing():
    """keras.utils.set_random_seed(0) used to break the pipeline (a tensor op seed next to a
    zero graph seed), and any global seed changed the order: now only `seed` decides."""
    import tensorflow as tf

    make = lambda: _take(  # noqa: E731
        pipeline.create_train_iterator(
            _digits_config(), global_batch_size=16, seed=3, process_index=0, process_count=1
        ),
        2,
    )
    reference = make()
    try:
        for global_seed in (0, 5):
            tf.random.set_seed(global_seed)
            _assert_same_batches(make(), reference)
    finally:
        tf.random.set_seed(None)


def test_resume_reproduces_the_uninterrupted_stream_across_an_epoch_boundary():
    # 1438 training digits / 256 per step: epoch 1 starts inside step 5.
    config = _digits_config()
    kwargs = dict(global_batch_size=256, seed=1, process_index=0, process_count=1)
    full = _take(pipeline.create_train_iterator(config, **kwargs), 8)
    resumed = _take(pipeline.create_train_iterator(config, start_step=4, **kwargs), 4)
    _assert_same_batches(full[4:], resumed)


def test_each_epoch_is_a_new_permutation_of_the_whole_shard():
    config = _digits_config(train_preprocess="resize", flip=False)
    n = digits.num_examples("train")  # 1438 = 2 * 719
    it = pipeline.create_train_iterator(
        config, global_batch_size=719, seed=0, process_index=0, process_count=1
    )
    epochs = [np.concatenate([next(it)["label"] for _ in range(2)]) for _ in range(2)]
    expected = np.sort(digits.load_digits_split("train", 16)[1])
    for labels in epochs:
        assert len(labels) == n
        np.testing.assert_array_equal(np.sort(labels), expected)
    assert not np.array_equal(epochs[0], epochs[1])


def test_unordered_training_stream_holds_the_same_examples():
    """deterministic=False may reorder examples between runs, never change which are seen."""
    config = _digits_config(train_preprocess="resize", flip=False)
    kw = dict(global_batch_size=719, seed=0, process_index=0, process_count=1)
    ordered = _take(pipeline.create_train_iterator(config, **kw), 2)
    config.deterministic = False
    unordered = _take(pipeline.create_train_iterator(config, **kw), 2)

    def fingerprints(batches):
        images = np.concatenate([b["image"] for b in batches])
        labels = np.concatenate([b["label"] for b in batches])
        pixels = [np.round(x, 4).tobytes() for x in images]
        return list(zip(labels.tolist(), pixels, strict=True))

    every = set(fingerprints(ordered))  # one epoch: each training digit once
    seen = fingerprints(unordered)
    assert len(seen) == digits.num_examples("train") and set(seen) <= every
    # Only examples still in flight at the epoch's end may be overtaken by the next epoch's.
    assert len(set(seen)) >= len(every) - 8


def _masked_in(batches):
    images, labels = [], []
    for b in batches:
        keep = b["mask"] == 1.0
        images.extend(x.tobytes() for x in b["image"][keep])
        labels.extend(b["label"][keep].tolist())
    return images, labels


def test_eval_gives_every_example_exactly_once_across_two_processes():
    config = _digits_config()
    n = digits.num_examples("eval")  # 359, not a multiple of the batch of 2 x 16.
    per_process = [
        list(
            pipeline.create_eval_iterator(
                config, global_batch_size=32, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) == 12  # ceil(ceil(359 / 2) / 16)
    for batches in per_process:
        for b in batches:
            assert b["image"].shape == (16, 16, 16, 3) and b["mask"].dtype == np.float32
            assert set(np.unique(b["mask"])) <= {0.0, 1.0}
    single = list(
        pipeline.create_eval_iterator(
            config, global_batch_size=32, process_index=0, process_count=1
        )
    )
    one_images, one_labels = _masked_in(single)
    images0, labels0 = _masked_in(per_process[0])
    images1, labels1 = _masked_in(per_process[1])
    assert len(one_images) == len(images0) + len(images1) == n
    assert sorted(one_images) == sorted(images0 + images1)
    assert sorted(labels0 + labels1) == sorted(digits.load_digits_split("eval", 16)[1].tolist())
    assert single[-1]["mask"].sum() == n - 11 * 32


def test_synthetic_data_is_fixed_by_the_seed_and_needs_no_tensorflow():
    code = (
        "import sys\n"
        "from resnet_jax.data import pipeline\n"
        "c = pipeline.default_data_config(); c.dataset = 'synthetic'; c.image_size = 8\n"
        "c.num_classes = 5; c.synthetic_size = 10; c.synthetic_eval_size = 7\n"
        "kw = dict(global_batch_size=4, process_index=0, process_count=1)\n"
        "make = lambda s: pipeline.create_train_iterator(c, seed=0, start_step=s, **kw)\n"
        "a = [next(make(s)) for s in (0, 3)]\n"
        "it = pipeline.create_train_iterator(c, seed=0, **kw); b = [next(it) for _ in range(4)]\n"
        "assert (a[1]['image'] == b[3]['image']).all() and (a[1]['label'] == b[3]['label']).all()\n"
        "ev = list(pipeline.create_eval_iterator(c, **kw))\n"
        "assert len(ev) == 2 and ev[1]['mask'].tolist() == [1, 1, 1, 0]\n"
        "assert a[0]['image'].shape == (4, 8, 8, 3) and a[0]['label'].max() < 5\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    partial = {"dataset": "synthetic", "synthetic_size": 10}  # Completed at its entry.
    info = pipeline.get_dataset_info(spec.complete({"data": partial}).data)
    assert info == pipeline.DatasetInfo(1000, 10, 256, None)


def test_digits_info_says_ten_classes_and_the_split_sizes():
    info = pipeline.get_dataset_info(_digits_config())
    assert info == pipeline.DatasetInfo(10, 1438, 359, tuple("0123456789"))


def test_unknown_dataset_lists_the_supported_ones():
    with pytest.raises(ValueError, match="'digits'.*'imagenet2012'"):
        pipeline.get_dataset_info(spec.complete({"data": {"dataset": "imagenet2021"}}).data)
