"""The space-to-depth stem (MLPerf TPU ResNet-50): an exact reparametrisation of the 7x7/2 stem.

The 7x7 kernel stays the stored parameter, so a checkpoint loads into either stem; the outputs
agree to float32 round-off (about 1e-6 at the stem, 1e-5 at the logits).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import create_model
from resnet_jax.models.layers import space_to_depth, stem_kernel_space_to_depth

# Narrow and one block per stage: the stem is what differs, the rest only has to run.
SMALL = dict(stem_width=8, stage_widths=(8, 8, 16, 16), stage_sizes=(1, 1, 1, 1), num_classes=5)


pytestmark = pytest.mark.usefixtures("fast_compile")  # Equality, not speed.


def random_variables(model, x, seed=0):
    """Parameters and BN statistics of the right shapes, random (cheaper than model.init)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        scale = 0.1 if name in ("bias", "mean") else 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def pair(name="resnet50", **kwargs):
    plain = create_model(name, **{**SMALL, **kwargs})
    return plain, plain.clone(space_to_depth=True)


def images(size, batch=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


def max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def test_space_to_depth_conv_equals_7x7_stride_2_conv():
    x = images(224)
    kernel = jax.random.normal(jax.random.key(2), (7, 7, 3, 16))
    dn = ("NHWC", "HWIO", "NHWC")
    hi = jax.lax.Precision.HIGHEST
    plain = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((3, 3), (3, 3)), dimension_numbers=dn, precision=hi
    )
    s2d = jax.lax.conv_general_dilated(
        space_to_depth(x),
        stem_kernel_space_to_depth(kernel),
        (1, 1),
        ((2, 1), (2, 1)),
        dimension_numbers=dn,
        precision=hi,
    )
    assert s2d.shape == plain.shape == (4, 112, 112, 16)
    assert max_diff(s2d, plain) < 1e-4  # Sums of 147 products of N(0,1) values (~12).


def test_space_to_depth_layout():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = space_to_depth(x)
    assert y.shape == (2, 2, 2, 12)
    # Channel (row-in-block, column-in-block, c) of block (i, j) is pixel (2i + r, 2j + c').
    np.testing.assert_array_equal(y[1, 1, 1, 6:9], x[1, 3, 2])


@pytest.mark.parametrize("name", ["resnet50", "resnet50_v1", "resnet50_v2"])
def test_parameter_tree_is_identical(name):
    plain, s2d = pair(name)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    a = jax.eval_shape(plain.init, jax.random.key(0), x)
    b = jax.eval_shape(s2d.init, jax.random.key(0), x)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert [u.shape for u in jax.tree.leaves(a)] == [v.shape for v in jax.tree.leaves(b)]
    assert b["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)


def test_initial_values_are_identical():
    plain, s2d = pair()
    x = jnp.zeros((1, 32, 32, 3))
    a = jax.jit(plain.init)(jax.random.key(0), x)
    b = jax.jit(s2d.init)(jax.random.key(0), x)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "name, size",
    [
        ("resnet50", 224),
        ("resnet50", 96),
        ("resnet50", 130),
        ("resnet50_v1", 160),
        ("resnet50_v2", 64),
    ],
)
def test_outputs_match_7x7_stem(name, size):
    plain, s2d = pair(name)
    x = images(size)
    variables = random_variables(plain, x)
    a = jax.jit(lambda v, x: plain.apply(v, x, return_features=True))(variables, x)
    b = jax.jit(lambda v, x: s2d.apply(v, x, return_features=True))(variables, x)
    assert a["stem"].shape == b["stem"].shape
    assert max_diff(a["stem"], b["stem"]) < 1e-5
    assert max_diff(a["logits"], b["logits"]) < 1e-4


def test_train_mode_gradients_and_batch_stats_match():
    plain, s2d = pair()
    x = images(32)
    labels = jnp.array([1, 3, 0, 2])
    variables = random_variables(plain, x)

    def loss(model, params):
        logits, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        onehot = jax.nn.one_hot(labels, 5)
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), state

    grad = jax.jit(jax.grad(loss, argnums=1, has_aux=True), static_argnums=0)
    (ga, sa), (gb, sb) = grad(plain, variables["params"]), grad(s2d, variables["params"])
    assert gb["conv1"]["kernel"].shape == (7, 7, 3, 8)
    for u, v in zip(jax.tree.leaves((ga, sa)), jax.tree.leaves((gb, sb)), strict=True):
        assert max_diff(u, v) < 1e-4 * max(float(jnp.max(jnp.abs(u))), 1.0)


def test_bfloat16_outputs_close():
    plain, s2d = pair(dtype=jnp.bfloat16)
    x = images(64)
    variables = random_variables(plain, x)
    a = jax.jit(lambda v, x: plain.apply(v, x, return_features=True)["stem"])(variables, x)
    b = jax.jit(lambda v, x: s2d.apply(v, x, return_features=True)["stem"])(variables, x)
    assert b.dtype == jnp.bfloat16
    assert max_diff(a.astype(jnp.float32), b.astype(jnp.float32)) < 0.05


@pytest.mark.parametrize("size", [225, 63])
def test_odd_image_size_is_a_clear_error(size):
    _, s2d = pair()
    with pytest.raises(ValueError, match=r"divisible by 2.*space_to_depth=False"):
        jax.eval_shape(s2d.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_only_the_imagenet_stem_has_a_space_to_depth_form():
    with pytest.raises(ValueError, match="space_to_depth applies to the 'imagenet'"):
        create_model("resnet50d", space_to_depth=True)
    with pytest.raises(ValueError, match="space_to_depth applies to the 'imagenet'"):
        create_model("resnet20", space_to_depth=True)
