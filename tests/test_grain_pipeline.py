"""The Grain input pipeline: epochs, shards, exact resume without replay, eval pixels."""

import io
import logging
import os
from unittest import mock

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from resnet_jax import images
from resnet_jax.data import augment, folder, grain_pipeline, pipeline, sources, write_digits_folder

ONE = {"process_index": 0, "process_count": 1}
RANDAUGMENT = "rand-m9-mstd0.5-inc1"


def _config(**fields):
    config = pipeline.default_data_config()
    config.update({"image_size": 16, "workers": 0, "image_dtype": "uint8", **fields})
    return config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 smooth JPEGs (30x40, 4 classes) with distinct content; the folder's root."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(40):
        (root / f"c{i % 4}").mkdir(exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8))
        smooth = coarse.resize((40, 30), Image.Resampling.BICUBIC)  # Photo-like, not noise.
        smooth.save(root / f"c{i % 4}" / f"{i:02d}.jpg", quality=95)
    return root


def _folder(root, **fields):
    return _config(**{"dataset": "folder", "folder": str(root), "eval_fraction": 0.0, **fields})


def test_train_batches_have_the_tfdata_shapes_and_dtypes():
    for dtype in ("uint8", "float32"):
        it = grain_pipeline.create_train_iterator(
            _config(dataset="digits", image_dtype=dtype), global_batch_size=8, seed=0, **ONE
        )
        batch = next(it)
        assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == dtype
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32


def test_every_epoch_is_a_new_permutation_of_every_example():
    source = grain_pipeline.ArraySource(np.zeros((50, 2, 2, 3), np.uint8), np.zeros(50))
    examples = grain_pipeline.TrainExamples(source, None, seed=3, index=0, count=1)
    epoch0 = [examples.record(k) for k in range(50)]
    epoch1 = [examples.record(k) for k in range(50, 100)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(50))
    assert epoch0 != epoch1 and epoch0 != list(range(50))


def test_process_shards_are_disjoint_and_cover_the_epoch():
    source = grain_pipeline.ArraySource(np.zeros((50, 2, 2, 3), np.uint8), np.zeros(50))
    shards = [
        [grain_pipeline.TrainExamples(source, None, 0, p, 3).record(k) for k in range(16)]
        for p in range(3)
    ]
    union = set().union(*map(set, shards))
    assert [len(set(s)) for s in shards] == [16, 16, 16] and len(union) == 48  # 50 % 3 dropped.


@pytest.mark.parametrize("fraction, auto_augment", [(0.1, ""), (0.9, ""), (0.9, RANDAUGMENT)])
def test_resume_gives_the_same_batches_and_reads_nothing_before(
    photos, monkeypatch, fraction, auto_augment
):
    config = _folder(photos, auto_augment=auto_augment)
    whole = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=1, **ONE)
    step = int(fraction * 10)  # 40 images, 10 batches an epoch.
    for _ in range(step):
        next(whole)
    state = whole.get_state()
    assert state["next_example"] == state["epoch_offset"] == step * 4 and state["epoch"] == 0
    read = []
    counting = grain_pipeline.TrainExamples.__call__
    monkeypatch.setattr(
        grain_pipeline.TrainExamples, "__call__", lambda s, k: read.append(k) or counting(s, k)
    )
    resumed = grain_pipeline.create_train_iterator(
        config, global_batch_size=4, seed=1, start_step=step, state=state, **ONE
    )
    for _ in range(12):  # Into the next epoch.
        a, b = next(whole), next(resumed)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert min(read) == step * 4  # No example before the resume position was read.


def test_auto_augment_acts_on_the_cropped_flipped_image_with_the_examples_rng(photos):
    config = _folder(photos, auto_augment=RANDAUGMENT)
    batches = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=5, **ONE)
    got = np.concatenate([next(batches)["image"] for _ in range(3)])
    source = grain_pipeline.make_source(config, train=True)
    plain = grain_pipeline.TrainExamples(
        source, grain_pipeline.TrainTransform(_folder(photos)), seed=5, index=0, count=1
    )
    randaugment = augment.make_train_augment(RANDAUGMENT)
    changed = 0
    for k in range(12):
        rng = np.random.default_rng([5, k])  # The example's generator: crop, flip, then this.
        cropped = plain.transform(source[plain.record(k)][0], rng)
        np.testing.assert_array_equal(got[k], randaugment(cropped, rng))
        np.testing.assert_array_equal(cropped, plain(k)["image"])
        changed += not np.array_equal(got[k], cropped)
    assert changed >= 6  # Two ops at p=0.5 leave about one image in four unchanged.


