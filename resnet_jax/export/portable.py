"""The network as a portable program for exporters, with max pooling in a form every target
converts.

``trace`` gives the inference function's jaxpr with a symbolic batch dimension. ``evaluate``
replays it primitive by primitive, so an exporter that traces Python (jax2onnx, jax2tf) sees
plain JAX primitives and not Flax modules (jax2onnx patches ``nn.Conv``, ``nn.BatchNorm`` and
``nn.max_pool`` with shims that mishandle explicit padding). Two rewrites of padded max pooling
keep it exact and convertible: its padding is the edge pixel repeated, which is inside the same
window and so never changes a maximum (-inf padding would give int8 LiteRT an infinite
quantisation range), and for ONNX the window is the maximum of its strided slices (ONNX
Runtime's MaxPool takes no 4-D window, which is what jax2onnx emits for an NHWC one). For ONNX,
constant padding (the CIFAR shortcut's zero channels, Keras V2's zero-padded pool, ResNet-D's
average pool) becomes concatenation, which jax2onnx lowers with a symbolic batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

MAX_POOLS = ("window", "slices")


def input_spec(image_size: int, channels: int = 3, batch: int | str = "b") -> jax.ShapeDtypeStruct:
    """float32 NHWC images; ``batch`` a number or the name of a symbolic dimension."""
    if isinstance(batch, str):
        (batch,) = jax.export.symbolic_shape(batch)
    return jax.ShapeDtypeStruct((batch, image_size, image_size, channels), jnp.float32)


def trace(fn: Callable, spec: jax.ShapeDtypeStruct) -> jax.extend.core.ClosedJaxpr:
    """The jaxpr of ``fn`` (images -> logits, weights closed over)."""
    return jax.make_jaxpr(fn)(spec)


def _edge_pad(x: jax.Array, padding) -> jax.Array:
    for axis, (lo, hi) in enumerate(padding):
        if lo or hi:
            n = x.shape[axis]
            first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
            last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
            x = jax.lax.concatenate([first] * lo + [x] + [last] * hi, axis)
    return x


def _max_pool(
    x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation, how: str
):
    if any(d != 1 for d in (*base_dilation, *window_dilation)) or any(
        lo >= w or hi >= w for (lo, hi), w in zip(padding, window_dimensions, strict=True)
    ):
        return jax.lax.reduce_window_max_p.bind(
            x,
            window_dimensions=window_dimensions,
            window_strides=window_strides,
            padding=padding,
            base_dilation=base_dilation,
            window_dilation=window_dilation,
        )
    x = _edge_pad(x, padding)
    if how == "window":
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, window_dimensions, window_strides, "VALID"
        )
    out = None
    for start in itertools.product(*(range(w) for w in window_dimensions)):
        limit = tuple(
            d if w == 1 and s == 1 else o + (d - w) // s * s + 1
            for o, d, w, s in zip(start, x.shape, window_dimensions, window_strides, strict=True)
        )
        part = jax.lax.slice(x, start, limit, window_strides)
        out = part if out is None else jax.lax.max(out, part)
    return out


def _pad_by_concatenation(x, value, *, padding_config):
    """``lax.pad`` without interior padding as concatenated constant blocks: jax2onnx lowers
    ``pad`` only when every dimension is a number, not a symbolic batch."""
    if any(i != 0 or lo < 0 or hi < 0 for lo, hi, i in padding_config):
        return jax.lax.pad(x, value, padding_config)
    for axis, (lo, hi, _) in enumerate(padding_config):
        if lo or hi:
            edge = jax.lax.full_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis), value)
            x = jax.lax.concatenate([edge] * lo + [x] + [edge] * hi, axis)
    return x


def evaluate(closed: jax.extend.core.ClosedJaxpr, *args, max_pool: str = "window") -> list:
    """Replays ``closed`` on ``args``, nested jit calls inlined, max pooling rewritten; with
    ``max_pool='slices'`` (the ONNX form) constant padding is concatenation too."""
    if max_pool not in MAX_POOLS:
        raise ValueError(f"max_pool must be one of {MAX_POOLS}, got {max_pool!r}.")
    return _run(closed.jaxpr, closed.consts, args, max_pool)


def _run(jaxpr, consts, args, how: str) -> list:
    env = {}
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if eqn.primitive.name in ("jit", "pjit"):
            inner = eqn.params["jaxpr"]
            outs = _run(inner.jaxpr, inner.consts, ins, how)
        elif eqn.primitive is jax.lax.reduce_window_max_p:
            outs = [_max_pool(*ins, **eqn.params, how=how)]
        elif eqn.primitive is jax.lax.pad_p and how == "slices":
            outs = [_pad_by_concatenation(*ins, **eqn.params)]
        else:
            outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]
