"""RandAugment, TrivialAugmentWide, Random Erasing and Mixup/CutMix against timm/torchvision.

Each op at fixed parameters on scikit-learn's two sample photographs gives timm's (or, for
TrivialAugmentWide, which timm does not ship, torchvision's) pixels exactly; the float ops
(erasing, mixing) agree within 1e-6.
"""

import importlib.util
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

if importlib.util.find_spec("timm") is None:  # imported through the torchvision shim below
    pytest.skip("timm is not installed", allow_module_level=True)

from resnet_jax.convert.torch_compat import import_timm  # noqa: E402
from resnet_jax.data import augment  # noqa: E402
from resnet_jax.training import erasing, mixup  # noqa: E402

timm = import_timm()
import torch  # noqa: E402
from timm.data import auto_augment as timm_aa  # noqa: E402
from timm.data import mixup as timm_mixup  # noqa: E402
from timm.data import random_erasing as timm_erasing  # noqa: E402
from torchvision.transforms import InterpolationMode, TrivialAugmentWide  # noqa: E402
from torchvision.transforms import autoaugment as tv_aa  # noqa: E402

BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
NAMES = sorted(set(augment.RAND_OPS) | set(augment.RAND_OPS_INCREASING))


@pytest.fixture(scope="module")
def photos():
    """Crops (160 x 200) of the two photographs scikit-learn ships: china.jpg, flower.jpg."""
    return [np.ascontiguousarray(im[120:280, 200:400]) for im in load_sample_images().images]


@pytest.mark.parametrize("name", NAMES)
def test_rand_augment_op_gives_timms_pixels(name, photos, monkeypatch):
    hparams = {"img_mean": augment.IMAGENET_FILL, "translate_const": 250}
    for photo in photos:
        for magnitude in (9, 7, 5.3):
            for negate in (False, True):
                for resample in (BILINEAR, BICUBIC):
                    # timm's _randomly_negate negates when random.random() > 0.5.
                    monkeypatch.setattr(random, "random", lambda n=negate: 1.0 if n else 0.0)
                    op = timm_aa.AugmentOp(
                        name, 1.0, magnitude, {**hparams, "interpolation": resample}
                    )
                    expected = np.asarray(op(Image.fromarray(photo)))
                    ours = augment.rand_augment_op(
                        Image.fromarray(photo), name, magnitude, negate, resample
                    )
                    np.testing.assert_array_equal(np.asarray(ours), expected)


def test_rand_augment_changes_pixels_unless_an_op_is_identity(photos):
    """The parity above is not vacuous: each op at m=9 moves pixels of one photo or the other."""
    for name in NAMES:
        outs = [augment.rand_augment_op(Image.fromarray(p), name, 9, True, 2) for p in photos]
        assert any((np.asarray(o) != p).any() for o, p in zip(outs, photos, strict=True)), name


def test_trivial_augment_wide_space_is_torchvisions():
    theirs = TrivialAugmentWide()._augmentation_space(31)
    ours = augment.trivial_augment_space(31)
    assert list(ours) == list(theirs)
    for name, (bins, signed) in ours.items():
        np.testing.assert_array_equal(bins, theirs[name][0].numpy(), err_msg=name)
        assert signed == theirs[name][1], name


@pytest.mark.parametrize("name", list(augment.trivial_augment_space()))
def test_trivial_augment_wide_op_gives_torchvisions_pixels(name, photos):
    bins, signed = augment.trivial_augment_space()[name]
    for photo in photos:
        for m in [float(bins[i]) for i in (1, 15, 30)] if bins.ndim else [0.0]:
            for sign in (1.0, -1.0) if signed else (1.0,):
                image = Image.fromarray(photo)
                expected = tv_aa._apply_op(image, name, sign * m, InterpolationMode.NEAREST, None)
                ours = augment.trivial_augment_op(image, name, sign * m)
                np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))


@pytest.mark.parametrize("spec", ["rand-m7-mstd0.5-inc1", "rand-m9-n3-mstd101", "ta_wide"])
def test_augment_is_a_function_of_seed_and_position(spec, photos):
    fn = augment.make_train_augment(spec)
    runs = {
        (seed, pos): [fn(p, augment.example_rng(seed, pos)) for p in photos for _ in range(4)]
        for seed, pos in [(0, 5), (0, 5), (0, 6), (1, 5)]
    }
    same = runs[(0, 5)]
    np.testing.assert_array_equal(np.stack(same), np.stack(runs[(0, 5)]))
    for other in ((0, 6), (1, 5)):
        assert (np.stack(same) != np.stack(runs[other])).any()
    assert all(out.dtype == np.uint8 and out.shape == photos[0].shape for out in same)


