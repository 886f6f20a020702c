"""scikit-learn's handwritten digits as the offline quickstart dataset."""

import numpy as np
import pytest

from resnet_jax.data import digits


def test_split_sizes_cover_all_1797_digits_without_overlap():
    train, held = digits.split_indices("train"), digits.split_indices("eval")
    assert (len(train), len(held)) == (1438, 359)
    assert not set(train) & set(held)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(1797))


def test_eval_split_is_stratified_and_fixed():
    _, labels = digits.load_digits_split("eval", 8)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of 174..183 per class.
    np.testing.assert_array_equal(digits.split_indices("eval"), digits.split_indices("eval"))


def test_images_are_rgb_uint8_at_the_requested_size():
    images, labels = digits.load_digits_split("train", 32)
    assert images.shape == (1438, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # Grey copied to RGB.
    assert digits.CLASS_NAMES == tuple("0123456789")


def test_unknown_split_lists_the_known_ones():
    with pytest.raises(ValueError, match="train, eval, all"):
        digits.split_indices("test")
