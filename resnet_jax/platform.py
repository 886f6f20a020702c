"""XLA compiler options chosen per backend and per kind of program, and ``jit`` with them.

On CPU, XLA by default hands every convolution to YNNPACK on its own. For forward programs
(inference, evaluation, the converters' checks) that is slow for ResNet's shapes: with
``xla_cpu_experimental_ynn_fusion_type=individual_dot`` XLA keeps the convolutions and gives
YNNPACK the matrix products only, among them the 1x1 convolutions, which the model writes as
matrix products on CPU (``models.layers.conv_general_dilated``; bfloat16 products with float32
accumulation run on the CPU's bfloat16 dot instructions). Training steps are the other way
round: their gradient convolutions run faster in YNNPACK, so they keep XLA's defaults. On the
2-core AVX-512 machine of BENCHMARKS.md, ResNet-50 inference with the option is 1.1-1.2x
faster than with XLA's defaults, and a train step with XLA's defaults is 1.2-1.4x faster than
with the option, at the same numerics (float32 logits within 2e-6 of their largest value).
YNNPACK's fused dot subgraphs (``..._DOT``), the earlier choice, run bfloat16 products with
float32 accumulation 4x slower than the individual calls. Every jit in the package that runs
the model goes through ``jit`` below, so training, evaluation, prediction and the converters
get their options.

The options are experimental in XLA: each set is tried once per process on a tiny program
and dropped, with a warning, if this jaxlib does not take it. ``RESNET_JAX_XLA_DEFAULTS=1``
compiles everything with XLA's defaults; a setting of the same option in ``XLA_FLAGS`` is
left alone. GPU and TPU get no extra options.
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
# "forward": inference, evaluation, conversion checks; "train": steps with a backward pass.
PROGRAMS = ("forward", "train")
CPU_OPTIONS: dict[str, dict[str, str]] = {
    "forward": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "train": {},  # XLA's defaults
}

_log = logging.getLogger(__name__)


def _env_wants_defaults() -> bool:
    return os.environ.get(DEFAULTS_ENV, "").strip().lower() in ("1", "true", "yes")


def _set_in_xla_flags() -> bool:
    flags = os.environ.get("XLA_FLAGS", "")
    return any(f"--{name}" in flags for options in CPU_OPTIONS.values() for name in options)


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
    platform: str | None = None, *, program: str = "forward", xla_defaults: bool = False
) -> dict[str, str] | None:
    """The extra XLA options for a ``program`` ('forward' or 'train') on ``platform``
    (default: JAX's default backend), or None for XLA's defaults.

    ``xla_defaults=True`` (or ``RESNET_JAX_XLA_DEFAULTS=1``) asks for none.
    """
    if program not in PROGRAMS:
        raise ValueError(f"Unknown program kind {program!r}; expected one of {PROGRAMS}.")
    platform = platform or jax.default_backend()
    if xla_defaults or _env_wants_defaults() or _set_in_xla_flags():
        return None
    options = CPU_OPTIONS[program] if platform == "cpu" else {}
    if not options or not _accepted(tuple(sorted(options.items()))):
        return None
    return dict(options)


def jit(
    fn: Callable,
    *,
    platform: str | None = None,
    program: str = "forward",
    xla_defaults: bool = False,
    **kwargs: Any,
) -> Callable:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options(platform, program=...,
    xla_defaults=...)``."""
    options = compiler_options(platform, program=program, xla_defaults=xla_defaults)
    return jax.jit(fn, compiler_options=options, **kwargs)