def test_rand_augment_spec_strings_parse_as_timm():
    assert augment.parse_rand_augment("rand-m7-mstd0.5-inc1") == dict(
        magnitude=7.0,
        num_layers=2,
        magnitude_std=0.5,
        magnitude_max=None,
        prob=0.5,
        increasing=True,
    )
    parsed = augment.parse_rand_augment("rand-m9-n3-mstd101-mmax12-p0.7")
    assert parsed["magnitude_std"] == float("inf") and parsed["num_layers"] == 3
    assert parsed["magnitude_max"] == 12 and parsed["prob"] == 0.7 and not parsed["increasing"]


def test_bad_augment_specs_and_images_say_what_to_write():
    with pytest.raises(ValueError, match=r"^Unknown RandAugment section 'n2\.5' in 'rand-n2\.5'"):
        augment.make_train_augment("rand-n2.5")
    with pytest.raises(ValueError, match=r"^Unknown augmentation 'autoaug'; expected 'rand-"):
        augment.make_train_augment("autoaug")
    with pytest.raises(ValueError, match=r"^Unknown augmentation interpolation 'lanczos'"):
        augment.make_train_augment("ta_wide", interpolation="lanczos")
    with pytest.raises(ValueError, match=r"uint8 RGB images of shape \(H, W, 3\); got float32"):
        augment.make_train_augment("ta_wide")(
            np.zeros((4, 4, 3), np.float32), np.random.default_rng()
        )


