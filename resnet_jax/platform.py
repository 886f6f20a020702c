"""XLA compiler options chosen per backend, and ``jit`` with them.

On CPU, XLA by default hands every convolution to YNNPACK on its own, which is slow for
ResNet's shapes. With ``xla_cpu_experimental_ynn_fusion_type=individual_dot`` XLA keeps the
convolutions and gives YNNPACK the matrix products only, among them the 1x1 convolutions,
which the model writes as matrix products on CPU (``models.layers.conv_general_dilated``);
bfloat16 products with float32 accumulation then run on the CPU's bfloat16 dot instructions.
On the 2-core AVX-512 machine of BENCHMARKS.md the option makes ResNet-50 inference about
1.6x faster than XLA's defaults, at the same numerics (float32 logits within 2e-6 of their
largest value). YNNPACK's fused dot subgraphs (``..._DOT``) were the choice before; they run
bfloat16 products with float32 accumulation 4x slower than the individual calls here. Every
jit in the package that runs the model goes through ``jit`` below, so training, evaluation,
prediction and the converters get it.

The option is experimental in XLA: it is tried once per process on a tiny program and
dropped, with a warning, if this jaxlib does not take it. ``RESNET_JAX_XLA_DEFAULTS=1``
compiles with XLA's defaults; a setting of the same option in ``XLA_FLAGS`` is left alone.
GPU and TPU get no extra options.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

DEFAULTS_ENV = "RESNET_JAX_XLA_DEFAULTS"
CPU_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}

_log = logging.getLogger(__name__)


def _env_wants_defaults() -> bool:
    return os.environ.get(DEFAULTS_ENV, "").strip().lower() in ("1", "true", "yes")


def _set_in_xla_flags(options: dict[str, str]) -> bool:
    flags = os.environ.get("XLA_FLAGS", "")
    return any(f"--{name}" in flags for name in options)


@functools.cache
def _accepted(items: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles a tiny program with these options."""
    try:
        a = jax.device_put(jnp.ones((8, 8), jnp.float32), jax.local_devices(backend="cpu")[0])
        jax.jit(lambda a: a @ a, compiler_options=dict(items)).lower(a).compile()
    except Exception as err:  # an unknown option or value: XlaRuntimeError, ValueError
        _log.warning(
            "XLA:CPU did not take the compiler options %s (%s); compiling with XLA's "
            "defaults, which run convolutions slower on CPU.",
            dict(items),
            str(err).splitlines()[0][:200],
        )
        return False
    return True


def compiler_options(
    platform: str | None = None, *, xla_defaults: bool = False
) -> dict[str, str] | None:
    """The extra XLA options for ``platform`` (default: JAX's default backend), or None.

    ``xla_defaults=True`` (or ``RESNET_JAX_XLA_DEFAULTS=1``) asks for none.
    """
    platform = platform or jax.default_backend()
    if xla_defaults or _env_wants_defaults() or _set_in_xla_flags(CPU_OPTIONS):
        return None
    if platform != "cpu":
        return None
    if not _accepted(tuple(sorted(CPU_OPTIONS.items()))):
        return None
    return dict(CPU_OPTIONS)


def jit(
    fn: Callable, *, platform: str | None = None, xla_defaults: bool = False, **kwargs: Any
) -> Callable:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options(platform, xla_defaults=...)``."""
    options = compiler_options(platform, xla_defaults=xla_defaults)
    return jax.jit(fn, compiler_options=options, **kwargs)
