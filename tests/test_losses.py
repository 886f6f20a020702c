"""Binary cross-entropy and drop path (stochastic depth) against timm on fixed tensors."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("timm") is None:  # imported through the torchvision shim below
    pytest.skip("timm is not installed", allow_module_level=True)

from resnet_jax.convert.torch_compat import import_timm  # noqa: E402
from resnet_jax.models import blocks  # noqa: E402
from resnet_jax.models.resnet import ResNet  # noqa: E402
from resnet_jax.training import mixup  # noqa: E402
from resnet_jax.training.losses import binary_cross_entropy  # noqa: E402

import_timm()
import torch  # noqa: E402
from timm.layers import drop_path as timm_drop_path  # noqa: E402
from timm.loss import BinaryCrossEntropy  # noqa: E402


@pytest.fixture(scope="module")
def logits():
    return (np.random.default_rng(0).standard_normal((6, 1000)) * 4).astype(np.float32)


def _mixed_targets(labels, lam=0.7, smoothing=0.1):
    y = mixup.smooth_one_hot(jnp.asarray(labels), 1000, smoothing)
    return np.array(y * lam + y[::-1] * (1 - lam))


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("labels", dict(smoothing=0.1)),
        ("labels", dict(smoothing=0.0, target_threshold=0.2)),
        ("mixed", dict(target_threshold=0.2)),  # the A1-A3 setting
        ("mixed", dict(target_threshold=0.2, sum_classes=True)),
        ("mixed", dict()),
    ],
)
def test_binary_cross_entropy_matches_timm(kind, kwargs, logits):
    labels = np.array([5, 999, 0, 5, 321, 7])
    targets = labels if kind == "labels" else _mixed_targets(labels)
    theirs = BinaryCrossEntropy(**{"smoothing": 0.0, **kwargs})(
        torch.from_numpy(logits), torch.from_numpy(targets)
    )
    ours = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), **kwargs)
    assert ours.shape == (6,)
    np.testing.assert_allclose(float(ours.mean()), theirs.item(), rtol=1e-6, atol=1e-6)


def test_binary_cross_entropy_threshold_binarises_mixed_targets(logits):
    """Above 0.2 both mixed labels count as positives (0.7 and 0.3 of the mix), the rest 0."""
    targets = _mixed_targets([1, 2, 3, 4, 5, 6])
    binary = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), target_threshold=0.2)
    hard = np.zeros_like(targets)
    hard[np.arange(6), [1, 2, 3, 4, 5, 6]] = hard[np.arange(6), [6, 5, 4, 3, 2, 1]] = 1
    np.testing.assert_allclose(binary, binary_cross_entropy(jnp.asarray(logits), hard), rtol=1e-7)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drop_path_matches_timm_for_the_same_mask(rate):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((16, 3, 4, 5)).astype("f4"))
    torch.manual_seed(3)
    keep = torch.empty(16, 1, 1, 1).bernoulli_(1 - rate)
    torch.manual_seed(3)
    theirs = timm_drop_path(x, rate, training=True).numpy()
    ours = blocks.drop_path(jnp.asarray(x.numpy()), rate, jnp.asarray(keep.numpy() > 0).ravel())
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-6)
    kept = keep.numpy().ravel() > 0
    assert 0 < kept.sum() < 16  # some examples dropped, some kept and scaled
    np.testing.assert_allclose(np.asarray(ours)[kept], x.numpy()[kept] / (1 - rate), rtol=1e-6)


def test_block_drop_path_rates_rise_linearly_as_timms_resnet():
    model = ResNet(stage_sizes=(3, 4, 6, 3), drop_path_rate=0.05)
    rates = model.block_drop_path_rates()
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.05)
    np.testing.assert_allclose(rates, [0.05 * i / 15 for i in range(16)])
    with pytest.raises(ValueError, match=r"drop_path_rate=1\.0 not in \[0, 1\)"):
        ResNet(stage_sizes=(1,), drop_path_rate=1.0).validate()


@pytest.mark.parametrize("variant, block", [("v1.5", "basic"), ("v2", "bottleneck")])
def test_drop_path_acts_in_training_only_and_adds_no_parameters(variant, block):
    kwargs = dict(stage_sizes=(1, 2), stage_widths=(8, 16), stem="cifar", stem_width=8)
    kwargs.update(variant=variant, block=block, num_classes=3)
    plain, dropping = ResNet(**kwargs), ResNet(**kwargs, drop_path_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 8, 3)), jnp.float32)
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(dropping.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    np.testing.assert_array_equal(dropping.apply(variables, x), plain.apply(variables, x))

    def train(model, key):
        rngs = {"dropout": jax.random.key(key)}
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    np.testing.assert_array_equal(train(dropping, 1), train(dropping, 1))
    assert np.abs(train(dropping, 1) - train(dropping, 2)).max() > 1e-3
    assert np.abs(train(dropping, 1) - train(plain, 1)).max() > 1e-3