def _normalised(photos, n=4, size=(48, 64)):
    crops = [p[i * 20 : i * 20 + size[0], : size[1]] for p in photos for i in range(n // 2)]
    return ((np.stack(crops) / 255.0 - 0.45) / 0.225).astype(np.float32)  # NHWC


@pytest.mark.parametrize("mode", erasing.ERASING_MODES)
def test_random_erasing_at_a_fixed_box_gives_timms_pixels(mode, photos, monkeypatch):
    image = _normalised(photos)[:1]
    top, left, h, w = 7, 11, 20, 15
    monkeypatch.setattr(random, "random", lambda: 0.0)  # always erase
    monkeypatch.setattr(random, "randint", lambda a, b: {image.shape[1] - h: top}.get(b, left))
    area = image.shape[1] * image.shape[2]
    # Area and aspect draws that give exactly an h x w box (h * w / area, h / w).
    draws = iter([h * w / area, np.log(h / w)])
    monkeypatch.setattr(random, "uniform", lambda a, b: next(draws))
    torch.manual_seed(0)
    shape = (3, h, w) if mode == "pixel" else (3, 1, 1)
    noise = torch.empty(shape).normal_() if mode != "const" else torch.zeros(shape)
    torch.manual_seed(0)
    theirs = timm_erasing.RandomErasing(1.0, mode=mode, device="cpu")(
        torch.from_numpy(image[0].transpose(2, 0, 1).copy())
    )
    values = np.zeros_like(image)
    values[:, top : top + h, left : left + w] = noise.numpy().transpose(1, 2, 0)
    ours = erasing.erase(jnp.asarray(image), jnp.array([[top, left, h, w]]), jnp.asarray(values))
    np.testing.assert_array_equal(np.asarray(ours)[0], theirs.numpy().transpose(1, 2, 0))
    assert (np.asarray(ours) != image).any()


def test_random_erasing_box_search_is_timms(monkeypatch):
    """The same uniform draws give timm's box: area, aspect, rounding, fit test, retries."""
    height, width = 20, 30
    uniforms = np.random.default_rng(0).random((40, erasing.ATTEMPTS, 4))
    kwargs = dict(min_area=0.1, max_area=0.9, min_aspect=0.3)
    ours = np.asarray(erasing.boxes_from_uniforms(jnp.asarray(uniforms), height, width, **kwargs))
    monkeypatch.setattr(random, "random", lambda: 0.0)
    retried = 0
    for u, box in zip(uniforms, ours, strict=True):
        calls, picks = [], []

        def uniform(a, b, u=u, calls=calls):
            calls.append(len(calls))  # two draws (area, aspect) per attempt
            return a + (b - a) * u[(len(calls) - 1) // 2, (len(calls) - 1) % 2]

        def randint(a, b, u=u, calls=calls, picks=picks):
            picks.append(a + int(np.floor(u[(len(calls) - 1) // 2, 2 + len(picks)] * (b - a + 1))))
            return picks[-1]

        monkeypatch.setattr(random, "uniform", uniform)
        monkeypatch.setattr(random, "randint", randint)
        ones = torch.ones(1, height, width)
        timm_erasing.RandomErasing(1.0, mode="const", device="cpu", **kwargs)(ones)
        rows, cols = np.nonzero(ones[0].numpy() == 0)
        expected = [rows.min(), cols.min(), np.ptp(rows) + 1, np.ptp(cols) + 1] if picks else None
        assert (list(box) == expected) if picks else box[2] == box[3] == 0, (box, expected)
        retried += len(calls) > 2 and bool(picks)
    assert retried >= 5  # boxes found after a first attempt that did not fit


def test_random_erasing_is_a_function_of_the_key(photos):
    images = jnp.asarray(_normalised(photos, n=8))
    a, b = (erasing.random_erasing(jax.random.key(k), images, probability=0.5) for k in (3, 3))
    c = erasing.random_erasing(jax.random.key(4), images, probability=0.5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(a) != np.asarray(c)).any()
    erased = (np.asarray(a) != np.asarray(images)).any(axis=(1, 2, 3))
    assert 0 < erased.sum() < 8  # some images erased, some left: probability 0.5 over 8
    untouched = erasing.random_erasing(jax.random.key(3), images, probability=0.0)
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(images))
    with pytest.raises(ValueError, match=r"^Unknown Random Erasing mode 'noise'; expected one of"):
        erasing.random_erasing(jax.random.key(0), images, mode="noise")


@pytest.mark.parametrize(
    "lam, use_cutmix, centre",
    [(0.3, False, (0, 0)), (0.6, True, (20, 30)), (0.5, True, (1, 62)), (0.2, True, (47, 3))],
    ids=["mixup", "cutmix", "cutmix-clipped-right", "cutmix-clipped-bottom"],
)
def test_mixup_and_cutmix_at_a_fixed_lambda_and_box_give_timms_batch(
    lam, use_cutmix, centre, photos, monkeypatch
):
    images, labels = _normalised(photos), np.array([3, 1, 4, 1])
    mix = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    monkeypatch.setattr(mix, "_params_per_batch", lambda: (lam, use_cutmix))
    monkeypatch.setattr(np.random, "randint", lambda a, b, size=None: centre[0 if b == 48 else 1])
    x, y = mix(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))
    ours_x, ours_y = mixup.apply_mix(
        jnp.asarray(images),
        jnp.asarray(labels),
        jnp.float32(lam),
        jnp.asarray(use_cutmix),
        tuple(map(jnp.int32, centre)),
        num_classes=10,
        label_smoothing=0.1,
    )
    np.testing.assert_allclose(np.asarray(ours_x), x.numpy().transpose(0, 2, 3, 1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours_y), y.numpy(), atol=1e-6)
    assert (np.asarray(ours_x) != images).any()


def test_mix_is_a_function_of_the_key_and_keeps_targets_distributions(photos):
    images, labels = jnp.asarray(_normalised(photos)), jnp.array([0, 1, 2, 3])
    run = lambda key, **kw: mixup.mix(jax.random.key(key), images, labels, num_classes=5, **kw)  # noqa: E731
    (a, ya), (b, yb), (c, _) = run(7), run(7), run(8)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    assert (np.asarray(a) != np.asarray(c)).any()
    np.testing.assert_allclose(np.asarray(ya).sum(-1), 1.0, atol=1e-6)
    same, y = run(7, prob=0.0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(images))
    np.testing.assert_allclose(np.asarray(y)[0], [0.92, 0.02, 0.02, 0.02, 0.02], atol=1e-7)
    with pytest.raises(
        ValueError, match=r"^Mixup/CutMix need an even batch \(timm's rule\), got 3"
    ):
        mixup.mix(jax.random.key(0), images[:3], labels[:3], num_classes=5)
    with pytest.raises(TypeError, match=r"^Mixup/CutMix mix normalised float images, got uint8"):
        mixup.mix(jax.random.key(0), images.astype(jnp.uint8), labels, num_classes=5)
