"""Opt-in speed-ups for one platform, chosen by ``config.backend``; the model and the steps know
nothing of them.

'xla' (the default, every platform): the model as written, ``nn.Conv`` on
``lax.conv_general_dilated``, compiled with XLA's default options. 'cpu_fast' (CPU only):

- 1x1 convolutions as matrix products (``pointwise_as_matmul``). XLA:CPU runs a bfloat16
  convolution in float32, with conversions around it; a bfloat16 matrix product with float32
  accumulation runs on the CPU's bfloat16 dot instructions (YNNPACK).
- forward programs (evaluation; the benchmark's inference) compile with
  ``xla_cpu_experimental_ynn_fusion_type=individual_dot``: XLA keeps the convolutions and hands
  YNNPACK each matrix product. Train steps keep XLA's defaults, whose YNNPACK convolutions run
  the gradients faster.

Same numbers as 'xla' (float32 within rounding; bfloat16 within one rounding step). Measured
in BENCHMARKS.md (the ``jax_cpu_fast`` row). The option is experimental in XLA: a jaxlib that
does not take it compiles with its defaults, with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "cpu_fast")
FORWARD_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_NHWC = ("NHWC", "HWIO", "NHWC")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backend:
    """The convolution every ``nn.Conv`` of the model computes with, and the XLA options of
    forward programs (None: XLA's defaults)."""

    name: str = "xla"
    conv_general_dilated: Callable = jax.lax.conv_general_dilated
    forward_options: dict[str, str] | None = None


def get_backend(name: str, platform: str) -> Backend:
    """The backend ``name`` for devices of ``platform``; ValueError naming the fix if it does
    not apply there."""
    if name not in BACKENDS:
        raise ValueError(
            f"backend {name!r} is not one of {BACKENDS}: use --config.backend=xla (the default, "
            "every platform) or cpu_fast (CPU only)."
        )
    if name == "xla":
        return Backend()
    if platform != "cpu":
        raise ValueError(
            f"backend 'cpu_fast' speeds up CPU programs, but this run's devices are {platform}; "
            "use --config.backend=xla (the default)."
        )
    options = FORWARD_OPTIONS if _accepted(tuple(FORWARD_OPTIONS.items())) else None
    return Backend(name, pointwise_as_matmul, options)


@functools.cache
def _accepted(items: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles a tiny CPU program with these options."""
    try:
        a = jax.device_put(jnp.ones((8, 8), jnp.float32), jax.local_devices(backend="cpu")[0])
        jax.jit(lambda a: a @ a, compiler_options=dict(items)).lower(a).compile()
    except Exception as err:  # an unknown option or value: XlaRuntimeError, ValueError
        _log.warning(
            "XLA:CPU did not take the compiler options %s (%s); forward programs compile with "
            "XLA's defaults.",
            dict(items),
            str(err).splitlines()[0][:200],
        )
        return False
    return True


def _is_pointwise(
    lhs, rhs, padding, *, lhs_dilation=None, dimension_numbers=None, feature_group_count=1, **kw
) -> bool:
    """A 1x1, unpadded, undilated, ungrouped NHWC/HWIO convolution: a matrix product."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    given = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    unpadded = padding == "VALID" or (
        not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding)
    )
    return (
        given == nhwc
        and rhs.shape[:2] == (1, 1)
        and unpadded
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and feature_group_count == 1
        and kw.get("batch_group_count", 1) == 1
    )


def pointwise_as_matmul(
    lhs: jax.Array, rhs: jax.Array, window_strides, padding, **kw: Any
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments), with 1x1 convolutions as matrix products
    over every stride-th pixel: bfloat16 products accumulated in float32 and rounded once, as
    XLA:CPU's convolution does."""
    if not _is_pointwise(lhs, rhs, padding, **kw):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
    sh, sw = window_strides
    out_dtype = kw.get("preferred_element_type") or jnp.result_type(lhs, rhs)
    accumulate = jnp.float32 if out_dtype == jnp.bfloat16 else out_dtype
    y = jax.lax.dot_general(
        jax.lax.slice(lhs, (0,) * 4, lhs.shape, (1, sh, sw, 1)),
        rhs[0, 0],
        (((3,), (0,)), ((), ())),
        precision=kw.get("precision"),
        preferred_element_type=accumulate,
    )
    return y.astype(out_dtype)
