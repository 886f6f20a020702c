"""``config.backend``: 'xla' (the default) is the model as written with XLA's options on every
platform; 'cpu_fast' is CPU-only, swaps the model's convolution and gives forward programs an
XLA option that changes the compiled program but not the numbers."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from recipes import load_config, tiny_synthetic_config

from resnet_jax import backend, parallel, spec
from resnet_jax.build import build_model
from resnet_jax.models import create_model
from resnet_jax.training import steps, train_and_evaluate
from resnet_jax.training.state import create_train_state
from resnet_jax.training.validate import ConfigError

_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_INDIVIDUAL_DOT = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _program(compiled) -> str:
    """Compiled HLO without source locations (which differ between any two call sites)."""
    out, in_table = [], False
    for line in compiled.as_text().splitlines():
        if line in _TABLES or in_table:
            in_table = bool(line.strip())
            continue
        out.append(re.sub(r", metadata=\{[^}\n]*\}", "", line))
    return "\n".join(out)


def test_xla_is_lax_convolutions_and_defaults_everywhere_cpu_fast_is_cpu_only():
    for p in ("cpu", "gpu", "tpu"):
        assert backend.get_backend("xla", p) == backend.Backend(
            "xla", jax.lax.conv_general_dilated, None
        )
    fast = backend.get_backend("cpu_fast", "cpu")
    assert fast == backend.Backend("cpu_fast", backend.pointwise_as_matmul, _INDIVIDUAL_DOT)
    with pytest.raises(ValueError) as e:
        backend.get_backend("cpu_fast", "gpu")
    assert str(e.value) == (
        "backend 'cpu_fast' speeds up CPU programs, but this run's devices are gpu; use "
        "--config.backend=xla (the default)."
    )
    with pytest.raises(ValueError) as e:
        backend.get_backend("fast", "cpu")
    assert str(e.value) == (
        "backend 'fast' is not one of ('xla', 'cpu_fast'): use --config.backend=xla (the "
        "default, every platform) or cpu_fast (CPU only)."
    )


def test_the_builder_builds_the_model_with_the_configured_backend():
    config = load_config("default")
    config.model.name = "resnet18"
    dp = parallel.create_data_parallel("shard_map", devices=jax.devices()[:1])
    assert config.backend == "xla"
    assert build_model(config, 10, parallel=dp).conv_general_dilated is jax.lax.conv_general_dilated
    config.backend = "cpu_fast"
    model = build_model(config, 10, parallel=dp)
    assert model.conv_general_dilated is backend.pointwise_as_matmul
    config.backend = "fast"
    with pytest.raises(ConfigError, match=r"^backend 'fast' is not one of"):
        build_model(config, 10, parallel=dp)
    del config["backend"]  # a config.json written before the field existed, completed
    old = spec.complete(config)
    assert build_model(old, 10, parallel=dp).conv_general_dilated is jax.lax.conv_general_dilated


def test_a_run_looks_its_backend_up_once_and_compiles_eval_with_its_options(
    tmp_path, monkeypatch, fast_compile
):
    looked_up, eval_options = [], []
    get, compile_eval = backend.get_backend, steps.compile_eval_step
    monkeypatch.setattr(backend, "get_backend", lambda *a: looked_up.append(a) or get(*a))

    def spy(*args, **kwargs):
        eval_options.append(kwargs["compiler_options"])
        return compile_eval(*args, **kwargs)

    monkeypatch.setattr(steps, "compile_eval_step", spy)
    config = tiny_synthetic_config(backend="cpu_fast", num_train_steps=1, keep_checkpoints=0)
    train_and_evaluate(config, str(tmp_path))
    assert looked_up == [("cpu_fast", "cpu")]
    assert eval_options == [get("cpu_fast", "cpu").forward_options] == [_INDIVIDUAL_DOT]


def test_an_option_this_jaxlib_rejects_falls_back_with_a_warning(monkeypatch, caplog):
    bad = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_TYPE"}
    monkeypatch.setattr(backend, "FORWARD_OPTIONS", bad)
    with caplog.at_level(logging.WARNING, logger="resnet_jax.backend"):
        fast = backend.get_backend("cpu_fast", "cpu")
    assert fast.forward_options is None
    assert fast.conv_general_dilated is backend.pointwise_as_matmul
    assert "did not take the compiler options" in caplog.text


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_forward_options_change_the_program_not_the_outputs(dtype, rtol):
    model = create_model("resnet18", num_classes=10, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)

    def forward(v, x):
        return model.apply(v, x, return_features=True, train=False)

    options = backend.get_backend("cpu_fast", "cpu").forward_options
    tuned = jax.jit(forward, compiler_options=options).lower(variables, x).compile()
    plain = jax.jit(forward).lower(variables, x).compile()
    assert _program(tuned) != _program(plain), "the option did not change the program"
    a, b = tuned(variables, x), plain(variables, x)
    for name in ("layer1", "layer4", "logits"):
        ref = np.asarray(b[name], np.float32)
        diff = np.abs(np.asarray(a[name], np.float32) - ref).max()
        assert diff <= rtol * np.abs(ref).max(), (name, diff, np.abs(ref).max())


def test_the_eval_step_compiles_with_the_options_it_is_given():
    fast = backend.get_backend("cpu_fast", "cpu")
    model = create_model(
        "resnet18",
        num_classes=10,
        stem_width=8,
        stage_widths=(16, 16, 32, 32),  # at 8 channels XLA gives YNNPACK nothing either way
        conv_general_dilated=fast.conv_general_dilated,
    )
    dp = parallel.create_data_parallel("shard_map", devices=jax.devices()[:1])
    state = dp.replicate(create_train_state(model, optax.sgd(0.1), seed=0, image_shape=(32, 32, 3)))
    rng = np.random.default_rng(0)
    batch = dp.shard_batch(
        {
            "image": rng.standard_normal((4, 32, 32, 3), dtype=np.float32),
            "label": rng.integers(0, 10, 4).astype(np.int32),
            "mask": np.ones(4, np.float32),
        }
    )

    def compiled(**kw):
        return steps.compile_eval_step(dp, model=model, **kw).lower(state, batch).compile()

    tuned, plain = compiled(compiler_options=fast.forward_options), compiled()
    assert _program(tuned) != _program(plain)
    a, b = tuned(state, batch), plain(state, batch)
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert float(a["count"]) == float(b["count"]) == 4.0
