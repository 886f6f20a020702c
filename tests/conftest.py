"""Test-wide settings: eight simulated CPU devices, so data-parallel code runs as on a host
with eight accelerators. Must happen before any JAX backend is initialised."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def fast_compile():
    """Behaviour, not speed, is under test: compile with XLA's optimisations off."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the run gets as far as building (compiling) the train state: for
    errors that must come before any work."""
    from resnet_jax.training import loop

    def refuse(*args, **kwargs):
        raise AssertionError("reached model initialisation; the error should come first")

    monkeypatch.setattr(loop, "create_train_state", refuse)
