"""data.image_dtype='uint8': the pipeline ships pixels (a quarter of the bytes) and the steps
normalise them on the device; the results match the float32 pipeline."""

import jax
import numpy as np
import pytest
from recipes import load_config

from resnet_jax.build import build_model
from resnet_jax.data import pipeline, presets
from resnet_jax.parallel import create_data_parallel
from resnet_jax.training import optim, steps, validate
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.state import create_train_state

pytestmark = pytest.mark.usefixtures("fast_compile")


def _digits(**overrides):
    config = pipeline.default_data_config()
    config.update(
        dataset="digits", image_size=16, train_preprocess="inception_crop", private_threads=0
    )
    config.update(overrides)
    return config


@pytest.mark.parametrize("preset", [None, "torchvision_v1", "keras_caffe", "keras_tf"])
def test_uint8_batches_are_the_float_batches_before_normalisation(preset):
    kw = dict(global_batch_size=16, process_index=0, process_count=1)
    as_float = _digits(preset=preset)
    as_uint8 = _digits(preset=preset, image_dtype="uint8")
    a = next(pipeline.create_train_iterator(as_float, seed=3, **kw))
    b = next(pipeline.create_train_iterator(as_uint8, seed=3, **kw))
    assert a["image"].dtype == np.float32 and b["image"].dtype == np.uint8
    assert b["image"].nbytes * 4 == a["image"].nbytes
    np.testing.assert_array_equal(a["label"], b["label"])
    preset_obj = presets.data_preset(as_uint8)
    on_device = np.asarray(steps.model_inputs(jax.numpy.asarray(b["image"]), preset_obj))
    # Pixels are rounded to whole values: at most half a grey level apart.
    half_level = {"torch": 0.5 / 255.0 / min(preset_obj.std), "tf": 0.5 / 127.5, "caffe": 0.5}[
        preset_obj.mode
    ]
    assert np.abs(on_device - a["image"]).max() <= half_level * (1 + 1e-4)

    ev_a = list(pipeline.create_eval_iterator(as_float, **kw))
    ev_b = list(pipeline.create_eval_iterator(as_uint8, **kw))
    assert len(ev_a) == len(ev_b) and ev_b[-1]["image"].dtype == np.uint8
    np.testing.assert_array_equal(ev_a[-1]["mask"], ev_b[-1]["mask"])
    last = np.asarray(steps.model_inputs(jax.numpy.asarray(ev_b[-1]["image"]), preset_obj))
    real = ev_b[-1]["mask"] > 0
    assert np.abs(last[real] - ev_a[-1]["image"][real]).max() <= half_level * (1 + 1e-4)


def test_synthetic_uint8_pixels_need_no_tensorflow_and_pad_with_zeros():
    config = _digits(dataset="synthetic", image_dtype="uint8", image_size=8)
    config.update(num_classes=5, synthetic_size=10, synthetic_eval_size=7)
    kw = dict(global_batch_size=4, process_index=0, process_count=1)
    batch = next(pipeline.create_train_iterator(config, seed=0, **kw))
    assert batch["image"].dtype == np.uint8 and batch["image"].max() > 200
    last = list(pipeline.create_eval_iterator(config, **kw))[-1]
    assert last["image"].dtype == np.uint8 and not last["image"][3].any()


def test_the_steps_normalise_uint8_on_the_device_as_the_host_would():
    config = load_config("quickstart")
    config.data.image_size = 8
    config.model.kwargs = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
    parallel = create_data_parallel("shard_map", devices=jax.devices()[:2])
    model = build_model(config, 10, parallel=parallel)
    tx = optim.create_optimizer(config.optimizer, lambda step: 0.1)
    state = parallel.replicate(create_train_state(model, tx, seed=0, image_shape=(8, 8, 3)))
    preset = presets.get_preset("torchvision_v1")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    normalised = presets.normalize(pixels.astype(np.float32), preset).astype(np.float32)

    train = steps.compile_train_step(
        parallel, model=model, tx=tx, preset=preset, donate_state=False
    )
    host = {"image": normalised, "label": labels}
    _, m_host = train(state, parallel.shard_batch(host))
    _, m_dev = train(state, parallel.shard_batch({"image": pixels, "label": labels}))
    assert float(m_dev["loss"]) == pytest.approx(float(m_host["loss"]), rel=1e-5)
    assert float(m_dev["top1"]) == float(m_host["top1"])

    mask = np.ones(8, np.float32)
    ev = steps.compile_eval_step(parallel, model=model, preset=preset)
    e_host = ev(state, parallel.shard_batch({**host, "mask": mask}))
    e_dev = ev(state, parallel.shard_batch({"image": pixels, "label": labels, "mask": mask}))
    assert float(e_dev["loss"]) == pytest.approx(float(e_host["loss"]), rel=1e-5)

    no_preset = steps.compile_eval_step(parallel, model=model)
    with pytest.raises(ValueError, match="uint8 pixels .* without a preset"):
        no_preset(state, parallel.shard_batch({"image": pixels, "label": labels, "mask": mask}))


def test_an_unknown_image_dtype_is_a_config_error():
    config = load_config("quickstart")
    config.data.image_dtype = "float16"
    with pytest.raises(validate.ConfigError, match="data.image_dtype 'float16'"):
        validate.check_config(config, num_devices=8, process_count=1)


def test_a_uint8_run_learns_as_the_float32_run_does(tmp_path):
    def run(image_dtype):
        config = load_config("quickstart")
        config.data.image_size = 16
        config.data.image_dtype = image_dtype
        config.model.kwargs = {
            "stage_sizes": (1, 1, 1),
            "stage_widths": (8, 16, 16),
            "stem_width": 8,
        }
        config.batch_size, config.eval_batch_size = 32, 64
        config.num_train_steps, config.eval_every_steps = 120, 120
        config.log_every_steps, config.checkpoint_every_steps = 60, 120
        config.optimizer.warmup_epochs = 0.2
        config.progress_bar = config.plot = False
        return train_and_evaluate(config, str(tmp_path / image_dtype))

    a, b = run("float32"), run("uint8")
    assert a["step"] == b["step"] == 120
    assert b["eval"]["count"] == a["eval"]["count"] == 359
    assert b["eval"]["top1"] > 0.5, b["eval"]  # 10 classes: chance is 0.1
    # The same crops, flips and order; only the rounding of the pixels differs.
    assert abs(a["eval"]["top1"] - b["eval"]["top1"]) < 0.05, (a["eval"], b["eval"])
