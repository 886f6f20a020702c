"""Preprocessing ops: shapes, exact crops, normalisation, eager and inside tf.data."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from resnet_jax.data import pipeline, preprocess, presets  # noqa: E402

SEED = preprocess.example_seed(0, 7)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "array"])
def test_inception_crop_gives_square_float_images_from_any_input(pixels, fmt):
    data = tf.constant(pixels) if fmt == "array" else tf.constant(_encode(pixels, fmt))
    out = preprocess.inception_crop(data, SEED, 32)
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0


def test_fused_jpeg_crop_equals_decode_then_crop(pixels):
    jpeg = tf.constant(_encode(pixels, "JPEG"))
    fused = preprocess.decode_and_random_crop(jpeg, SEED, min_area=0.3)
    whole = tf.io.decode_jpeg(jpeg, channels=3)
    window = preprocess._sample_crop_window(tf.shape(whole), SEED, 0.3)
    y, x, h, w = window.numpy()
    assert fused.shape[:2] == (h, w)
    diff = np.abs(fused.numpy().astype(int) - whole.numpy()[y : y + h, x : x + w])
    # Equal up to chroma upsampling at the window's edge pixels.
    assert np.abs(diff[1:-1, 1:-1]).max() <= 2 and diff.mean() < 1.0


def test_inception_crop_area_stays_in_range(pixels):
    for counter in range(20):
        crop = preprocess.decode_and_random_crop(
            tf.constant(pixels), preprocess.example_seed(1, counter), min_area=0.5
        )
        area = crop.shape[0] * crop.shape[1] / (48 * 64)
        assert 0.5 - 0.05 <= area <= 1.0


def test_random_ops_are_stateless_functions_of_the_seed(pixels):
    data = tf.constant(pixels)
    a = preprocess.inception_crop(data, SEED, 24)
    b = preprocess.inception_crop(data, SEED, 24)
    c = preprocess.inception_crop(data, preprocess.example_seed(0, 8), 24)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


def test_flip_mirrors_or_keeps_the_image(pixels):
    image = tf.constant(pixels)
    outcomes = set()
    for counter in range(16):
        out = preprocess.flip(image, preprocess.example_seed(0, counter)).numpy()
        if np.array_equal(out, pixels):
            outcomes.add("kept")
        else:
            np.testing.assert_array_equal(out, pixels[:, ::-1])
            outcomes.add("flipped")
    assert outcomes == {"kept", "flipped"}


def test_center_crop_equals_the_hand_computed_window():
    # Short side already 64 = 56 / 0.875, so the resize is the identity and the crop is
    # rows 4..60 (round((64 - 56) / 2)) and columns 12..68 (round((80 - 56) / 2)).
    rows, cols = np.meshgrid(np.arange(64), np.arange(80), indexing="ij")
    image = np.stack([rows * 3, cols * 3, (rows + cols) % 256], -1).astype(np.uint8)
    preset = presets.Preset("hand", resize=64, crop=56)
    out = preprocess.preset_transform(preset, "uint8")(tf.constant(image))
    np.testing.assert_array_equal(out.numpy(), image[4:60, 12:68])


def test_short_side_resize_truncates_the_long_side_like_torchvision():
    size = preprocess.short_side_size(tf.constant(375), tf.constant(500), 256).numpy()
    assert tuple(size) == (256, 341)  # int(256 * 500 / 375) = 341
    size = preprocess.short_side_size(tf.constant(500), tf.constant(333), 256).numpy()
    assert tuple(size) == (384, 256)


def test_cifar_crop_is_a_shifted_copy_of_the_padded_image(pixels):
    image = pixels[:32, :32]
    out = preprocess.cifar_crop(tf.constant(image), SEED, 32).numpy()
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)]).astype(np.float32)
    matches = [
        (dy, dx)
        for dy in range(9)
        for dx in range(9)
        if np.array_equal(out, padded[dy : dy + 32, dx : dx + 32])
    ]
    assert len(matches) == 1


def test_normalisation_matches_the_torch_convention():
    image = tf.fill([2, 2, 3], 255.0)
    out = preprocess.finish(image, presets.get_preset("torchvision_v1"), "float32").numpy()
    expected = (1.0 - np.array(presets.IMAGENET_MEAN)) / np.array(presets.IMAGENET_STD)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    caffe = preprocess.finish(tf.zeros([1, 1, 3]), presets.get_preset("keras_caffe"), "float32")
    caffe = caffe.numpy()
    np.testing.assert_allclose(caffe[0, 0], -np.array(presets.CAFFE_BGR_MEAN), rtol=1e-6)


def test_eval_preset_follows_crop_pct_or_the_named_preset():
    config = pipeline.default_data_config()
    assert presets.data_preset(config).resize == 256  # int(224 / 0.875)
    config.preset = "timm_rsb"
    preset = presets.data_preset(config)
    assert (preset.resize, preset.crop, preset.interpolation) == (235, 224, "bicubic")


def _config(**overrides) -> ml_collections.ConfigDict:
    config = pipeline.default_data_config()
    config.image_size = 24
    config.update(overrides)
    return config


@pytest.mark.parametrize("kind", ["inception_crop", "cifar_crop", "resize"])
def test_train_transforms_match_eagerly_and_inside_tf_data(pixels, kind):
    transform = preprocess.make_train_transform(_config(train_preprocess=kind))
    data = tf.constant(_encode(pixels, "JPEG"))
    eager = transform(data, SEED).numpy()
    ds = tf.data.Dataset.from_tensors(data).map(lambda d: transform(d, SEED))
    (graph,) = list(ds.as_numpy_iterator())
    assert eager.shape == (24, 24, 3) and eager.dtype == np.float32
    np.testing.assert_allclose(graph, eager, atol=1e-5)


@pytest.mark.parametrize("kind", ["center_crop", "resize"])
def test_eval_transforms_match_eagerly_and_inside_tf_data(pixels, kind):
    transform = preprocess.make_eval_transform(_config(eval_preprocess=kind))
    data = tf.constant(_encode(pixels, "PNG"))
    ds = tf.data.Dataset.from_tensors(data).map(transform)
    (graph,) = list(ds.as_numpy_iterator())
    np.testing.assert_allclose(graph, transform(data).numpy(), atol=1e-5)
    assert graph.shape == (24, 24, 3)


def test_keras_presets_squash_the_whole_image_to_the_crop(pixels):
    config = _config(preset="keras_caffe", eval_preprocess="center_crop")
    out = preprocess.make_eval_transform(config)(tf.constant(pixels)).numpy()
    # keras.utils.load_img(target_size=...) is Pillow's NEAREST resize.
    squashed = np.asarray(Image.fromarray(pixels).resize((24, 24), Image.Resampling.NEAREST))
    np.testing.assert_allclose(
        out, squashed[..., ::-1] - np.array(presets.CAFFE_BGR_MEAN), atol=1e-4
    )


def test_unknown_preprocess_names_list_the_choices():
    with pytest.raises(ValueError, match="inception_crop, cifar_crop, resize"):
        preprocess.make_train_transform(_config(train_preprocess="random_crop"))
