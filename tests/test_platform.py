"""XLA compiler options per backend and kind of program (on CPU: YNNPACK matrix products
only for forward programs, XLA's defaults for train steps): when they apply, that they change
the compiled program but not the numbers, and that every step compiles with its own."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import parallel, platform
from resnet_jax.models import create_model
from resnet_jax.training import steps
from resnet_jax.training.state import create_train_state

_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def _program(compiled) -> str:
    """Compiled HLO without source locations (which differ between any two call sites)."""
    out, in_table = [], False
    for line in compiled.as_text().splitlines():
        if line in _TABLES or in_table:
            in_table = bool(line.strip())
            continue
        out.append(re.sub(r", metadata=\{[^}\n]*\}", "", line))
    return "\n".join(out)


pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")


def test_cpu_forward_programs_get_the_option_train_steps_and_accelerators_none():
    forward = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    assert platform.compiler_options("cpu") == forward
    assert platform.compiler_options() == forward  # the default backend here
    assert platform.compiler_options("cpu", program="train") is None
    for p in ("gpu", "tpu"):
        assert platform.compiler_options(p) is None
        assert platform.compiler_options(p, program="train") is None
    assert platform.compiler_options("cpu", xla_defaults=True) is None
    with pytest.raises(ValueError, match="Unknown program kind 'eval'"):
        platform.compiler_options("cpu", program="eval")


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
    monkeypatch.setitem(
        platform.CPU_OPTIONS, "forward", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_TYPE"}
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
    assert _program(tuned) != _program(plain), "the option did not change the program"
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
            {
                "platform": kwargs.get("platform"),
                "program": kwargs.get("program", "forward"),
                "xla_defaults": kwargs.get("xla_defaults", False),
            }
        )
        return real(fn, **kwargs)

    monkeypatch.setattr(platform, "jit", spy)
    dp = parallel.create_data_parallel("shard_map", devices=jax.devices()[:2])
    step = dp.compile(lambda state, batch: state + 1.0, donate_state=False)
    assert calls[-1] == {"platform": "cpu", "program": "forward", "xla_defaults": False}
    state = dp.replicate(jnp.zeros(()))
    batch = dp.shard_batch({"x": np.ones((4,), np.float32)})
    assert float(step(state, batch)) == 1.0
    dp.compile(lambda state, batch: state, donate_state=False, xla_defaults=True)
    assert calls[-1] == {"platform": "cpu", "program": "forward", "xla_defaults": True}

    from resnet_jax.data.presets import get_preset
    from resnet_jax.inference import Predictor

    model = create_model("resnet18", num_classes=3, stem_width=8, stage_widths=(8, 8, 8, 8))
    tx = optax.sgd(0.1)
    steps.compile_train_step(dp, model=model, tx=tx)
    assert calls[-1]["program"] == "train"
    steps.compile_eval_step(dp, model=model)
    assert calls[-1]["program"] == "forward"
    n = len(calls)
    Predictor(model, {}, get_preset("torchvision_v1"))
    assert len(calls) == n + 1 and calls[-1] == {
        "platform": None,
        "program": "forward",
        "xla_defaults": False,
    }


def test_a_train_step_compiles_with_xla_defaults_and_forward_options_change_it():
    model = create_model("resnet18", num_classes=10, stem_width=8, stage_widths=(8, 8, 8, 8))
    tx = optax.sgd(0.1, momentum=0.9)
    dp = parallel.create_data_parallel("shard_map", devices=jax.devices()[:1])
    state = dp.replicate(create_train_state(model, tx, seed=0, image_shape=(32, 32, 3)))
    rng = np.random.default_rng(0)
    batch = dp.shard_batch(
        {
            "image": rng.standard_normal((4, 32, 32, 3), dtype=np.float32),
            "label": rng.integers(0, 10, 4).astype(np.int32),
        }
    )

    def compiled(**kw):
        step = steps.compile_train_step(dp, model=model, tx=tx, donate_state=False, **kw)
        return step.lower(state, batch).compile()

    train, defaults = compiled(), compiled(xla_defaults=True)
    forward = compiled(xla_program="forward")
    assert _program(train) == _program(defaults)
    assert _program(forward) != _program(train)
    (_, a), (_, b) = train(state, batch), forward(state, batch)
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
