"""Test-wide settings: eight simulated CPU devices, so data-parallel code runs as on a host
with eight accelerators. Must happen before any JAX backend is initialised."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