def test_every_process_resumes_exactly_from_the_one_recorded_state(photos):
    """The state the primary records is each process's own: 3 processes, 2 examples each per
    batch, 13 per epoch; resumed at step 9 (into epoch 1) each continues its own stream."""
    config, step = _folder(photos), 9
    states, after = [], []
    for p in range(3):
        where = {"process_index": p, "process_count": 3}
        whole = grain_pipeline.create_train_iterator(config, global_batch_size=6, seed=2, **where)
        for _ in range(step):
            next(whole)
        states.append(whole.get_state())
        resumed = grain_pipeline.create_train_iterator(
            config, global_batch_size=6, seed=2, start_step=step, state=states[0], **where
        )
        a, b = next(whole), next(resumed)
        np.testing.assert_array_equal(a["image"], b["image"])
        after.append(a["image"])
    assert states[0] == states[1] == states[2]
    assert (states[0]["next_example"], states[0]["epoch"], states[0]["epoch_offset"]) == (18, 1, 5)
    assert not np.array_equal(after[0], after[1])  # Three different streams.


def test_resume_takes_the_recorded_position_when_the_batch_size_changed(photos, caplog):
    config = _folder(photos)
    whole = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=1, **ONE)
    for _ in range(3):
        next(whole)
    state = whole.get_state()  # Example 12; step 3 with 2 per batch would be example 6.
    with caplog.at_level(logging.WARNING):
        resumed = grain_pipeline.create_train_iterator(
            config, global_batch_size=2, seed=1, start_step=3, state=state, **ONE
        )
    assert (
        "The checkpoint's input position (example 12 of each process's stream, 4 per batch) "
        "differs from step 3's with 2 per batch (example 6): resuming at the recorded one"
    ) in caplog.text
    expected = next(whole)["image"]
    got = np.concatenate([next(resumed)["image"], next(resumed)["image"]])
    np.testing.assert_array_equal(expected, got)
    assert resumed.get_state()["next_example"] == 16


def test_a_position_for_another_process_count_falls_back_to_the_step(caplog):
    state = {"pipeline": "grain", "next_example": 12, "local_batch": 4, "process_count": 2}
    with caplog.at_level(logging.WARNING):
        start = grain_pipeline.resume_position(state, start_step=3, local_batch=8, process_count=1)
    assert start == 24
    assert "is not one for 1 process(es): resuming at step 3's position (example 24" in caplog.text
    for absent in (None, {"pipeline": "tfdata"}):  # Older checkpoints, tf.data runs.
        assert (
            grain_pipeline.resume_position(absent, start_step=3, local_batch=8, process_count=1)
            == 24
        )


def test_worker_processes_give_the_same_batches(photos):
    config = _folder(photos, auto_augment=RANDAUGMENT)  # Also picklable with augmentation.
    inline = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **ONE)
    config.workers = 2
    workers = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **ONE)
    for _ in range(3):
        np.testing.assert_array_equal(next(inline)["image"], next(workers)["image"])


