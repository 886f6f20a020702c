"""Schedules, optimizers, weight-decay masks and the loss of the training recipes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from resnet_jax import create_model
from resnet_jax.training import optim


def opt_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            name="sgd",
            base_learning_rate=0.1,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            lr_schedule="cosine",
            warmup_epochs=5.0,
            lr_boundaries_steps=(),
            lr_decay_factor=0.1,
            end_learning_rate=0.0,
            polynomial_power=2.0,
            grad_clip_norm=0.0,
            lars_trust_coefficient=0.001,
            lars_eps=0.0,
        )
    )
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def tiny_params():
    model = create_model("resnet20", stage_widths=(4, 8, 8), stem_width=4)
    return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]


def test_peak_learning_rate_scales_with_batch_over_256():
    assert optim.peak_learning_rate(opt_config(), 1024) == pytest.approx(0.4)
    assert optim.peak_learning_rate(opt_config(base_learning_rate=0.2), 128) == pytest.approx(0.1)


def test_warmup_then_cosine_to_zero():
    lr = optim.create_learning_rate_schedule(
        opt_config(), batch_size=1024, steps_per_epoch=10, total_steps=100
    )
    assert float(lr(0)) == 0.0
    assert float(lr(25)) == pytest.approx(0.2, rel=1e-6)  # Halfway through 50 warmup steps.
    assert float(lr(50)) == pytest.approx(0.4, rel=1e-6)
    assert float(lr(75)) == pytest.approx(0.2, rel=1e-5)  # Cosine midpoint.
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_tenfold_at_each_boundary():
    c = opt_config(
        base_learning_rate=0.2, lr_schedule="step", warmup_epochs=0.0, lr_boundaries_steps=(32, 48)
    )
    lr = optim.create_learning_rate_schedule(c, batch_size=128, steps_per_epoch=8, total_steps=64)
    got = [float(lr(s)) for s in (0, 31, 32, 47, 48, 63)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_polynomial_schedule_reaches_end_rate():
    c = opt_config(lr_schedule="polynomial", warmup_epochs=1.0, end_learning_rate=0.001)
    lr = optim.create_learning_rate_schedule(c, batch_size=256, steps_per_epoch=10, total_steps=60)
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(35)) == pytest.approx(0.001 + 0.099 * 0.25, rel=1e-5)  # (1 - 1/2)^2.
    assert float(lr(60)) == pytest.approx(0.001)


def test_weight_decay_mask_selects_kernels_only(tiny_params):
    mask = optim.kernel_mask(tiny_params)
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    kernels = [k for k in flat if k.endswith("['kernel']")]
    assert kernels and all(flat[k] for k in kernels)
    others = [k for k in flat if not k.endswith("['kernel']")]
    assert any("scale" in k for k in others) and any("bias" in k for k in others)
    assert not any(flat[k] for k in others)


def test_sgd_decays_kernels_but_not_bn_or_bias(tiny_params):
    tx = optim.create_optimizer(
        opt_config(momentum=0.0, weight_decay=0.5), optax.constant_schedule(1.0)
    )
    zeros = jax.tree.map(jnp.zeros_like, tiny_params)
    updates, _ = tx.update(zeros, tx.init(tiny_params), tiny_params)
    np.testing.assert_allclose(updates["fc"]["kernel"], -0.5 * tiny_params["fc"]["kernel"])
    np.testing.assert_array_equal(updates["fc"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["bn1"]["scale"], 0.0)


def test_nesterov_momentum_matches_optax_sgd(tiny_params):
    tx = optim.create_optimizer(opt_config(weight_decay=0.0), optax.constant_schedule(0.1))
    ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
    grads = jax.tree.map(jnp.ones_like, tiny_params)
    s, r = tx.init(tiny_params), ref.init(tiny_params)
    for _ in range(3):
        u, s = tx.update(grads, s, tiny_params)
        v, r = ref.update(grads, r, tiny_params)
    jax.tree.map(np.testing.assert_allclose, u, v)


def test_lars_adapts_kernels_only(tiny_params):
    tx = optim.create_optimizer(
        opt_config(name="lars", momentum=0.0, weight_decay=0.0), optax.constant_schedule(1.0)
    )
    grads = jax.tree.map(jnp.ones_like, tiny_params)
    updates, _ = tx.update(grads, tx.init(tiny_params), tiny_params)
    # BN scale and biases: plain SGD step; kernels: scaled by trust ratio 1e-3 |w| / |g|.
    np.testing.assert_allclose(updates["bn1"]["scale"], -1.0)
    np.testing.assert_allclose(updates["fc"]["bias"], -1.0)
    w, g = tiny_params["fc"]["kernel"], grads["fc"]["kernel"]
    ratio = 1e-3 * jnp.linalg.norm(w) / jnp.linalg.norm(g)
    np.testing.assert_allclose(updates["fc"]["kernel"], -ratio * g, rtol=1e-5)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_lamb_is_optax_lamb_on_kernels_and_adam_elsewhere(tiny_params, momentum):
    """timm's Lamb (RSB): decay and trust ratio on the kernels it decays, a plain Adam step on
    BN and biases; optax.lamb with the same mask gives the kernels' updates. ``momentum`` is
    the first moment's decay (timm's beta1, 0.9)."""
    lr = optax.constant_schedule(0.005)
    tx = optim.create_optimizer(opt_config(name="lamb", weight_decay=0.02, momentum=momentum), lr)
    lamb = optax.lamb(lr, b1=momentum, weight_decay=0.02, mask=optim.kernel_mask)
    adam = optax.adam(lr, b1=momentum, eps=1e-6)
    states = [t.init(tiny_params) for t in (tx, lamb, adam)]
    for step in range(3):  # Gradients that change, so that beta1 matters.
        grads = jax.tree.map(
            lambda p, k=step + 1.0: jnp.cos(jnp.arange(p.size).reshape(p.shape) * k + 1.0),
            tiny_params,
        )
        out = [
            t.update(grads, s, tiny_params) for t, s in zip((tx, lamb, adam), states, strict=True)
        ]
        (ours, theirs, plain), states = zip(*out, strict=True)
    kernels = optim.kernel_mask(tiny_params)
    for path, is_kernel in jax.tree_util.tree_leaves_with_path(kernels):
        want = jax.tree_util.tree_flatten_with_path(theirs if is_kernel else plain)[0]
        want = dict(want)[path]
        got = dict(jax.tree_util.tree_flatten_with_path(ours)[0])[path]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert sum(jax.tree.leaves(kernels)) >= 10 and not all(jax.tree.leaves(kernels))


def test_gradient_clipping_bounds_the_global_norm(tiny_params):
    tx = optim.create_optimizer(
        opt_config(momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0), optax.constant_schedule(1.0)
    )
    grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), tiny_params)
    updates, _ = tx.update(grads, tx.init(tiny_params), tiny_params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_soft_targets_are_taken_as_given():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    soft = jnp.array([[0.7, 0.3, 0.0]])
    logp = jax.nn.log_softmax(logits)
    got = optim.cross_entropy(logits, soft, label_smoothing=0.3)  # Smoothed where mixed.
    np.testing.assert_allclose(got, -(soft * logp).sum(-1), rtol=1e-6)


def test_label_smoothing_cross_entropy():
    logits = jnp.array([[2.0, 0.0, -1.0]], jnp.bfloat16)
    labels = jnp.array([0])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    plain = optim.cross_entropy(logits, labels)
    smooth = optim.cross_entropy(logits, labels, 0.3)
    assert plain.dtype == jnp.float32
    np.testing.assert_allclose(plain, -logp[:, 0], rtol=1e-6)
    target = jnp.array([0.8, 0.1, 0.1])
    np.testing.assert_allclose(smooth, -(target * logp).sum(-1), rtol=1e-6)


def test_unknown_optimizer_and_schedule_are_rejected():
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        optim.create_optimizer(opt_config(name="adam"), optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match="Unknown lr_schedule 'linear'"):
        optim.create_learning_rate_schedule(
            opt_config(lr_schedule="linear"), batch_size=256, steps_per_epoch=1, total_steps=10
        )
