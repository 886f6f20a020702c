"""One preprocessing per preset: the tf.data eval transform and predict's Pillow path give the
same pixels on real photographs, for every preset and every allowed resize filter."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
datasets = pytest.importorskip("sklearn.datasets")

from resnet_jax import images, spec  # noqa: E402
from resnet_jax.data import grain_pipeline, pipeline, preprocess, presets  # noqa: E402
from resnet_jax.training.validate import ConfigError, check_config  # noqa: E402
from tests.recipes import load_config  # noqa: E402


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """scikit-learn's two sample photographs (427 x 640 RGB)."""
    return datasets.load_sample_images().images


def _both(photo: np.ndarray, preset: presets.Preset, image_dtype: str):
    ours = preprocess.preset_transform(preset, image_dtype)(tf.constant(photo)).numpy()
    return ours, Image.fromarray(photo)


@pytest.mark.parametrize("method", presets.INTERPOLATIONS)
@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_eval_and_predict_pixels_agree_within_one_level(photos, name, method):
    preset = dataclasses.replace(presets.get_preset(name), interpolation=method)
    for photo in photos:
        ours, img = _both(photo, preset, "uint8")
        theirs = images.pixels(img, preset)
        assert ours.shape == theirs.shape == (preset.crop, preset.crop, 3)
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() <= 1, (name, method, diff.max())
        # Off by one at most, in under a fifth of the values: Pillow rounds between passes.
        assert diff.mean() < 0.2


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_eval_and_predict_model_inputs_agree_within_one_level(photos, name):
    preset = presets.get_preset(name)
    one_level = np.abs(  # One uint8 level in model-input units, per channel.
        presets.normalize(np.ones(3), preset) - presets.normalize(np.zeros(3), preset)
    )
    for photo in photos:
        ours, img = _both(photo, preset, "float32")
        # The float32 pipeline skips the final rounding: half a level more than above.
        assert np.all(np.abs(ours - images.preprocess(img, preset)) <= 1.5 * one_level + 1e-5)


@pytest.mark.parametrize("kind", presets.EVAL_PREPROCESS)
def test_the_recorded_eval_preset_is_the_one_both_pipelines_compute(photos, kind, monkeypatch):
    config = load_config("default")
    config.data.update(image_size=64, eval_preprocess=kind, image_dtype="uint8")
    info = pipeline.DatasetInfo(1000, 1_281_167, 50_000, None)
    run = spec.resolve(config, num_devices=1, process_count=1, dataset_info=info)
    recorded = presets.Preset.from_dict(run.record()["derived"]["preset"])
    tfdata = []  # The preset tf.data's eval transform is built from.
    spy = lambda preset, dtype: tfdata.append(preset) or original(preset, dtype)  # noqa: E731
    original = preprocess.preset_transform
    monkeypatch.setattr(preprocess, "preset_transform", spy)
    tf_transform = preprocess.make_eval_transform(run.config.data)
    grain_transform = grain_pipeline.EvalTransform(run.config.data)
    assert tfdata == [grain_transform.preset] and grain_transform.preset == recorded
    squash = {"resize": 64, "resize_mode": "squash"}  # The whole photo, as train's 'resize'.
    expected = {"center_crop": {"resize": 73, "resize_mode": "short_side"}, "resize": squash}
    assert {"resize": recorded.resize, "resize_mode": recorded.resize_mode} == expected[kind]
    for photo in photos:
        ours = images.pixels(Image.fromarray(photo), run.preset)
        np.testing.assert_array_equal(grain_transform(photo), ours)
        tf_pixels = tf_transform(tf.constant(photo)).numpy()
        assert tf_pixels.shape == ours.shape == (64, 64, 3)
        assert np.abs(tf_pixels.astype(int) - ours.astype(int)).max() <= 1
        if kind == "resize":
            squashed = Image.fromarray(photo).resize((64, 64), Image.Resampling.BILINEAR)
            np.testing.assert_array_equal(ours, np.asarray(squashed))


def test_nearest_picks_the_same_source_pixels_as_pillow():
    # 640 -> 224 hits exact source positions ((2i + 1) * 640 / 448 = 10 at i = 3) that float32
    # arithmetic rounds the other way: TF's own nearest resize differs here, ours does not.
    ramp = np.broadcast_to(np.arange(640, dtype=np.float32) % 256, (4, 640))[..., None]
    ramp = np.repeat(ramp, 3, -1).astype(np.uint8)
    ours = preprocess.resize(tf.constant(ramp), (4, 224), "nearest").numpy()
    theirs = np.asarray(Image.fromarray(ramp).resize((224, 4), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(ours, theirs)


def test_short_side_resize_is_exact_where_float_scaling_rounds_down():
    # 200 / 300 * 450 is 299.99999999999994 in float64; torchvision's int(200 * 450 / 300) = 300.
    size = preprocess.short_side_size(tf.constant(450), tf.constant(300), 200).numpy()
    assert tuple(size) == (300, 200)


@pytest.mark.parametrize("method", ["area", "lanczos5"])
def test_unsupported_resize_methods_are_refused_naming_the_allowed_ones(method):
    allowed = "bilinear, bicubic, nearest, lanczos3"
    with pytest.raises(ValueError) as error:
        presets.Preset("mine", resize=256, crop=224, interpolation=method)
    assert str(error.value) == (
        f"Unknown preset 'mine' interpolation {method!r}; expected one of {allowed}."
    )
    data = pipeline.default_data_config()
    data.interpolation = method
    with pytest.raises(ValueError, match=f"^Unknown data.interpolation '{method}'; .*{allowed}"):
        presets.data_preset(data)
    recorded = {**presets.get_preset("timm_rsb").to_dict(), "interpolation": method}
    with pytest.raises(ValueError, match=f"^Unknown preset 'timm_rsb' interpolation '{method}'"):
        presets.Preset.from_dict(recorded)  # As a checkpoint's metadata would carry it.
    config = load_config("quickstart")
    config.data.interpolation = method
    with pytest.raises(ConfigError) as error:
        check_config(config, num_devices=8, process_count=1)
    assert str(error.value) == (
        f"Invalid config:\n  - data.interpolation {method!r} is not one of "
        "('bilinear', 'bicubic', 'nearest', 'lanczos3')."
    )
