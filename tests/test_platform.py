"""Per-backend XLA compiler options (YNNPACK dot fusions on CPU): when they apply, that they
change the compiled program but not the numbers, and that the steps compile with them."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel, platform
from resnet_jax.models import create_model

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")


def test_cpu_gets_the_library_fusion_option_and_accelerators_none():
    assert platform.compiler_options("cpu") == platform.CPU_OPTIONS
    assert platform.compiler_options() == platform.CPU_OPTIONS  # the default backend here
    assert platform.compiler_options("gpu") is None
    assert platform.compiler_options("tpu") is None
    assert platform.compiler_options("cpu", xla_defaults=True) is None


@pytest.mark.parametrize(
    "env",
    [
        {"RESNET_JAX_XLA_DEFAULTS": "1"},
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_ftz=true"},
    ],
)
def test_environment_opts_out(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert platform.compiler_options("cpu") is None


def test_an_option_this_jaxlib_rejects_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(
        platform, "CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
    )
    with caplog.at_level(logging.WARNING, logger="resnet_jax.platform"):
        assert platform.compiler_options("cpu") is None
    assert "did not take the compiler options" in caplog.text
    f = platform.jit(lambda a: a * 2)  # still compiles, with XLA's defaults
    np.testing.assert_array_equal(f(jnp.arange(3.0)), [0.0, 2.0, 4.0])


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_same_outputs_as_xla_defaults_from_a_different_program(dtype, rtol):
    model = create_model("resnet18", num_classes=10, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)

    def forward(v, x):
        return model.apply(v, x, return_features=True, train=False)

    tuned = platform.jit(forward).lower(variables, x).compile()
    plain = platform.jit(forward, xla_defaults=True).lower(variables, x).compile()
    assert tuned.as_text() != plain.as_text(), "the option did not change the program"
    a, b = tuned(variables, x), plain(variables, x)
    for name in ("layer1", "layer4", "logits"):
        ref = np.asarray(b[name], np.float32)
        diff = np.abs(np.asarray(a[name], np.float32) - ref).max()
        assert diff <= rtol * np.abs(ref).max(), (name, diff, np.abs(ref).max())


def test_the_training_and_prediction_steps_compile_through_platform_jit(monkeypatch):
    calls = []
    real = platform.jit

    def spy(fn, **kwargs):
        calls.append(
            {"platform": kwargs.get("platform"), "xla_defaults": kwargs.get("xla_defaults", False)}
        )
        return real(fn, **kwargs)

    monkeypatch.setattr(platform, "jit", spy)
    dp = parallel.create_data_parallel("shard_map", devices=jax.devices()[:2])
    step = dp.compile(lambda state, batch: state + 1.0, donate_state=False)
    assert calls[-1] == {"platform": "cpu", "xla_defaults": False}
    state = dp.replicate(jnp.zeros(()))
    batch = dp.shard_batch({"x": np.ones((4,), np.float32)})
    assert float(step(state, batch)) == 1.0
    dp.compile(lambda state, batch: state, donate_state=False, xla_defaults=True)
    assert calls[-1] == {"platform": "cpu", "xla_defaults": True}

    from resnet_jax.data.presets import get_preset
    from resnet_jax.predict import Predictor

    model = create_model("resnet18", num_classes=3, stem_width=8, stage_widths=(8, 8, 8, 8))
    n = len(calls)
    Predictor(model, {}, get_preset("torchvision_v1"))
    assert len(calls) == n + 1 and calls[-1]["xla_defaults"] is False