def test_a_broken_image_is_replaced_in_training_and_masked_in_eval(tmp_path):
    root = write_digits_folder(tmp_path / "d", per_class=2, image_size=12)
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    data = buffer.getvalue()
    (root / "3" / "zz_truncated.jpg").write_bytes(data[: len(data) // 2])  # Header passes.
    config = _folder(root, image_size=12, eval_folder=str(root))
    batches = grain_pipeline.create_train_iterator(config, global_batch_size=21, seed=0, **ONE)
    assert next(batches)["image"].shape == (21, 12, 12, 3)  # The whole epoch, one replaced.
    evaluated = list(grain_pipeline.create_eval_iterator(config, global_batch_size=8, **ONE))
    masks = np.concatenate([b["mask"] for b in evaluated])
    assert len(masks) == 24 and masks.sum() == 20  # 21 files, one broken, 3 padding.


def test_eval_pixels_are_predicts_and_within_one_of_tfdata(photos, tmp_path):
    config = _folder(photos, image_size=24, eval_fraction=0.25)
    ours = np.concatenate(
        [
            b["image"]
            for b in grain_pipeline.create_eval_iterator(config, global_batch_size=4, **ONE)
        ]
    )
    _, held = pipeline.folder_indices(config)
    preset = pipeline.presets.eval_preset(config)
    assert ours.shape == (8, 24, 24, 3)
    for image, file in zip(ours, held.files, strict=True):
        np.testing.assert_array_equal(image, images.pixels(images.load_rgb(file), preset))
    # Lossless files (TF's and Pillow's JPEG decoders differ by a few levels): tf.data's pixels.
    pngs = _folder(write_digits_folder(tmp_path, per_class=2, image_size=20), eval_fraction=0.5)
    pngs.image_size = 16
    grain_batches = grain_pipeline.create_eval_iterator(pngs, global_batch_size=4, **ONE)
    tf_batches = pipeline.create_eval_iterator(pngs, global_batch_size=4, **ONE)
    ours = np.concatenate([b["image"] for b in grain_batches]).astype(int)
    theirs = np.concatenate([b["image"] for b in tf_batches]).astype(int)
    tf_order = np.random.default_rng(sources._FILE_ORDER_SEED).permutation(10)  # tf.data's mix.
    assert ours.shape == theirs.shape == (12, 16, 16, 3)
    assert np.abs(ours[:10][tf_order] - theirs[:10]).max() <= 1


def test_eval_batches_and_their_padding_have_the_eval_image_size(photos):
    config = _folder(photos, eval_fraction=0.25, eval_image_size=24)  # Trained at 16 px.
    batches = list(grain_pipeline.create_eval_iterator(config, global_batch_size=3, **ONE))
    assert [b["image"].shape for b in batches] == [(3, 24, 24, 3)] * 3
    assert [b["mask"].sum() for b in batches] == [3, 3, 2]  # 8 held-out images, 1 padding.


def test_crop_windows_keep_area_and_aspect_ratio_and_large_ones_decode_scaled(monkeypatch):
    rng = np.random.default_rng(0)
    boxes = np.array([grain_pipeline.inception_window(500, 375, rng, 0.08) for _ in range(500)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (w * h >= 0.079 * 500 * 375).all() and (w / h).min() > 0.74 and (w / h).max() < 1.35
    drafts, draft = [], JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "draft",
        lambda self, mode, size: drafts.append(size) or draft(self, mode, size),
    )
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(buffer, "JPEG")
    out = grain_pipeline.decode_crop(
        buffer.getvalue(), 64, np.random.default_rng(0), min_area=0.9, resample=2
    )
    assert out.size == (64, 64) and len(drafts) == 1  # A 570+ px window: at least 1/2 scale.


def test_a_folder_is_scanned_once_per_process_and_then_read_from_the_workdir(
    photos, tmp_path, monkeypatch
):
    scans = []
    scan = folder.scan_folder
    monkeypatch.setattr(folder, "scan_folder", lambda *a, **k: scans.append(a) or scan(*a, **k))
    folder._scanned.clear()
    config = _folder(photos, eval_fraction=0.25)
    info = pipeline.get_dataset_info(config, cache_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())  # Setup reads the workdir only.
    at = {"cache_dir": str(tmp_path), **ONE}
    next(grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **at))
    list(grain_pipeline.create_eval_iterator(config, global_batch_size=4, **at))
    list(grain_pipeline.create_eval_iterator(config, global_batch_size=4, **at))
    assert len(scans) == 1 and (info.num_train, info.num_eval) == (32, 8)
    assert len(list(tmp_path.glob(f"{folder.INDEX_FILE_PREFIX}*.json"))) == 1
    folder._scanned.clear()  # A new process: the workdir's index, no scan.
    assert pipeline.get_dataset_info(config, cache_dir=str(tmp_path)) == info
    assert len(scans) == 1


def test_a_tfds_array_record_build_is_read_through_data_source(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from tests.tfds_tiny import TinyPhotos

    builder = TinyPhotos(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    config = _config(dataset="tiny_photos", data_dir=str(tmp_path), image_size=8)
    assert grain_pipeline.uses_grain(config)
    source = grain_pipeline.make_source(config, train=True)
    assert isinstance(source, grain_pipeline.TfdsSource) and len(source) == 12
    data, _, _ = source[5]
    assert isinstance(data, bytes) and data[:3] == b"\xff\xd8\xff"  # Encoded, as stored.
    assert sorted(source[i][1] for i in range(12)) == [0] * 6 + [1] * 6
    it = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **ONE)
    assert next(it)["image"].shape == (4, 8, 8, 3)
    evaluated = list(grain_pipeline.create_eval_iterator(config, global_batch_size=3, **ONE))
    assert sum(b["mask"].sum() for b in evaluated) == 4
    tfrecord = TinyPhotos(data_dir=str(tmp_path / "tfrecord"))
    tfrecord.download_and_prepare()
    config.data_dir = str(tmp_path / "tfrecord")
    grain_pipeline._warn_tfdata.cache_clear()
    with mock.patch.object(grain_pipeline.logging, "warning") as warning:
        for _ in range(3):  # Dataset info, train and eval iterators: one warning.
            assert not grain_pipeline.uses_grain(config)  # Kept on tf.data, with the hint.
    assert warning.call_count == 1
    hint = warning.call_args.args[-1]
    assert "`resnet-jax-prepare tiny_photos --data_dir=NEW_DIR`" in hint


def test_the_benchmark_measures_scans_and_cpu_per_image_in_tiny_mode(tmp_path):
    from benchmarks import grain_bench

    record = grain_bench.main(["--tiny", f"--root={tmp_path}", "--parts=scan,cpu"])
    assert record["scan_files"] == 50 and record["scan_s"] > 0 and record["scan_cached_s"] >= 0
    assert record["grain_cpu_ms_per_image"] > 0 and record["tfdata_cpu_ms_per_image"] > 0
    assert record["pillow_decode_cpu_ms_per_image"] > 0
    assert record["pillow_crop_resize_cpu_ms_per_image"] > 0
    photos = sorted((tmp_path / "photos").rglob("*.jpg"))
    assert len(photos) == 40 and Image.open(photos[0]).size == (500, 375)


@pytest.mark.slow
def test_the_benchmark_measures_the_first_step_of_fresh_and_resumed_runs(tmp_path):
    from benchmarks import grain_bench

    record = grain_bench.main(["--tiny", f"--root={tmp_path}", "--parts=steps"])
    for kind in ("tfdata", "grain"):
        for name in ("fresh", "resume_10pct", "resume_90pct"):
            assert record[f"first_step_{kind}_{name}_s"] > 0
    # Each resumed run trained exactly one step past its checkpoint (10 steps per tiny epoch).
    assert sorted(p.name for p in (tmp_path / "steps" / "grain9" / "checkpoints").iterdir()) == [
        "10"
    ]


def test_an_unknown_pipeline_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="Unknown data.pipeline 'torch'; expected one of grain, "):
        grain_pipeline.uses_grain(_config(dataset="digits", pipeline="torch"))
    assert grain_pipeline.uses_grain(_config(dataset="digits"))
    assert not grain_pipeline.uses_grain(_config(dataset="digits", pipeline="tfdata"))


def test_a_dataset_prepared_by_download_is_built_as_array_record_for_grain(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from tests.tfds_tiny import TinyPhotos  # noqa: F401  (registers tiny_photos)

    config = _config(dataset="tiny_photos", data_dir=str(tmp_path), image_size=8, download=True)
    assert grain_pipeline.uses_grain(config)  # Prepared here, as ArrayRecord: Grain reads it.
    assert list(tmp_path.rglob("*.array_record*")) and not list(tmp_path.rglob("*.tfrecord*"))


def test_workers_minus_one_starts_one_per_core_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 96)  # The machine's, not this process's share.
    assert grain_pipeline._workers(_config(workers=-1)) == 3
    assert grain_pipeline._workers(_config(workers=0)) == 0
    assert grain_pipeline._workers(_config(workers=2)) == 2


def test_closing_an_iterator_stops_its_worker_processes(photos):
    """The loop closes its train and eval iterators: no worker outlives the run."""
    import multiprocessing

    config = _folder(photos, workers=2, eval_folder=str(photos))
    train = grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **ONE)
    evaluation = grain_pipeline.create_eval_iterator(config, global_batch_size=4, **ONE)
    assert next(train)["image"].shape == next(evaluation)["image"].shape == (4, 16, 16, 3)
    assert len(multiprocessing.active_children()) >= 2
    grain_pipeline.close(train)
    grain_pipeline.close(evaluation)
    grain_pipeline.close(iter([]))  # tf.data's and plain iterators: nothing to stop.
    assert multiprocessing.active_children() == []
