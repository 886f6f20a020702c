"""The 'cpu_fast' backend's 1x1 convolutions as matrix products (``backend.pointwise_as_matmul``):
the same numbers and gradients as ``lax.conv_general_dilated``, bfloat16 products accumulated in
float32, and a default model that keeps the plain convolution on every platform."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import backend
from resnet_jax.models import create_model

NHWC = ("NHWC", "HWIO", "NHWC")


def _pair(shape, kernel, dtype, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, shape, jnp.float32).astype(dtype)
    w = (jax.random.normal(kw, kernel, jnp.float32) / np.sqrt(np.prod(kernel[:3]))).astype(dtype)
    return x, w


def _both(x, w, strides, padding, dimension_numbers=NHWC, **kw):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)
    ours = jax.jit(
        lambda x, w: backend.pointwise_as_matmul(x, w, strides, padding, dimension_numbers=dn, **kw)
    )
    ref = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=dn, **kw
        )
    )
    return ours, ref


@pytest.mark.parametrize(
    "shape,stride,padding",
    [
        ((2, 8, 8, 16), 1, "VALID"),
        ((2, 8, 8, 16), 1, ((0, 0), (0, 0))),
        ((2, 7, 9, 16), 2, ((0, 0), (0, 0))),  # odd sizes: ceil(7/2) x ceil(9/2)
        ((3, 9, 9, 24), 3, "VALID"),
    ],
)
def test_pointwise_conv_is_a_matrix_product_with_the_same_numbers(shape, stride, padding):
    x, w = _pair(shape, (1, 1, shape[-1], 12), jnp.float32)
    ours, ref = _both(x, w, (stride, stride), padding)
    a, b = np.asarray(ours(x, w)), np.asarray(ref(x, w))
    assert a.shape == b.shape == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), 12)
    assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
    text = ours.lower(x, w).as_text()
    assert "dot_general" in text and "convolution" not in text

    # bfloat16: float32 products and sums, rounded once, as XLA:CPU's convolution does.
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    a = np.asarray(ours(xb, wb).astype(jnp.float32))
    b = np.asarray(ref(xb, wb).astype(jnp.float32))
    assert ours(xb, wb).dtype == jnp.bfloat16
    np.testing.assert_allclose(a, b, rtol=2**-8, atol=1e-6)  # at most one bf16 rounding step
    assert (a == b).mean() > 0.99


def test_bfloat16_products_accumulate_in_float32():
    x, w = _pair((2, 8, 8, 16), (1, 1, 16, 8), jnp.bfloat16)
    ours, _ = _both(x, w, (1, 1), "VALID")
    exported = jax.export.export(ours, platforms=["cpu"])(x, w)
    dots = re.findall(r"stablehlo\.dot_general.*", exported.mlir_module())
    assert len(dots) == 1
    bf16, f32 = r"tensor<[0-9x]*xbf16>", r"tensor<[0-9x]*xf32>"
    assert re.search(rf"\({bf16}, {bf16}\) -> {f32}", dots[0]), dots[0]


@pytest.mark.parametrize(
    "name,shape,kernel,stride,padding,extra",
    [
        ("3x3", (2, 8, 8, 16), (3, 3, 16, 8), 1, ((1, 1), (1, 1)), {}),
        ("padded 1x1", (2, 8, 8, 16), (1, 1, 16, 8), 1, ((1, 1), (1, 1)), {}),
        ("grouped 1x1", (2, 8, 8, 16), (1, 1, 4, 8), 1, "VALID", {"feature_group_count": 4}),
        ("dilated 1x1", (2, 8, 8, 16), (1, 1, 16, 8), 1, ((0, 0),) * 2, {"lhs_dilation": (2, 2)}),
    ],
)
def test_every_other_convolution_is_left_to_xla(name, shape, kernel, stride, padding, extra):
    x, w = _pair(shape, kernel, jnp.float32)
    ours, ref = _both(x, w, (stride, stride), padding, **extra)
    np.testing.assert_array_equal(np.asarray(ours(x, w)), np.asarray(ref(x, w)), err_msg=name)
    text = ours.lower(x, w).as_text()
    assert "convolution" in text and "dot_general" not in text, name


def test_nchw_dimension_numbers_are_left_to_xla():
    x, w = _pair((2, 16, 8, 8), (8, 16, 1, 1), jnp.float32)
    ours, ref = _both(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    np.testing.assert_array_equal(np.asarray(ours(x, w)), np.asarray(ref(x, w)))
    assert "dot_general" not in ours.lower(x, w).as_text()


def test_gradients_match_the_convolution():
    x, w = _pair((2, 7, 7, 16), (1, 1, 16, 8), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    probe = jax.random.normal(jax.random.key(3), (2, 4, 4, 8))

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w, (2, 2), "VALID", dimension_numbers=dn) * probe)

    gx, gw = jax.grad(loss(backend.pointwise_as_matmul), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    assert np.abs(gx - rx).max() <= 1e-6 * np.abs(rx).max()
    assert np.abs(gw - rw).max() <= 1e-6 * np.abs(rw).max()
    assert float(jnp.abs(gx[:, 1::2]).max()) == 0.0  # skipped rows get no gradient


def _count(text, op):
    return len(re.findall(rf"stablehlo\.{op}\b", text))


def _small_resnet50(**kw):
    return create_model("resnet50", num_classes=10, stem_width=8, stage_widths=(8, 8, 16, 16), **kw)


def test_default_model_is_plain_convolutions_on_every_platform_cpu_fast_makes_1x1_products():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    fast = backend.get_backend("cpu_fast", "cpu").conv_general_dilated
    ops = {}
    for name, model in (
        ("xla", _small_resnet50()),
        ("cpu_fast", _small_resnet50(conv_general_dilated=fast)),
    ):
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x.shape))
        forward = jax.jit(functools.partial(model.apply, train=False))
        for p in ("cpu", "cuda", "tpu") if name == "xla" else ("cpu",):
            text = jax.export.export(forward, platforms=[p])(variables, x).mlir_module()
            ops[name, p] = (_count(text, "convolution"), _count(text, "dot_general"))
    # ResNet-50: 53 convolutions, 36 of them 1x1 (2 per bottleneck, 4 projections); 1 Dense.
    assert ops == {
        ("xla", "cpu"): (53, 1),
        ("xla", "cuda"): (53, 1),
        ("xla", "tpu"): (53, 1),
        ("cpu_fast", "cpu"): (17, 37),
    }


def test_cpu_fast_resnet_logits_match_the_plain_convolution_model():
    fast = backend.get_backend("cpu_fast", "cpu").conv_general_dilated
    model, plain = _small_resnet50(conv_general_dilated=fast), _small_resnet50()
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = plain.init(jax.random.key(0), x, train=False)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    ref = np.asarray(jax.jit(lambda v, x: plain.apply(v, x, train=False))(variables, x))
    assert np.abs(ours - ref).max() <= 2e-6 * np.abs(ref).max()
